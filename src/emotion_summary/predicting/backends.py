"""The three inference backends, each a `Backend`: `generate(records) -> raw texts` plus `request(record)`,
the exact request it will make for a report (the key under which its reply is saved and reused).

They share the prompt (prompt.json of --model_path, else the project's default) and receive each report
fitted into the checkpoint's window by `encode.fit_report` (once, through `FittedPrompts`): the openai
backend given a checkpoint trims reports exactly as the hf backend does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from emotion_summary.teacher.client import ChatClient
from emotion_summary.prompting.encode import FittedPrompt, fit_report
from emotion_summary.core.errors import UserError
from emotion_summary.predicting.extractive import extractive_generate
from emotion_summary.modeling.identity import ModelInfo
from emotion_summary.prompting.prompt import PromptSpec
from emotion_summary.data.records import Record

GenerateFn = Callable[[list[Record]], list[str]]
BACKENDS = ("hf", "openai", "extractive")


class FittedPrompts:
    """Each report fitted once into a model's window (`encode.fit_report`), for its request and its
    generation alike; `trimmed` tells which reports lost tokens."""

    def __init__(self, tokenizer, spec: PromptSpec, max_seq_len: int | None, max_new_tokens: int):
        self.tokenizer, self.spec, self.max_seq_len, self.max_new_tokens = tokenizer, spec, max_seq_len, max_new_tokens
        self.fitted: dict[int, FittedPrompt] = {}

    def __call__(self, record: Record) -> FittedPrompt:
        if record.id not in self.fitted:
            self.fitted[record.id] = fit_report(self.tokenizer, self.spec, record, self.max_seq_len,
                                                self.max_new_tokens)
        return self.fitted[record.id]

    def trimmed(self) -> dict[int, int]:
        """Report id -> tokens trimmed from its middle, for the reports that did not fit whole."""
        return {rid: f.trimmed_tokens for rid, f in self.fitted.items() if f.trimmed_tokens}


@dataclass
class Backend:
    name: str
    generate: GenerateFn
    request: Callable[[Record], dict]
    batch_size: int = 1  # reports per generate call
    concurrency: int = 1  # generate calls in flight at once
    prompts: FittedPrompts | None = None  # the reports as fitted into the model's window (None: not fitted)


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


def decoding(temperature: float, top_p: float) -> str | dict:
    """How replies are decoded, as it enters a request's key (replies of other settings are not reused)."""
    return "greedy" if temperature <= 0 else {"temperature": temperature, "top_p": top_p}


def hf_backend(info: ModelInfo, max_new_tokens: int, batch_size: int, quantization: str | None = None,
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> Backend:
    prompts = FittedPrompts(load_tokenizer(info.path), info.spec, info.config.max_seq_len, max_new_tokens)
    model_id = info.identity()

    def request(record: Record) -> dict:
        return {"backend": "hf", "model": model_id, "quantization": info.quantization(quantization),
                "messages": prompts(record).messages, "max_new_tokens": max_new_tokens,
                "decoding": decoding(temperature, top_p),
                # only when set: replies saved before the option existed keep their keys
                **({"repetition_penalty": penalty} if (penalty := info.config.repetition_penalty) != 1 else {})}

    def load() -> GenerateFn:
        try:  # torch is imported only here: the other backends and the checker stay light
            from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
        except ModuleNotFoundError as e:
            raise UserError(f"the hf backend needs torch/transformers (pip install -e .[train]): {e}") from None
        model = Qwen2EmotionSummaryModel.load(info.path, quantization)  # a ModelError is a UserError already
        model.prompt = info.spec

        def generate(batch: list[Record]) -> list[str]:
            fitted = [prompts(r) for r in batch]
            if temperature <= 0:
                return model.generate(fitted, max_new_tokens=max_new_tokens, batch_size=len(batch))
            import torch

            torch.manual_seed(seed)  # every batch from the same seed: its draws do not depend on what ran before
            return model.generate(fitted, max_new_tokens=max_new_tokens, batch_size=len(batch),
                                  temperature=temperature, top_p=top_p)

        return generate

    return Backend("hf", lazy(load), request, batch_size=batch_size, prompts=prompts)


def openai_backend(client: ChatClient, spec: PromptSpec, max_new_tokens: int, concurrency: int = 1,
                   info: ModelInfo | None = None, temperature: float = 0.0, top_p: float = 1.0) -> Backend:
    """With a checkpoint (`info`) that has its tokenizer, reports are trimmed to its max_seq_len as the
    model was trained to see them; without one they are sent whole (a 4xx for a too-long report is
    recorded as a refusal)."""
    tokenizer, max_seq_len, served = None, None, ""
    if info is not None:
        served = info.identity()
        if (info.path / "tokenizer.json").is_file():
            tokenizer, max_seq_len = load_tokenizer(info.path), info.config.max_seq_len
    prompts = FittedPrompts(tokenizer, spec, max_seq_len, max_new_tokens)

    nucleus = {"top_p": top_p} if top_p < 1 else {}  # sent only when set: some servers refuse the key

    def request(record: Record) -> dict:
        return {"backend": "openai", "endpoint": client.public_url, "model": client.model, "served_from": served,
                "messages": prompts(record).messages, "max_tokens": max_new_tokens, "temperature": temperature,
                **nucleus}

    def generate(batch: list[Record]) -> list[str]:
        return [client.chat(prompts(r).messages, max_tokens=max_new_tokens, temperature=temperature, **nucleus)
                for r in batch]

    return Backend("openai", generate, request, batch_size=1, concurrency=concurrency, prompts=prompts)
