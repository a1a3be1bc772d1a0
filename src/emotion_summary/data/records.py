"""ES report records: one type, strict validation, errors that name file, line and field."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from emotion_summary.core.atomic_io import atomic_write_jsonl, jsonl_lines
from emotion_summary.core.errors import UserError
from emotion_summary.core.json_input import load_json
from emotion_summary.core.paths import missing_file

INPUT_FIELDS = ("case_description", "consultation_process", "experience_and_reflection")
GOLD_FIELDS = (
    "causes",
    "symptoms",
    "treatment_process",
    "characteristics_of_illness",
    "treatment_effect",
)


_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))  # zero-width spaces and joiners


def is_blank(text: str | None) -> bool:
    """No text at all: None, empty, white space or zero-width characters only."""
    return text is None or not text.translate(_INVISIBLE).strip()


class RecordError(UserError, ValueError):
    """A bad record: `where` is 'line N' (JSONL) or 'item N' (JSON array)."""

    def __init__(self, path: str | os.PathLike, where: str, field: str | None, message: str):
        self.path, self.where, self.field = str(path), where, field
        at = f"{self.path}:{where}" if where else self.path
        super().__init__(f"{at}: field '{field}': {message}" if field else f"{at}: {message}")


@dataclass(frozen=True)
class Record:
    id: int
    case_description: tuple[str, ...]
    consultation_process: tuple[str, ...]
    experience_and_reflection: str
    causes: str | None = None
    symptoms: str | None = None
    treatment_process: str | None = None
    characteristics_of_illness: str | None = None
    treatment_effect: str | None = None
    source: str = "longemotion"
    # Provenance of teacher-written gold fields: {"model": ..., "endpoint": ..., "date": ...}.
    label_source: dict | None = field(default=None, compare=False)
    # Provenance of a teacher-written report (source "synthetic"): {"teacher", "prompt_version", "seed", ...}.
    synth_source: dict | None = field(default=None, compare=False)

    @property
    def has_gold(self) -> bool:
        return not any(is_blank(getattr(self, f)) for f in GOLD_FIELDS)

    def gold(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in GOLD_FIELDS}

    def inputs(self) -> dict[str, Any]:
        return {
            "case_description": list(self.case_description),
            "consultation_process": list(self.consultation_process),
            "experience_and_reflection": self.experience_and_reflection,
        }

    def fingerprint(self) -> str:
        """Hash of the inputs only, whitespace- and case-folded: finds a test report in training data."""
        text = "\x1f".join([*self.case_description, "\x1e", *self.consultation_process, "\x1e",
                            self.experience_and_reflection])
        norm = re.sub(r"\s+", " ", text).strip().lower()
        return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, **self.inputs()}
        for f in GOLD_FIELDS:
            if getattr(self, f) is not None:
                d[f] = getattr(self, f)
        d["source"] = self.source
        if self.label_source is not None:
            d["label_source"] = self.label_source
        if self.synth_source is not None:
            d["synth_source"] = self.synth_source
        return d

    def with_gold(self, fields: dict[str, str], label_source: dict | None = None) -> "Record":
        d = self.to_dict()
        d.update({f: fields[f] for f in GOLD_FIELDS})
        if label_source is not None:
            d["label_source"] = label_source
        return record_from_dict(d)


def _str_list(value: Any, name: str, path, where: str, allow_str: bool) -> tuple[str, ...]:
    if allow_str and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        want = "a list of strings" + (" or a string" if allow_str else "")
        raise RecordError(path, where, name, f"expected {want}, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordError(path, where, f"{name}[{i}]", f"expected a string, got {type(item).__name__}")
    if all(is_blank(s) for s in value):
        raise RecordError(path, where, name, "is empty")
    return tuple(value)


def integer_id_problem(value: Any) -> str | None:
    """Why `value` is not a record id (an integer; JSON true/false are not), or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer, got {json.dumps(value, ensure_ascii=False)}"
    return None


def record_from_dict(d: Any, path: str | os.PathLike = "<dict>", where: str = "") -> Record:
    if not isinstance(d, dict):
        raise RecordError(path, where, None, f"expected a JSON object, got {type(d).__name__}")
    for name in ("id", *INPUT_FIELDS):
        if name not in d:
            raise RecordError(path, where, name, "is missing")
    rid = d["id"]
    if integer_id_problem(rid):
        raise RecordError(path, where, "id", integer_id_problem(rid))
    reflection = d["experience_and_reflection"]
    if not isinstance(reflection, str):
        raise RecordError(path, where, "experience_and_reflection",
                          f"expected a string, got {type(reflection).__name__}")
    gold = {}
    for name in GOLD_FIELDS:
        value = d.get(name)
        if value is not None and not isinstance(value, str):
            raise RecordError(path, where, name, f"expected a string, got {type(value).__name__}")
        gold[name] = value
    source = d.get("source", "longemotion")
    if not isinstance(source, str):
        raise RecordError(path, where, "source", "expected a string")
    label_source = d.get("label_source")
    if label_source is not None and not isinstance(label_source, dict):
        raise RecordError(path, where, "label_source", "expected an object")
    synth_source = d.get("synth_source")
    if synth_source is not None and not isinstance(synth_source, dict):
        raise RecordError(path, where, "synth_source", "expected an object")
    return Record(
        id=rid,
        case_description=_str_list(d["case_description"], "case_description", path, where, allow_str=True),
        consultation_process=_str_list(d["consultation_process"], "consultation_process", path, where,
                                       allow_str=False),
        experience_and_reflection=reflection,
        source=source,
        label_source=label_source,
        synth_source=synth_source,
        **gold,
    )


def record_from_paste(text: str, rid: int = 0) -> Record:
    """A report pasted by a user: one JSON record of an ES file, or plain text, whose first paragraph
    (first sentence, for a single paragraph) becomes the case description and the rest the
    consultation process (a one-sentence text is both)."""
    from emotion_summary.data.text import split_sentences

    text = text.strip()
    if text.startswith("{"):
        try:
            return record_from_dict(json.loads(text), "<pasted report>")
        except json.JSONDecodeError as e:
            raise RecordError("<pasted report>", "", None, f"not valid JSON ({e.msg} at character {e.pos})") from None
    pieces = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(pieces) == 1:
        pieces = split_sentences(pieces[0]) or pieces
    if not pieces:
        raise RecordError("<pasted report>", "", None, "is empty: paste a report or pick an example")
    return record_from_dict({"id": rid, "case_description": pieces[:1], "consultation_process": pieces[1:] or pieces,
                             "experience_and_reflection": ""}, "<pasted report>")


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecordError(path, f"line {line}", None, f"is not valid UTF-8 (byte {e.start})") from None


def _raw_items(path: Path) -> list[tuple[str, Any]]:
    text = _decode(path)
    if not text.strip():
        raise RecordError(path, "", None, "file is empty")
    if text.lstrip().startswith("["):
        try:
            items = load_json(text)
        except json.JSONDecodeError as e:
            raise RecordError(path, f"line {e.lineno}", None, f"invalid JSON: {e.msg}") from None
        return [(f"item {i}", item) for i, item in enumerate(items)]
    out = []
    for n, line in jsonl_lines(text):
        try:
            out.append((f"line {n}", load_json(line)))
        except json.JSONDecodeError as e:
            raise RecordError(path, f"line {n}", None, f"invalid JSON ({e.msg}); is the line truncated?") from None
    return out


def read_records(path: str | os.PathLike, require_gold: bool = False) -> list[Record]:
    """Read ES records from JSONL or a JSON array; raise RecordError on the first bad one."""
    path = Path(path)
    if missing_file(path):
        raise RecordError(path, "", None, missing_file(path))
    records: list[Record] = []
    seen: dict[int, str] = {}
    for where, item in _raw_items(path):
        rec = record_from_dict(item, path, where)
        if problem := duplicate_id(seen, rec.id, where):
            raise RecordError(path, where, "id", problem)
        if require_gold:
            missing = [f for f in GOLD_FIELDS if is_blank(getattr(rec, f))]
            if missing:
                raise RecordError(path, where, missing[0],
                                  "gold field is missing or empty; this needs a labelled ES file with "
                                  f"all five ({', '.join(GOLD_FIELDS)}), not bare inputs. Label "
                                  "inputs with scripts/label_with_teacher.py.")
        records.append(rec)
    return records


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> Path:
    return atomic_write_jsonl(path, (r.to_dict() for r in records))


def duplicate_id(seen: dict, rid, where: str) -> str | None:
    """The one duplicate-id check: "duplicate id N (first at WHERE)" when `rid` is in `seen`, else None
    (and `rid` is remembered at `where`)."""
    if rid in seen:
        return f"duplicate id {rid} (first at {seen[rid]})"
    seen[rid] = where
    return None


def check_unique_ids(records: Sequence[Record], what: str = "records") -> None:
    seen: dict = {}
    for n, r in enumerate(records, 1):
        if problem := duplicate_id(seen, r.id, f"record {n}"):
            raise UserError(f"{what}: {problem}")
