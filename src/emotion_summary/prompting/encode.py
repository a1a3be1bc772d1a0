"""Records to token ids with the tokenizer's chat template; the prompt is trimmed, never the answer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emotion_summary.prompting.prompt import PromptSpec, answer_text, build_prompt
from emotion_summary.data.records import Record

IGNORE_INDEX = -100  # label of a position the loss skips (transformers' convention)
# Chat-template tokens around the two turns (<|im_start|>system\n … <|im_start|>assistant\n) ≈ 12.
TEMPLATE_MARGIN = 16


def build_labels(prompt_ids: list[int], answer_ids: list[int]) -> tuple[list[int], list[int]]:
    """input_ids = prompt + answer; labels mask every prompt token and keep every answer token."""
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids)


def token_counter(tokenizer) -> Callable[[str], int]:
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


MIN_PROMPT_TOKENS = 256  # below this a report is mostly trim markers


def prompt_budget(max_seq_len: int, reserved: int) -> int:
    """Tokens left for the prompt (chat template included) when `reserved` tokens of `max_seq_len` go
    to the answer: max_new_tokens at inference, the gold answer in training."""
    budget = max_seq_len - reserved
    if budget < MIN_PROMPT_TOKENS:
        from emotion_summary.core.errors import UserError

        raise UserError(f"max_seq_len={max_seq_len} leaves {budget} prompt tokens beside {reserved} answer "
                        f"tokens (at least {MIN_PROMPT_TOKENS} needed); lower max_new_tokens")
    return budget


@dataclass
class FittedPrompt:
    messages: list[dict]  # system + user turns, the report trimmed in the middle when it did not fit
    ids: list[int] | None  # the chat-templated ids with the assistant header (None without a tokenizer)
    trimmed_tokens: int  # tokens cut from the report (0 when it fitted)


def fit_report(tokenizer, spec: PromptSpec, record: Record, max_seq_len: int | None = None,
               reserved: int = 0) -> FittedPrompt:
    """The one place a report is fitted into a model's window: the prompt for `record` in the
    `max_seq_len - reserved` tokens left beside the answer (`reserved`: max_new_tokens at inference, the
    gold answer's length in training), the report trimmed in the middle when it does not fit. With no
    `max_seq_len` the report is kept whole; with no tokenizer (a hosted model whose tokenizer we do not
    have) the messages are built untrimmed and ids is None."""
    budget = None if max_seq_len is None or tokenizer is None else prompt_budget(max_seq_len, reserved)
    return _fit_prompt(tokenizer, spec, record, budget)


def _fit_prompt(tokenizer, spec: PromptSpec, record: Record, max_prompt_tokens: int | None) -> FittedPrompt:
    """The report text gets the budget minus TEMPLATE_MARGIN; when the template costs more than that, the
    report is trimmed again by the excess."""
    if tokenizer is None:
        return FittedPrompt(build_prompt(spec, record).messages, None, 0)
    budget = None if max_prompt_tokens is None else max_prompt_tokens - TEMPLATE_MARGIN
    while True:
        prompt = build_prompt(spec, record, budget, token_counter(tokenizer))
        ids = list(tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True,
                                                 tokenize=True, return_dict=False))
        ids += tokenizer.encode(spec.answer_prefix, add_special_tokens=False) if spec.answer_prefix else []
        if max_prompt_tokens is None or len(ids) <= max_prompt_tokens:
            return FittedPrompt(prompt.messages, ids, prompt.trimmed_tokens)
        budget -= len(ids) - max_prompt_tokens  # the template cost more than the margin; rare


def answer_token_ids(tokenizer, fields: dict[str, str], prefix: str = "") -> list[int]:
    """The assistant turn's content and its end-of-turn token, as the chat template renders it; with a
    `prefix` (PromptSpec.answer_prefix, already in the prompt) only what follows it."""
    text = answer_text(fields)
    if not text.startswith(prefix):
        raise ValueError(f"answer_prefix {prefix!r} is not how the answer starts ({text[:40]!r})")
    return tokenizer.encode(text[len(prefix):], add_special_tokens=False) + [tokenizer.eos_token_id]


def encode_example(tokenizer, spec: PromptSpec, record: Record, max_seq_len: int) -> dict:
    answer = answer_token_ids(tokenizer, record.gold(), spec.answer_prefix)
    if len(answer) >= max_seq_len // 2:
        from emotion_summary.core.errors import UserError

        raise UserError(f"record {record.id} ({record.source}): the gold answer alone is {len(answer)} "
                        f"tokens; max_seq_len={max_seq_len} is too small for it")
    prompt = fit_report(tokenizer, spec, record, max_seq_len, reserved=len(answer))
    input_ids, labels = build_labels(prompt.ids, answer)
    return {"id": record.id, "input_ids": input_ids, "labels": labels, "trimmed_tokens": prompt.trimmed_tokens}


def encoding_key(tokenizer, spec: PromptSpec, records: list[Record], max_seq_len: int) -> str:
    """Changes whenever anything that decides the token ids changes: inputs, gold, prompt, budget,
    tokenizer vocabulary and chat template."""
    h = hashlib.sha256()
    h.update(json.dumps([spec.to_dict(), max_seq_len, len(tokenizer), tokenizer.chat_template or "",
                         tokenizer.name_or_path.rstrip("/").split("/")[-1]]).encode())
    for r in records:
        h.update(json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:24]


def encode_records(tokenizer, spec: PromptSpec, records: list[Record], max_seq_len: int,
                   cache_dir=None) -> list[dict]:
    """Tokenise training examples; with `cache_dir`, through `datasets.map` into an Arrow cache file,
    so a resumed run does not tokenise 57K PsyQA reports again."""
    if not records:
        return []
    if cache_dir is None:
        return [encode_example(tokenizer, spec, r, max_seq_len) for r in records]
    from datasets import Dataset

    from emotion_summary.data.records import record_from_dict

    key = encoding_key(tokenizer, spec, records, max_seq_len)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    # One JSON string per record: Arrow needs one schema, and records differ in optional fields.
    raw = Dataset.from_dict({"record": [json.dumps(r.to_dict(), ensure_ascii=False) for r in records]})
    encoded = raw.map(
        lambda row: encode_example(tokenizer, spec, record_from_dict(json.loads(row["record"])), max_seq_len),
        remove_columns=["record"], cache_file_name=str(Path(cache_dir) / f"encoded-{key}.arrow"),
        new_fingerprint=key, desc="tokenising")
    return [dict(row) for row in encoded]

