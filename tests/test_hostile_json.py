"""Hostile bytes in a user's files: deep nesting, huge integers, lone surrogates, NaN: one line naming
the file and line from every reader, never a traceback; a submission holding them is never "OK"."""

from __future__ import annotations

import json
import re

import pytest

from emotion_summary.core.cli import Usage, parse_command_line, Option
from emotion_summary.commands import check_submission as check_submission_command
from emotion_summary.data.psyqa import load_psyqa
from emotion_summary.data.records import RecordError, read_records
from emotion_summary.predicting.submission import check_submission, read_predictions
from emotion_summary.teacher.synthesize import read_seeds

RECORD = {"id": 1, "case_description": ["a case"], "consultation_process": ["a session"],
          "experience_and_reflection": "a reflection"}
SUBMISSION_ROW = {"id": 1, "predicted_cause": "c", "predicted_symptoms": "s", "predicted_treatment_process": "p",
                  "predicted_illness_Characteristics": "i", "predicted_treatment_effect": "e"}


def _hostile(line: str, kind: str) -> str:
    """`line` (one JSON object) with a hostile value put in its last string field or its id."""
    if kind == "deep":
        return line[:-1] + ', "x": ' + "[" * 1000 + "]" * 1000 + "}"
    if kind == "digits":
        return line.replace('"id": 1', '"id": ' + "9" * 5000, 1)
    if kind == "surrogate":
        return line[:-1] + ', "x": "a \\ud800"}'
    if kind == "nan":
        return line[:-1] + ', "x": NaN}'
    raise AssertionError(kind)


KINDS = ["deep", "digits", "surrogate", "nan"]
SAYS = {"deep": "nested deeper", "digits": "5,000 digits", "surrogate": "lone surrogate", "nan": "NaN"}


@pytest.mark.parametrize("kind", KINDS)
def test_records_reader_refuses_hostile_json_naming_file_and_line(tmp_path, kind):
    path = tmp_path / "in.jsonl"
    good = json.dumps({**RECORD, "id": 2})
    path.write_text(good + "\n" + _hostile(json.dumps(RECORD), kind) + "\n")
    with pytest.raises(RecordError) as e:
        read_records(path)
    assert f"{path}:line 2" in str(e.value) and SAYS[kind] in str(e.value)


@pytest.mark.parametrize("kind", KINDS)
def test_records_reader_refuses_hostile_json_array(tmp_path, kind):
    path = tmp_path / "in.json"
    path.write_text("[\n" + _hostile(json.dumps(RECORD), kind) + "\n]\n")
    with pytest.raises(RecordError) as e:
        read_records(path)
    assert f"{path}:line 2" in str(e.value) and SAYS[kind] in str(e.value)


@pytest.mark.parametrize("kind", KINDS)
def test_checker_never_passes_a_hostile_submission(tmp_path, kind, capsys):
    path = tmp_path / "sub.jsonl"
    path.write_text(_hostile(json.dumps(SUBMISSION_ROW), kind) + "\n")
    report = check_submission(path)
    assert not report.ok and f"{path}:line 1" in report.errors[0] and SAYS[kind] in report.errors[0]
    with pytest.raises(RecordError):  # evaluate's reader: one line, no UnicodeEncodeError later
        read_predictions(path)
    with pytest.raises(SystemExit) as exit_info:
        check_submission_command([str(path)])
    assert exit_info.value.code == 1
    assert "OK: ready" not in capsys.readouterr().out


@pytest.mark.parametrize("kind", KINDS)
def test_seed_and_psyqa_readers_refuse_hostile_json(tmp_path, kind):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(_hostile(json.dumps({"seed": "a topic", "id": 1}), kind) + "\n")
    with pytest.raises(Exception) as e:
        read_seeds(str(seeds))
    assert f"{seeds}: line 1" in str(e.value) and SAYS[kind] in str(e.value)
    psyqa = tmp_path / "psyqa.json"
    psyqa.write_text("[\n" + _hostile(json.dumps({"question": "q", "id": 1}), kind) + "\n]")
    with pytest.raises(RecordError) as e:
        load_psyqa(psyqa)
    assert f"{psyqa}:line 2" in str(e.value) and SAYS[kind] in str(e.value)


def test_config_file_with_hostile_json_is_one_problem(tmp_path):
    config = tmp_path / "c.json"
    config.write_text('{"n": ' + "[" * 1000 + "]" * 1000 + "}")
    with pytest.raises(Usage) as e:
        parse_command_line([Option("n", int, 1)], ["--config", str(config)], config_file=True)
    assert e.value.problems == [f"--config: {config}: not valid JSON (line 1: nested deeper than 64 levels)"]


def test_surrogate_pairs_and_ordinary_numbers_still_load(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({**RECORD, "experience_and_reflection": "ok \U0001F600", "score": 1.5e3}) + "\n")
    assert read_records(path)[0].experience_and_reflection == "ok \U0001F600"


# ---------------------------------------------------------------- escaped for the medium


def test_checker_shows_a_hostile_key_escaped_never_raw(tmp_path, capsys):
    path = tmp_path / "sub.jsonl"
    key = "\u001b[2J\u001b[H\nOK: ready to submit\u202e"
    path.write_text(json.dumps({**SUBMISSION_ROW, key: "x"}) + "\n")
    with pytest.raises(SystemExit):
        check_submission_command([str(path)])
    out = capsys.readouterr().out
    assert "\u001b" not in out and "\u202e" not in out and "\\x1b[2J" in out
    assert [line for line in out.splitlines() if line.startswith("OK")] == []


def test_markdown_report_shows_file_names_and_notes_as_text(tmp_path, gold_file):
    from emotion_summary.scoring.evaluate import evaluate
    from emotion_summary.data.records import read_records
    from emotion_summary.predicting.submission import write_submission

    records = read_records(gold_file)
    hostile = tmp_path / "<img src=x onerror=alert(1)>"
    sub = hostile / "a`b <script>.jsonl"
    write_submission(sub, {r.id: r.gold() for r in records}, [r.id for r in records])
    evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), name="r", bertscore=True,
             bertscore_model=str(tmp_path / "missing <b>model</b>"))
    md = (tmp_path / "res" / "r.md").read_text()
    outside_code = re.sub(r"(?<![\\`])(`+) ?.*? ?\1(?!`)", "", md)  # HTML in a code span is shown, never run
    assert "<" not in outside_code and "&lt;b&gt;" in outside_code  # the BERTScore note names the folder
    assert "/a`b <script>.jsonl``" in md  # the span's fence is longer than the backtick inside
