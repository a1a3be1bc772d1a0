"""The leaderboard's submission format, and a checker that is instant (no torch)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from emotion_summary.core.atomic_io import atomic_write_jsonl, jsonl_lines
from emotion_summary.core.errors import UserError
from emotion_summary.core.json_input import load_json
from emotion_summary.core.paths import missing_file
from emotion_summary.core.text_escape import terminal_text
from emotion_summary.data.records import GOLD_FIELDS, Record, RecordError, integer_id_problem, is_blank, read_records
from emotion_summary.data.text import LANGUAGE_NAMES, detect_language, record_language, script_language

SUBMISSION_FILE = "Emotion_Summary_Result.jsonl"
# Singular "cause" and capital "C" are the CloudCom 2025 challenge's spelling.
SUBMISSION_KEYS = {
    "causes": "predicted_cause",
    "symptoms": "predicted_symptoms",
    "treatment_process": "predicted_treatment_process",
    "characteristics_of_illness": "predicted_illness_Characteristics",
    "treatment_effect": "predicted_treatment_effect",
}
# The LongEmotion benchmark's own result files (evaluations/base.py) spell two keys differently.
BENCHMARK_KEYS = {**SUBMISSION_KEYS, "causes": "predicted_causes", "characteristics_of_illness": "predicted_characteristics"}
KEY_SETS = {"competition": SUBMISSION_KEYS, "benchmark": BENCHMARK_KEYS}
KeySet = Literal["competition", "benchmark"]
FIELD_OF_KEY = {v: k for k, v in SUBMISSION_KEYS.items()}


def filled_file_for(submission: str | os.PathLike) -> Path:
    """The sidecar that says which fields of a submission came from the extractive fallback."""
    return Path(f"{submission}.filled.json")


def read_filled(submission: str | os.PathLike) -> dict[str, list[str]] | None:
    """{id: fields the extractive fallback filled} from the submission's sidecar; None without one."""
    path = filled_file_for(submission)
    if not path.is_file():
        return None
    try:
        filled = json.loads(path.read_text(encoding="utf-8")).get("filled")
    except (ValueError, AttributeError):
        return None
    return filled if isinstance(filled, dict) else None


def key_map(keys: str) -> dict[str, str]:
    """{field: submission key} of a key set (competition or benchmark)."""
    if keys not in KEY_SETS:
        raise UserError(f"--keys: expected one of {', '.join(KEY_SETS)}, got {keys!r}")
    return KEY_SETS[keys]


def key_set_of(row) -> KeySet:
    """Which key set a row uses: benchmark when it holds a key only the benchmark uses and none only
    the competition uses."""
    names = set(row) if isinstance(row, dict) else set()
    only = {name: set(KEY_SETS[name].values()) - set(KEY_SETS[other].values())
            for name, other in (("competition", "benchmark"), ("benchmark", "competition"))}
    return "benchmark" if names & only["benchmark"] and not names & only["competition"] else "competition"


def submission_row(record_id: int, fields: dict[str, str], keys: KeySet = "competition") -> dict:
    names = key_map(keys)
    return {"id": record_id, **{names[f]: fields[f] for f in GOLD_FIELDS}}


def write_submission(path: str | os.PathLike, rows_by_id: dict[int, dict[str, str]],
                     order: list[int], keys: KeySet = "competition") -> Path:
    """Write one line per id in `order` (the input order), exactly the six keys of the key set,
    atomically."""
    missing = [i for i in order if i not in rows_by_id]
    if missing:
        raise ValueError(f"no prediction for ids {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return atomic_write_jsonl(path, (submission_row(i, rows_by_id[i], keys) for i in order))


def read_predictions(path: str | os.PathLike) -> dict[int, dict[str, str]]:
    """A submission file (either key set) as {id: {field: text}} in our field names; errors name the
    line and key."""
    report = check_submission(path, keys=None)
    if report.errors:  # each error starts with the path, which RecordError puts in front once
        raise RecordError(path, "", None, "; ".join(e.removeprefix(str(path)).lstrip(": ")
                                                    for e in report.errors[:5]))
    field_of = {v: k for k, v in key_map(report.key_set).items()}
    return {rid: {field_of[k]: v for k, v in row.items() if k in field_of} for rid, row in report.rows.items()}


@dataclass
class SubmissionReport:
    path: str
    n_rows: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: dict[int, dict] = field(default_factory=dict, repr=False)  # the parsed rows by id
    key_set: KeySet = "competition"  # the key set the file uses (its first row's)

    @property
    def keys(self) -> dict[str, str]:
        return KEY_SETS[self.key_set]

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        lines = [f"{self.path}: {self.n_rows} rows, {len(self.errors)} errors, {len(self.warnings)} warnings; "
                 f"{self.key_set} keys ({', '.join(self.keys.values())})"]
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
    expected = {"id", *report.keys.values()}
    for key in sorted(expected - row.keys()):
        report.errors.append(f"{at}: field '{key}': is missing")
    for key in sorted(row.keys() - expected):  # a key is the file's text: shown escaped, never run
        report.errors.append(f"{at}: field {key!r}: unexpected key (the leaderboard takes exactly "
                             f"{', '.join(sorted(expected))})")
    for key in report.keys.values():
        if key in row and (not isinstance(row[key], str) or is_blank(row[key])):
            report.errors.append(f"{at}: field '{key}': must be a non-empty string")


def check_submission(path: str | os.PathLike, inputs: str | os.PathLike | None = None,
                     keys: KeySet | None = "competition") -> SubmissionReport:
    """Check ids (complete, unique, integer), keys (exactly those of the key set `keys`; None: the set
    the file's first row uses), values (non-empty strings, letters, the report's language per field)
    and the language of each row."""
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
        if report.n_rows == 1:
            _choose_key_set(path, row, keys, report)
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


def _choose_key_set(path: Path, first_row, wanted: KeySet | None, report: SubmissionReport) -> None:
    """Check the rows against the key set the file uses; when it is not the one wanted, say so once."""
    report.key_set = key_set_of(first_row)
    if wanted is not None and report.key_set != wanted:
        report.errors.append(f"{path}: uses the {report.key_set} keys ({', '.join(report.keys.values())}); "
                             f"--keys {wanted} expects {', '.join(key_map(wanted).values())}")


def _row_text(row: dict) -> str:
    return " ".join(str(row.get(k, "")) for k in set(SUBMISSION_KEYS.values()) | set(BENCHMARK_KEYS.values()))


def _check_values(at: str, row: dict, language: str | None, report: SubmissionReport) -> None:
    """Warn about placeholders (no letters: ".", "-", "1") and about a field in another script than
    its report (`language`; None when the whole row is already flagged)."""
    for key in report.keys.values():
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
