"""scripts/check_submission.py and the checker behind it: one test per error class."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_summary.data.records import read_records
from emotion_summary.predicting.submission import SUBMISSION_KEYS, check_submission, read_predictions, submission_row

from tests.conftest import ROOT


@pytest.fixture
def inputs(fixtures):
    return fixtures / "es_eval_gold.jsonl"


@pytest.fixture
def good_rows(inputs):
    return [submission_row(r.id, r.gold()) for r in read_records(inputs)]


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_a_good_submission_is_ok(tmp_path, inputs, good_rows):
    report = check_submission(write(tmp_path / "s.jsonl", good_rows), inputs)
    assert report.ok and not report.warnings and report.n_rows == 3


def test_missing_id(tmp_path, inputs, good_rows):
    report = check_submission(write(tmp_path / "s.jsonl", good_rows[:2]), inputs)
    assert report.errors == ["1 input ids have no prediction: [13]"]


def test_duplicate_id(tmp_path, inputs, good_rows):
    report = check_submission(write(tmp_path / "s.jsonl", [*good_rows, good_rows[0]]), inputs)
    assert report.errors == [f"{tmp_path / 's.jsonl'}:line 4: field 'id': duplicate id 11 (first at line 1)"]


def test_wrong_key(tmp_path, good_rows):
    row = dict(good_rows[0])
    row["predicted_causes"] = row.pop("predicted_cause")
    errors = check_submission(write(tmp_path / "s.jsonl", [row, *good_rows[1:]])).errors
    assert any("field 'predicted_cause': is missing" in e for e in errors)
    assert any("field 'predicted_causes': unexpected key" in e for e in errors)


@pytest.mark.parametrize("value", ["", "   ", None, 3, "\u200b", " \u200b\ufeff\u2060 "])
def test_empty_or_non_string_value(tmp_path, good_rows, value):
    row = {**good_rows[1], "predicted_treatment_effect": value}
    errors = check_submission(write(tmp_path / "s.jsonl", [good_rows[0], row])).errors
    assert errors == [f"{tmp_path / 's.jsonl'}:line 2: field 'predicted_treatment_effect': must be a non-empty string"]


@pytest.mark.parametrize("bad_id", ["11", 11.0, True, None])
def test_non_integer_id(tmp_path, good_rows, bad_id):
    errors = check_submission(write(tmp_path / "s.jsonl", [{**good_rows[0], "id": bad_id}])).errors
    assert len(errors) == 1 and "line 1: field 'id': expected an integer" in errors[0]


def test_invalid_json_line(tmp_path, good_rows):
    errors = check_submission(write(tmp_path / "s.jsonl", [good_rows[0], '{"id": 12, "predicted_c'])).errors
    assert errors == [f"{tmp_path / 's.jsonl'}:line 2: invalid JSON (Unterminated string starting at)"]


def test_language_mismatch_is_a_warning(tmp_path, inputs, good_rows):
    chinese = {**good_rows[0], **{k: "来访者因工作压力出现焦虑和失眠。" for k in SUBMISSION_KEYS.values()}}
    report = check_submission(write(tmp_path / "s.jsonl", [chinese, *good_rows[1:]]), inputs)
    assert report.ok
    assert len(report.warnings) == 1 and "ids [11]" in report.warnings[0] and "--language en" in report.warnings[0]


def test_language_is_that_of_the_whole_report_as_in_the_prompt(tmp_path, inputs):
    """A Chinese report whose session notes are mostly English test names: the prompt answers it in
    Chinese, so a Chinese prediction is right and an English one is flagged."""
    from emotion_summary.data.records import write_records
    from emotion_summary.data.text import record_language

    record = read_records(inputs)[2]
    record = dataclasses.replace(record, consultation_process=("SCL-90, SAS and SDS were given; then CBT.",))
    inputs = write_records(tmp_path / "in.jsonl", [record])
    assert record_language(record) == "zh"
    zh = check_submission(write(tmp_path / "zh.jsonl", [submission_row(record.id, record.gold())]), inputs)
    assert zh.ok and not zh.warnings
    en_fields = {f: "The client was anxious before exams." for f in record.gold()}
    en = check_submission(write(tmp_path / "en.jsonl", [submission_row(record.id, en_fields)]), inputs)
    assert len(en.warnings) == 1 and "ids [13]" in en.warnings[0]


def test_read_predictions_parses_the_file_once(tmp_path, inputs, good_rows, monkeypatch):
    path = write(tmp_path / "s.jsonl", good_rows)
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real(self))
    preds = read_predictions(path)
    assert reads == [path]
    assert preds == {r.id: r.gold() for r in read_records(inputs)}
    assert list(check_submission(path).rows) == [11, 12, 13]


def run_cli(*args):
    return subprocess.run([sys.executable, "scripts/check_submission.py", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_exit_codes(tmp_path, inputs, good_rows):
    ok = run_cli(write(tmp_path / "ok.jsonl", good_rows), "--inputs", inputs)
    assert ok.returncode == 0 and "OK: ready to submit" in ok.stdout
    bad = run_cli(write(tmp_path / "bad.jsonl", good_rows[:1]), "--inputs", inputs)
    assert bad.returncode == 1 and "NOT READY" in bad.stdout and "[12, 13]" in bad.stdout
    broken_inputs = write(tmp_path / "inputs.jsonl", ['{"id": 1}'])
    err = run_cli(tmp_path / "ok.jsonl", "--inputs", broken_inputs)
    assert err.returncode == 2 and err.stderr.startswith("error: ") and "line 1" in err.stderr


@pytest.mark.parametrize("placeholder", [".", "...", "-", "1", "—", "？。"])
def test_a_value_without_letters_is_a_placeholder_warning(tmp_path, inputs, good_rows, placeholder):
    row = {**good_rows[0], "predicted_symptoms": placeholder}
    report = check_submission(write(tmp_path / "s.jsonl", [row, *good_rows[1:]]), inputs)
    assert report.ok and len(report.warnings) == 1
    assert "line 1: field 'predicted_symptoms'" in report.warnings[0] and "placeholder" in report.warnings[0]
    assert "but read the 1 warnings above" in report.render()


def test_every_field_a_placeholder_warns_per_field(tmp_path, good_rows):
    rows = [{**row, **{k: "." for k in SUBMISSION_KEYS.values()}} for row in good_rows]
    report = check_submission(write(tmp_path / "s.jsonl", rows))
    assert len(report.warnings) == 15


@pytest.mark.parametrize("with_inputs", [True, False])
def test_a_field_in_another_script_warns_per_field(tmp_path, inputs, good_rows, with_inputs):
    russian = {**good_rows[0], **{k: "Клиент страдает от тревоги и бессонницы." for k in SUBMISSION_KEYS.values()}}
    one_chinese = {**good_rows[1], "predicted_treatment_effect": "来访者的焦虑明显减轻，睡眠恢复正常。"}
    report = check_submission(write(tmp_path / "s.jsonl", [russian, one_chinese, good_rows[2]]),
                              inputs if with_inputs else None)
    assert report.ok
    assert sum("line 1: field" in w and "written in Cyrillic, its report in English" in w
               for w in report.warnings) == 5
    assert [w for w in report.warnings if "line 2" in w] == [
        f"{tmp_path / 's.jsonl'}:line 2: field 'predicted_treatment_effect': written in Chinese, its report in English"]
    assert len(report.warnings) == 6


def test_blank_or_zero_width_gold_is_not_gold(tmp_path):
    from emotion_summary.data.records import GOLD_FIELDS, RecordError, record_from_dict, write_records

    base = {"id": 1, "case_description": ["Case."], "consultation_process": ["Session."],
            "experience_and_reflection": "", **{f: f"The {f}." for f in GOLD_FIELDS}}
    assert record_from_dict(base).has_gold
    for blank in ("  ", "\u200b", "\ufeff \u200d"):
        rec = record_from_dict({**base, "treatment_effect": blank})
        assert not rec.has_gold
        path = write_records(tmp_path / "g.jsonl", [rec])
        with pytest.raises(RecordError, match="field 'treatment_effect': gold field is missing or empty"):
            read_records(path, require_gold=True)


def test_a_bad_prediction_file_is_named_once_in_the_error(tmp_path):
    from emotion_summary.data.records import RecordError

    missing = tmp_path / "nothere.jsonl"
    with pytest.raises(RecordError) as e:
        read_predictions(missing)
    assert str(e.value) == f"{missing}: no such file"
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(RecordError) as e:
        read_predictions(broken)
    assert str(e.value).startswith(f"{broken}: line 1: invalid JSON") and str(e.value).count(str(broken)) == 1


def test_a_directory_given_as_the_submission_is_called_a_directory(tmp_path):
    assert check_submission(tmp_path).errors == [f"{tmp_path}: is a directory"]
