"""PsyQA (a JSON array of questions with counsellors' answers) -> unlabelled ES records.

One record per question, built only from text that is in the source:
- case_description: [question, description], empty ones dropped;
- consultation_process: one answer, the first strategy-labelled one (else the first answer), cut at
  its labelled spans' start offsets when it is labelled, else into sentences;
- experience_and_reflection: "" (PsyQA has no counsellor reflection; we invent none).
The answer's strategy labels go to a side field `strategy_labels` (aligned with
consultation_process); `read_records` ignores it. Gold fields come later, from the teacher labeller.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emotion_summary.core.atomic_io import atomic_write_jsonl
from emotion_summary.core.json_input import load_json
from emotion_summary.core.paths import missing_file, refuse_overwrite
from emotion_summary.data.records import RecordError, record_from_dict
from emotion_summary.data.text import split_sentences

# LongEmotion ids are small (1-200 today); PsyQA ids live far above them and never collide.
ID_OFFSET = 10_000_000
SOURCE = "psyqa"


def psyqa_id(question_id: int) -> int:
    return ID_OFFSET + question_id


class _Item:
    """Error context for one PsyQA question: `fail(field, msg)` raises a RecordError naming it."""

    def __init__(self, path, index: int):
        self.path, self.where = path, f"item {index}"

    def fail(self, field: str, message: str):
        raise RecordError(self.path, self.where, field, message)


def _question_id(item: dict, ctx: _Item) -> int:
    qid = item.get("questionID")
    if isinstance(qid, str) and qid.strip().isdigit():
        qid = int(qid)
    if isinstance(qid, bool) or not isinstance(qid, int) or qid < 0:
        ctx.fail("questionID", f"expected a non-negative integer, got {json.dumps(qid, ensure_ascii=False)}")
    return qid


def _text(item: dict, name: str, ctx: _Item, required: bool) -> str:
    value = item.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        ctx.fail(name, "is missing" if value is None else f"expected a string, got {type(value).__name__}")
    return value


def _chosen_answer(item: dict, ctx: _Item) -> tuple[int, dict]:
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers:
        ctx.fail("answers", "expected a non-empty list of answers")
    for i, a in enumerate(answers):
        if not isinstance(a, dict):
            ctx.fail(f"answers[{i}]", f"expected an object, got {type(a).__name__}")
    labelled = [i for i, a in enumerate(answers) if a.get("has_label") and a.get("labels_sequence")]
    index = labelled[0] if labelled else 0
    return index, answers[index]


def _spans(answer: dict, text: str, field: str, ctx: _Item) -> list[tuple[int, int, str]]:
    spans, prev_end = [], 0
    for j, span in enumerate(answer["labels_sequence"]):
        where = f"{field}.labels_sequence[{j}]"
        if not isinstance(span, dict):
            ctx.fail(where, "expected an object with start, end, type")
        start, end, kind = span.get("start"), span.get("end"), span.get("type")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            ctx.fail(where, f"start/end must be integers, got {start!r}/{end!r}")
        if not prev_end <= start < end <= len(text):
            ctx.fail(where, f"bad offsets {start}..{end}: spans must be ordered, non-overlapping "
                            f"and inside answer_text ({len(text)} characters)")
        if not isinstance(kind, str):
            ctx.fail(f"{where}.type", "expected a string")
        spans.append((start, end, kind))
        prev_end = end
    return spans


def labelled_segments(text: str, spans: list[tuple[int, int, str]]) -> list[tuple[str, str | None]]:
    """(segment, strategy) pieces cut at each span's start; text between spans (usually a lone
    final "。") stays with the span before it, so no source text is lost or reordered."""
    cuts = [(0, None)] + [(s, kind) for s, _, kind in spans]
    out = []
    for (start, kind), (stop, _) in zip(cuts, cuts[1:] + [(len(text), None)]):
        piece = text[start:stop].strip()
        if piece:
            out.append((piece, kind))
    return out


def _process(answer: dict, index: int, ctx: _Item) -> tuple[list[str], list[str | None] | None]:
    field = f"answers[{index}]"
    text = answer.get("answer_text")
    if not isinstance(text, str) or not text.strip():
        ctx.fail(f"{field}.answer_text", "is missing or empty")
    labels = answer.get("labels_sequence")
    if labels is not None and not isinstance(labels, list):
        ctx.fail(f"{field}.labels_sequence", f"expected a list or null, got {type(labels).__name__}")
    if answer.get("has_label") and labels:
        pieces = labelled_segments(text, _spans(answer, text, field, ctx))
        return [p for p, _ in pieces], [k for _, k in pieces]
    return split_sentences(text), None


def convert_item(item: Any, path: str | os.PathLike = "<psyqa>", index: int = 0) -> dict:
    """One PsyQA question as an ES record dict (validated by records.record_from_dict)."""
    ctx = _Item(path, index)
    if not isinstance(item, dict):
        raise RecordError(path, ctx.where, None, f"expected a JSON object, got {type(item).__name__}")
    qid = _question_id(item, ctx)
    question = _text(item, "question", ctx, required=True)
    if not question.strip():
        ctx.fail("question", "is empty")
    description = _text(item, "description", ctx, required=False)
    answer_index, answer = _chosen_answer(item, ctx)
    process, strategies = _process(answer, answer_index, ctx)
    d = {
        "id": psyqa_id(qid),
        "case_description": [s.strip() for s in (question, description) if s.strip()],
        "consultation_process": process,
        "experience_and_reflection": "",
        "source": SOURCE,
    }
    record_from_dict(d, path, ctx.where)
    if strategies is not None:
        d["strategy_labels"] = strategies
    return d


def load_psyqa(path: str | os.PathLike) -> list[Any]:
    path = Path(path)
    if missing_file(path):  # "no such file", or "is a directory"
        raise RecordError(path, "", None, f"{missing_file(path)} (get the file with scripts/download_data.py)")
    try:
        data = load_json(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise RecordError(path, "", None, "is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise RecordError(path, f"line {e.lineno}", None, f"invalid JSON: {e.msg}") from None
    if not isinstance(data, list):
        raise RecordError(path, "", None, f"expected a JSON array of questions, got {type(data).__name__}")
    return data


def convert_items(items: list[Any], path: str | os.PathLike = "<psyqa>") -> list[dict]:
    rows, seen = [], {}
    for i, item in enumerate(items):
        row = convert_item(item, path, i)
        if row["id"] in seen:
            raise RecordError(path, f"item {i}", "questionID",
                              f"duplicate questionID {row['id'] - ID_OFFSET} (first at item {seen[row['id']]})")
        seen[row["id"]] = i
        rows.append(row)
    return rows


def convert_psyqa(input: str, output: str) -> None:
    """Convert a PsyQA JSON array into unlabelled ES records (JSONL), one per question.

    Args:
        input: PsyQA JSON file (a JSON array; e.g. data/psyqa/PsyQA_example.json).
        output: ES records to write (JSONL), written whole or not at all.
    """
    refuse_overwrite({"--output": output}, {"--input": input})
    rows = convert_items(load_psyqa(input), input)
    atomic_write_jsonl(output, rows)
    labelled = sum("strategy_labels" in r for r in rows)
    print(f"wrote {len(rows)} records to {output} ({labelled} from strategy-labelled answers, "
          f"{len(rows) - labelled} split into sentences); ids = {ID_OFFSET:,} + questionID")
