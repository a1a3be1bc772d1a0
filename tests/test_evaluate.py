"""eval/evaluate.py: gold self-score, two files side by side, clear errors, outputs written atomically."""

import json
import subprocess
import sys

import pytest

from emotion_summary.core.errors import UserError
from emotion_summary.scoring.evaluate import evaluate, labels_for
from emotion_summary.predicting.extractive import extract_fields
from emotion_summary.data.records import RecordError, read_records
from emotion_summary.predicting.submission import write_submission


def submission_of(path, records, fields_fn):
    write_submission(path, {r.id: fields_fn(r) for r in records}, [r.id for r in records])
    return str(path)


def test_gold_against_itself_and_against_the_baseline(tmp_path, gold_file):
    records = read_records(gold_file)
    gold_sub = submission_of(tmp_path / "gold" / "Emotion_Summary_Result.jsonl", records, lambda r: r.gold())
    base_sub = submission_of(tmp_path / "base" / "Emotion_Summary_Result.jsonl", records, extract_fields)
    evaluate(pred=gold_sub, gold=str(gold_file), compare=base_sub, out_dir=str(tmp_path / "res"),
             bertscore=False)
    name = "gold_vs_base"  # runs are named after their folders
    results = json.loads((tmp_path / "res" / f"{name}.json").read_text())
    first, second = results["systems"]
    assert first["rouge"]["mean"] == pytest.approx({"rouge-1": 1.0, "rouge-2": 1.0, "rouge-l": 1.0})
    assert 0 < second["rouge"]["mean"]["rouge-1"] < 1
    assert set(first["rouge"]["per_id"]) == {"11", "12", "13"}
    table = (tmp_path / "res" / f"{name}.md").read_text()
    assert "| **mean** | 1.0000 |" in table and "Δ (2nd − 1st)" in table
    assert (tmp_path / "res" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "res").glob(".*.tmp"))


def test_missing_ids_are_listed(tmp_path, gold_file):
    records = read_records(gold_file)
    sub = submission_of(tmp_path / "s.jsonl", records[:1], lambda r: r.gold())
    with pytest.raises(UserError, match=r"no prediction for 2 of the 3 gold ids: \[12, 13\]"):
        evaluate(pred=sub, gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False)
    assert not (tmp_path / "res").exists()


def test_a_gold_file_without_gold_fields_is_a_clear_error(tmp_path, gold_file):
    records = read_records(gold_file)
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"id": r.id, **r.inputs()}) + "\n" for r in records))
    sub = submission_of(tmp_path / "s.jsonl", records, lambda r: r.gold())
    with pytest.raises(RecordError, match=r"inputs.jsonl:line 1: field 'causes': .*labelled ES file"):
        evaluate(pred=sub, gold=str(inputs), bertscore=False)


def test_offline_bertscore_still_reports_rouge(tmp_path, gold_file, monkeypatch, capsys):
    from emotion_summary.scoring import metrics
    monkeypatch.setattr(metrics, "_hub_cached", lambda repo: False)
    monkeypatch.setattr(metrics, "_hub_reachable", lambda timeout_s=3.0: False)
    records = read_records(gold_file)
    sub = submission_of(tmp_path / "s.jsonl", records, lambda r: r.gold())
    evaluate(pred=sub, gold=str(gold_file), out_dir=str(tmp_path), bertscore="true")
    results = json.loads((tmp_path / "s.json").read_text())
    assert results["systems"][0]["rouge"]["mean"]["rouge-1"] == pytest.approx(1.0)
    assert "bertscore" not in results["systems"][0]
    assert any("--bertscore_model" in n for n in results["notes"])
    assert "BERTScore skipped" in capsys.readouterr().err


def test_labels_stay_distinct():
    assert labels_for(["a/x.jsonl", "b/y.jsonl"]) == ["x", "y"]
    assert labels_for(["a/x.jsonl", "b/x.jsonl"]) == ["a/x", "b/x"]
    assert labels_for(["a/x.jsonl", "a/x.jsonl"]) == ["A:x", "B:x"]


def test_cli_error_is_one_line_and_nonzero(tmp_path, gold_file):
    proc = subprocess.run([sys.executable, "eval/evaluate.py", "--pred", str(tmp_path / "none.jsonl"),
                           "--gold", str(gold_file), "--bertscore", "false"],
                          capture_output=True, text=True, cwd=str(gold_file.parents[2]))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "none.jsonl" in proc.stderr


@pytest.mark.shared
def test_gold_examples_against_themselves_score_one(tmp_path, shared_data):
    gold = shared_data / "longemotion" / "Emotion_Summary_example.jsonl"
    records = read_records(gold)
    sub = submission_of(tmp_path / "gold_sub.jsonl", records, lambda r: r.gold())
    evaluate(pred=sub, gold=str(gold), out_dir=str(tmp_path), bertscore=False)
    rouge = json.loads((tmp_path / "gold_sub.json").read_text())["systems"][0]["rouge"]
    assert rouge["mean"] == pytest.approx({"rouge-1": 1.0, "rouge-2": 1.0, "rouge-l": 1.0})
    for field_scores in rouge["per_field"].values():
        assert field_scores == pytest.approx({"rouge-1": 1.0, "rouge-2": 1.0, "rouge-l": 1.0})


def test_evaluate_takes_no_max_tokens_each_judge_fixes_its_reply_length(capsys):
    from emotion_summary.commands import evaluate as evaluate_command

    with pytest.raises(SystemExit) as stop:
        evaluate_command(["--pred", "p.jsonl", "--gold", "g.jsonl", "--max_tokens", "50"])
    assert stop.value.code == 2 and "--max_tokens" in capsys.readouterr().err
