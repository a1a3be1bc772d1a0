"""The three inference backends, each a `Backend`: `generate(records) -> raw texts` plus `request(record)`,
the exact request it will make for a report (the key under which its reply is saved and reused).

They share the prompt (prompt.json of --model_path, else the project's default) and the prompt budget
(`encode.fit_prompt`): the openai backend given a checkpoint trims reports exactly as the hf backend does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from emotion_summary.client import ChatClient
from emotion_summary.encode import fit_prompt, prompt_budget
from emotion_summary.errors import UserError
from emotion_summary.extractive import extractive_generate
from emotion_summary.model_identity import ModelInfo
from emotion_summary.prompt import PromptSpec
from emotion_summary.records import Record

GenerateFn = Callable[[list[Record]], list[str]]
BACKENDS = ("hf", "openai", "extractive")


@dataclass
class Backend:
    name: str
    generate: GenerateFn
    request: Callable[[Record], dict]
    batch_size: int = 1  # reports per generate call
    concurrency: int = 1  # generate calls in flight at once


def lazy(factory: Callable[[], GenerateFn]) -> GenerateFn:
    """Built on the first call: a finished run resumed for its final file never loads the model."""
    lock, made = threading.Lock(), []

    def generate(batch: list[Record]) -> list[str]:
        with lock:
            if not made:
                made.append(factory())
        return made[0](batch)

    return generate


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def extractive_backend() -> Backend:
    return Backend("extractive", extractive_generate, lambda r: {"backend": "extractive", "report": r.inputs()},
                   batch_size=64)


def hf_backend(info: ModelInfo, max_new_tokens: int, batch_size: int, quantization: str | None = None) -> Backend:
    budget = prompt_budget(info.config.max_seq_len, max_new_tokens)
    tokenizer = load_tokenizer(info.path)
    model_id = info.identity()

    def request(record: Record) -> dict:
        return {"backend": "hf", "model": model_id, "quantization": info.quantization(quantization),
                "messages": fit_prompt(tokenizer, info.spec, record, budget).messages,
                "max_new_tokens": max_new_tokens, "decoding": "greedy",
                # only when set: replies saved before the option existed keep their keys
                **({"repetition_penalty": penalty} if (penalty := info.config.repetition_penalty) != 1 else {})}

    def load() -> GenerateFn:
        try:  # torch is imported only here: the other backends and the checker stay light
            from emotion_summary.model import Qwen2EmotionSummaryModel
        except ModuleNotFoundError as e:
            raise UserError(f"the hf backend needs torch/transformers (pip install -e .[train]): {e}") from None
        model = Qwen2EmotionSummaryModel.load(info.path, quantization)  # a ModelError is a UserError already
        model.prompt = info.spec
        return lambda batch: model.generate(batch, max_new_tokens=max_new_tokens, batch_size=len(batch))

    return Backend("hf", lazy(load), request, batch_size=batch_size)


def openai_backend(client: ChatClient, spec: PromptSpec, max_new_tokens: int, concurrency: int = 1,
                   info: ModelInfo | None = None) -> Backend:
    """With a checkpoint (`info`) that has its tokenizer, reports are trimmed to its max_seq_len as the
    model was trained to see them; without one they are sent whole (a 4xx for a too-long report is
    recorded as a refusal)."""
    tokenizer, budget, served = None, None, ""
    if info is not None:
        served = info.identity()
        if (info.path / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(info.path)
            budget = prompt_budget(info.config.max_seq_len, max_new_tokens)
    messages: dict[int, list[dict]] = {}

    def messages_for(record: Record) -> list[dict]:
        if record.id not in messages:
            messages[record.id] = fit_prompt(tokenizer, spec, record, budget).messages
        return messages[record.id]

    def request(record: Record) -> dict:
        return {"backend": "openai", "model": client.model, "served_from": served, "messages": messages_for(record),
                "max_tokens": max_new_tokens, "temperature": 0.0}

    def generate(batch: list[Record]) -> list[str]:
        return [client.chat(messages_for(r), max_tokens=max_new_tokens, temperature=0.0) for r in batch]

    return Backend("openai", generate, request, batch_size=1, concurrency=concurrency)
