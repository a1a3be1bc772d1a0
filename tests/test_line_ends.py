"""U+2028, U+2029 and U+0085 are text, not line ends: every JSONL writer and reader round-trips them
(issue 10, item 3); files are created with the umask's permissions, not mkstemp's 0600."""

import json
import os
import stat

import pytest

from emotion_summary.core.atomic_io import (append_jsonl, atomic_write_bytes, atomic_write_jsonl, jsonl_lines,
                                       read_jsonl_tolerant)
from emotion_summary.data.records import GOLD_FIELDS, Record, read_records, write_records
from emotion_summary.predicting.submission import check_submission, read_predictions, submission_row, write_submission

ODD = "one\u2028two\u2029three\u0085four"


def odd_record(rid: int = 1) -> Record:
    return Record(id=rid, case_description=(f"Case {ODD}.",), consultation_process=(f"Session {ODD}.",),
                  experience_and_reflection=f"Reflection {ODD}.",
                  **{f: f"{f} {ODD}" for f in GOLD_FIELDS})


def test_the_reader_splits_on_newline_only():
    text = json.dumps({"a": ODD}, ensure_ascii=False) + "\r\n\n" + json.dumps({"b": 1}) + "\n"
    assert [(n, json.loads(line)) for n, line in jsonl_lines(text)] == [(1, {"a": ODD}), (3, {"b": 1})]


def test_records_round_trip_whether_written_raw_or_escaped(tmp_path):
    raw = tmp_path / "raw.jsonl"  # as another tool writes it: the characters unescaped
    raw.write_text(json.dumps(odd_record().to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_records(raw, require_gold=True) == [odd_record()]
    ours = write_records(tmp_path / "ours.jsonl", [odd_record(1), odd_record(2)])
    assert len(ours.read_text(encoding="utf-8").splitlines()) == 2  # escaped: any tool sees two lines
    assert read_records(ours, require_gold=True) == [odd_record(1), odd_record(2)]


@pytest.mark.parametrize("write", ["atomic", "append"])
def test_side_files_round_trip(tmp_path, write):
    rows = [{"id": i, "raw": f"reply {i} {ODD}"} for i in range(3)]
    path = tmp_path / "side.jsonl"
    if write == "atomic":
        atomic_write_jsonl(path, rows)
    else:
        for row in rows:
            append_jsonl(path, row)
    assert read_jsonl_tolerant(path) == rows
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_jsonl_tolerant(path) == rows  # written raw by an older version


def test_submission_round_trips(tmp_path):
    inputs = write_records(tmp_path / "in.jsonl", [odd_record(1), odd_record(2)])
    fields = {r.id: r.gold() for r in read_records(inputs)}
    sub = write_submission(tmp_path / "sub.jsonl", fields, [1, 2])
    report = check_submission(sub, inputs)
    assert report.ok, report.errors
    assert read_predictions(sub) == fields
    sub.write_text("".join(json.dumps(submission_row(i, fields[i]), ensure_ascii=False) + "\n" for i in (1, 2)),
                   encoding="utf-8")  # written raw by another tool
    assert read_predictions(sub) == fields


def test_new_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "prompt.json", b"{}")
        atomic_write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "prompt.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "rows.jsonl").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
