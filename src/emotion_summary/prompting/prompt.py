"""The one prompt definition and the one output parser, shared by training, inference and labelling.

A `PromptSpec` is saved as `prompt.json` into every checkpoint and read back by inference, so a model
is always asked the way it was trained. Rendering to tokens is the tokenizer's chat template's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

from emotion_summary.data.records import GOLD_FIELDS, Record
from emotion_summary.data.text import record_language

Language = Literal["en", "zh", "auto"]  # auto: the language of the report
TRIM_MARKER = " [... {n} tokens trimmed ...] "

FIELD_DESCRIPTIONS = {
    "causes": "what led to the client's difficulties (events, circumstances, underlying factors)",
    "symptoms": "the emotional, cognitive, behavioural and physical signs the client showed",
    "treatment_process": "how the counselling proceeded: methods, techniques and stages",
    "characteristics_of_illness": "the nature and distinctive features of the client's problem",
    "treatment_effect": "the outcome and changes observed after counselling",
}

DEFAULT_SYSTEM = (
    "You are an experienced psychological counsellor who writes concise, faithful case summaries "
    "of long counselling reports. Use only facts stated in the report."
)

DEFAULT_INSTRUCTION = (
    "Read the counselling report below and summarise it in five parts:\n"
    "{field_list}\n"
    "{language_rule} Answer with one JSON object with exactly these keys: {keys}. "
    "Each value is a short paragraph of plain text."
)

# What a teacher writes for a part the report says nothing about (a synthetic or PsyQA report may have
# no treatment effect), rather than inventing it; training and the checker take it as a value.
NOT_DESCRIBED = "not described in the report"

LANGUAGE_RULES = {
    "en": "Write the summary in English.",
    "zh": "请用中文撰写摘要。(Write the summary in Chinese.)",
}


@dataclass(frozen=True)
class PromptSpec:
    """Everything that decides what the model sees and must answer; saved with every checkpoint."""

    system: str = DEFAULT_SYSTEM
    instruction: str = DEFAULT_INSTRUCTION
    language: Language = "auto"
    version: str = "es-v1"
    # Text the assistant turn starts with, written into the prompt rather than generated (e.g.
    # '{\n "causes": "'): a small model then answers in the JSON shape from its first token. Training
    # supervises the rest of the answer; replies are returned with the prefix put back in front.
    answer_prefix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSpec":
        return cls(**{k: d[k] for k in ("system", "instruction", "language", "version", "answer_prefix") if k in d})

    def save(self, directory: str | Path) -> Path:
        from emotion_summary.core.atomic_io import atomic_write_json

        return atomic_write_json(Path(directory) / "prompt.json", self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> "PromptSpec":
        path = Path(directory) / "prompt.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no prompt.json; was this directory written by our trainer?")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def report_sections(record: Record) -> list[tuple[str, str]]:
    """(heading, text) for every non-empty paragraph of the report, in order."""
    secs = [("Case description", s) for s in record.case_description]
    secs += [("Consultation process", s) for s in record.consultation_process]
    secs.append(("Experience and reflection", record.experience_and_reflection))
    return [(h, t) for h, t in secs if t.strip()]


def _render_report(sections: list[tuple[str, str]]) -> str:
    out, last = [], None
    for heading, text in sections:
        if heading != last:
            out.append(f"\n## {heading}")
            last = heading
        out.append(text)
    return "\n".join(out).strip()


def _user_text(spec: PromptSpec, record: Record, sections: list[tuple[str, str]]) -> str:
    language = spec.language if spec.language != "auto" else record_language(record)
    instruction = spec.instruction.format(
        field_list="\n".join(f"- {k}: {v}" for k, v in FIELD_DESCRIPTIONS.items()),
        language_rule=LANGUAGE_RULES[language],
        keys=", ".join(GOLD_FIELDS),
    )
    return f"{instruction}\n\n# Report\n{_render_report(sections)}"


def trim_sections(sections: list[tuple[str, str]], over: int,
                  count_tokens: Callable[[str], int]) -> list[tuple[str, str]]:
    """Cut `over` tokens (at least) from the middle of the longest paragraphs, leaving a marker; when
    only short paragraphs are left (some reports have 100+), drop whole ones from the middle."""
    sections = list(sections)
    tokens = [count_tokens(t) for _, t in sections]
    marker = count_tokens(TRIM_MARKER.format(n=99999))
    for _ in range(4 * len(sections) + 16):
        if over <= 0:
            return sections
        i = max(range(len(sections)), key=tokens.__getitem__)
        if tokens[i] <= 3 * marker:  # cutting inside a short paragraph saves less than its marker costs
            break
        heading, text = sections[i]
        keep = max(tokens[i] - over - marker, marker)
        keep_chars = int(len(text) * keep / tokens[i]) // 2
        new = text[:keep_chars] + TRIM_MARKER.format(n=tokens[i] - keep) + text[len(text) - keep_chars:]
        new_tokens = count_tokens(new)
        over -= tokens[i] - new_tokens
        sections[i], tokens[i] = (heading, new), new_tokens
    return _drop_middle_paragraphs(sections, tokens, over, count_tokens)


def _drop_middle_paragraphs(sections, tokens, over: int, count_tokens) -> list[tuple[str, str]]:
    if over <= 0:
        return sections
    over += count_tokens(_dropped_note(99999, 999))  # the note that replaces them
    dropped, dropped_tokens, at = 0, 0, len(sections) // 2
    while over > 0 and len(sections) > 2:
        at = min(at, len(sections) - 2)
        heading, _ = sections.pop(at)
        cost = tokens.pop(at)
        over -= cost
        dropped, dropped_tokens = dropped + 1, dropped_tokens + cost
    if over > 0:
        raise ValueError("could not trim the report to the token budget")
    sections.insert(at, (heading, _dropped_note(dropped_tokens, dropped)))
    return sections


def _dropped_note(n_tokens: int, n_paragraphs: int) -> str:
    return TRIM_MARKER.format(n=n_tokens).strip() + f" ({n_paragraphs} paragraphs)"


@dataclass
class Prompt:
    messages: list[dict]  # system + user turns
    trimmed_tokens: int  # 0 when the report fitted untouched


def build_prompt(spec: PromptSpec, record: Record, max_prompt_tokens: int | None = None,
                 count_tokens: Callable[[str], int] | None = None) -> Prompt:
    """System and user turns for `record`; over-long reports are trimmed in the middle, never the answer.

    `count_tokens` counts the tokens of the rendered prompt text (chat-template overhead is small and
    is covered by the caller's budget margin).
    """
    sections = report_sections(record)
    messages = _messages(spec, record, sections)
    if max_prompt_tokens is None:
        return Prompt(messages, 0)
    count = count_tokens or (lambda s: len(s))
    over = count(messages[0]["content"]) + count(messages[1]["content"]) - max_prompt_tokens
    if over <= 0:
        return Prompt(messages, 0)
    trimmed = _messages(spec, record, trim_sections(sections, over, count))
    return Prompt(trimmed, count(messages[1]["content"]) - count(trimmed[1]["content"]))


def _messages(spec: PromptSpec, record: Record, sections) -> list[dict]:
    return [{"role": "system", "content": spec.system},
            {"role": "user", "content": _user_text(spec, record, sections)}]


def answer_text(fields: dict[str, str]) -> str:
    """The assistant turn a model is trained to write: the five fields as one JSON object."""
    return json.dumps({k: fields[k] for k in GOLD_FIELDS}, ensure_ascii=False, indent=1)


JSON_ANSWER_PREFIX = answer_text(dict.fromkeys(GOLD_FIELDS, "")).split('""')[0] + '"'  # '{\n "causes": "'


@dataclass
class ParsedAnswer:
    fields: dict[str, str]
    missing: list[str]  # keys that were absent or empty (filled with "")
    parsed_json: bool  # False when we fell back to per-key pattern matching

    @property
    def complete(self) -> bool:
        return not self.missing


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def json_object(text: str) -> dict | None:
    m = _FENCE.search(text)
    if m:
        text = m.group(1)
    start, end = text.find("{"), text.rfind("}")
    if start < 0:
        return None
    body = text[start: end + 1] if end > start else text[start:] + "}"
    for candidate in (body, _TRAILING_COMMA.sub(r"\1", body)):
        try:
            obj = json.loads(candidate)
            return obj if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            continue
    return None


def _key_by_key(text: str) -> dict[str, str]:
    """Fallback for broken JSON (e.g. generation cut off): take each `"key": "value"` pair we can see."""
    out = {}
    for key in GOLD_FIELDS:
        m = re.search(rf'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)', text, re.S)
        if m:
            try:
                out[key] = json.loads(f'"{m.group(1)}"')
            except json.JSONDecodeError:
                out[key] = m.group(1)
    return out


_CLOSED_VALUE = {key: re.compile(rf'"{key}"\s*:\s*"(?:[^"\\]|\\.)*"', re.S) for key in GOLD_FIELDS}


def answer_complete(text: str) -> bool:
    """Whether every one of the five keys has a closed string value in `text`: the answer is whole, and
    what a small model writes after it (repeated keys, more prose) only costs time."""
    return all(pattern.search(text) for pattern in _CLOSED_VALUE.values())


def _as_text(value) -> str:
    """A field's text; a number, true/false or null (NaN and Infinity too) is no summary: ""."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return " ".join(t for t in (_as_text(v) for v in value) if t)
    if value is None or isinstance(value, (bool, int, float)):
        return ""
    return json.dumps(value, ensure_ascii=False)


def parse_answer(text: str) -> ParsedAnswer:
    """Five fields from a model reply: tolerates code fences, prose around the JSON, trailing commas,
    key case, and cut-off replies. Absent keys become "" and are listed in `missing`."""
    obj = json_object(text)
    parsed_json = obj is not None
    if obj is None:
        obj = _key_by_key(text)
    lowered = {str(k).strip().lower().replace(" ", "_"): v for k, v in obj.items()}
    fields = {k: _as_text(lowered.get(k)) for k in GOLD_FIELDS}
    return ParsedAnswer(fields, [k for k, v in fields.items() if not v], parsed_json)
