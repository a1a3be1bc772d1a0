"""The leaderboard's submission format, and a checker that is instant (no torch)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from emotion_summary.atomic_io import atomic_write_jsonl, jsonl_lines
from emotion_summary.json_input import load_json
from emotion_summary.paths import missing_file
from emotion_summary.records import GOLD_FIELDS, Record, RecordError, integer_id_problem, is_blank, read_records
from emotion_summary.text import LANGUAGE_NAMES, detect_language, record_language, script_language
from emotion_summary.text_escape import terminal_text

SUBMISSION_FILE = "Emotion_Summary_Result.jsonl"
# Singular "cause" and capital "C" are the leaderboard's spelling.
SUBMISSION_KEYS = {
    "causes": "predicted_cause",
    "symptoms": "predicted_symptoms",
    "treatment_process": "predicted_treatment_process",
    "characteristics_of_illness": "predicted_illness_Characteristics",
    "treatment_effect": "predicted_treatment_effect",
}
FIELD_OF_KEY = {v: k for k, v in SUBMISSION_KEYS.items()}


def submission_row(record_id: int, fields: dict[str, str]) -> dict:
    return {"id": record_id, **{SUBMISSION_KEYS[f]: fields[f] for f in GOLD_FIELDS}}


def write_submission(path: str | os.PathLike, rows_by_id: dict[int, dict[str, str]],
                     order: list[int]) -> Path:
    """Write one line per id in `order` (the input order), exactly the six keys, atomically."""
    missing = [i for i in order if i not in rows_by_id]
    if missing:
        raise ValueError(f"no prediction for ids {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return atomic_write_jsonl(path, (submission_row(i, rows_by_id[i]) for i in order))


def read_predictions(path: str | os.PathLike) -> dict[int, dict[str, str]]:
    """A submission file as {id: {field: text}} in our field names; errors name the line and key."""
    report = check_submission(path)
    if report.errors:  # each error starts with the path, which RecordError puts in front once
        raise RecordError(path, "", None, "; ".join(e.removeprefix(str(path)).lstrip(": ")
                                                    for e in report.errors[:5]))
    return {rid: {FIELD_OF_KEY[k]: v for k, v in row.items() if k in FIELD_OF_KEY}
            for rid, row in report.rows.items()}


@dataclass
class SubmissionReport:
    path: str
    n_rows: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: dict[int, dict] = field(default_factory=dict, repr=False)  # the parsed rows by id

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        lines = [f"{self.path}: {self.n_rows} rows, {len(self.errors)} errors, {len(self.warnings)} warnings"]
        lines += [f"  ERROR   {e}" for e in self.errors[:50]]
        lines += [f"  WARNING {w}" for w in self.warnings[:50]]
        warned = f", but read the {len(self.warnings)} warnings above" if self.warnings else ""
        lines.append(f"OK: ready to submit{warned}" if self.ok else "NOT READY: fix the errors above")
        return "\n".join(map(terminal_text, lines))  # no line of the file's text can act on the terminal


def _check_row(path: Path, n: int, row, seen: dict, report: SubmissionReport) -> None:
    at = f"{path}:line {n}"
    if not isinstance(row, dict):
        report.errors.append(f"{at}: expected a JSON object")
        return
    rid = row.get("id")
    if integer_id_problem(rid):
        report.errors.append(f"{at}: field 'id': {integer_id_problem(rid)}")
    elif rid in seen:
        report.errors.append(f"{at}: field 'id': duplicate id {rid} (first at line {seen[rid]})")
    else:
        seen[rid] = n
    expected = {"id", *SUBMISSION_KEYS.values()}
    for key in sorted(expected - row.keys()):
        report.errors.append(f"{at}: field '{key}': is missing")
    for key in sorted(row.keys() - expected):  # a key is the file's text: shown escaped, never run
        report.errors.append(f"{at}: field {key!r}: unexpected key (the leaderboard takes exactly "
                             f"{', '.join(sorted(expected))})")
    for key in SUBMISSION_KEYS.values():
        if key in row and (not isinstance(row[key], str) or is_blank(row[key])):
            report.errors.append(f"{at}: field '{key}': must be a non-empty string")


def check_submission(path: str | os.PathLike, inputs: str | os.PathLike | None = None) -> SubmissionReport:
    """Check ids (complete, unique, integer), keys (exact), values (non-empty strings, letters, the
    report's language per field) and the language of each row."""
    path = Path(path)
    report = SubmissionReport(str(path))
    if missing_file(path):
        report.errors.append(f"{path}: {missing_file(path)}")
        return report
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        report.errors.append(f"{path}: not valid UTF-8 (byte {e.start})")
        return report
    seen: dict[int, int] = {}
    rows = report.rows
    for n, line in jsonl_lines(text):
        report.n_rows += 1
        try:
            row = load_json(line)
        except json.JSONDecodeError as e:
            report.errors.append(f"{path}:line {n}: invalid JSON ({e.msg})")
            continue
        _check_row(path, n, row, seen, report)
        if isinstance(row, dict) and isinstance(row.get("id"), int):
            rows[row["id"]] = row
    if report.n_rows == 0:
        report.errors.append(f"{path}: file is empty")
    expected = {rid: detect_language(_row_text(row)) for rid, row in rows.items()}
    if inputs is not None:
        expected = _check_against_inputs(read_records(inputs), rows, report)
    for rid, row in rows.items():
        _check_values(f"{path}:line {seen.get(rid, '?')}", row, expected.get(rid), report)
    return report


def _row_text(row: dict) -> str:
    return " ".join(str(row.get(k, "")) for k in SUBMISSION_KEYS.values())


def _check_values(at: str, row: dict, language: str | None, report: SubmissionReport) -> None:
    """Warn about placeholders (no letters: ".", "-", "1") and about a field in another script than
    its report (`language`; None when the whole row is already flagged)."""
    for key in SUBMISSION_KEYS.values():
        value = row.get(key)
        if not isinstance(value, str) or is_blank(value):
            continue  # an error already
        said = script_language(value)
        if said is None:
            report.warnings.append(f"{at}: field '{key}': {value.strip()[:20]!r} has no letters: a placeholder, "
                                   "not a summary")
        elif language is not None and said != language:
            report.warnings.append(f"{at}: field '{key}': written in {LANGUAGE_NAMES.get(said, said.title())}, "
                                   f"its report in {LANGUAGE_NAMES[language]}")


def _check_against_inputs(records: list[Record], rows: dict[int, dict],
                          report: SubmissionReport) -> dict[int, str | None]:
    """Ids and languages against the inputs; the language each row's fields should be in (None for
    rows already flagged as a whole)."""
    want = [r.id for r in records]
    missing = [i for i in want if i not in rows]
    extra = sorted(set(rows) - set(want))
    if missing:
        report.errors.append(f"{len(missing)} input ids have no prediction: {missing[:20]}")
    if extra:
        report.errors.append(f"{len(extra)} predicted ids are not in the inputs: {extra[:20]}")
    mismatched, expected = [], {}
    for r in records:
        row = rows.get(r.id)
        if row is None:
            continue
        said = _row_text(row)
        expected[r.id] = record_language(r)
        if said.strip() and detect_language(said) != expected[r.id]:
            mismatched.append(r.id)
            expected[r.id] = None
    if mismatched:
        report.warnings.append(
            f"{len(mismatched)} predictions are not in the language of their report (ids {mismatched[:10]}): "
            "a public solution answered English reports in Chinese and scored ~0 ROUGE; set the prompt "
            "language (--language en) or check the model.")
    return expected
