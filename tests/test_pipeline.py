"""The main job (`bash start_training_qwen2.sh` -> scripts/pipeline.py) on CPU: cpu-smoke end to end."""

import json

import pytest

from emotion_summary.core.errors import UserError
from emotion_summary.pipeline import pipeline
from emotion_summary.predicting.submission import check_submission

pytestmark = pytest.mark.slow


def test_smoke_pipeline_leaves_adapter_submission_and_scores_then_reuses_the_run(tmp_path, capsys):
    run, subs = tmp_path / "model", tmp_path / "submissions"
    out = pipeline(preset="cpu-smoke", output_dir=str(run), submission_dir=str(subs), max_steps=2)
    for name in ("adapter_model.safetensors", "train_config.json", "prompt.json", "loss.png", "COMPLETE"):
        assert (run / name).is_file(), name
    heldout = subs / "heldout_fold.jsonl"
    assert check_submission(out, heldout).ok
    scores = json.loads((subs / "scores" / "submissions.json").read_text())  # named after the run folder
    assert scores["n_reports"] == sum(1 for _ in heldout.open())

    capsys.readouterr()
    pipeline(preset="cpu-smoke", output_dir=str(run), submission_dir=str(subs), max_steps=2)
    assert "reusing the finished run" in capsys.readouterr().out
    with pytest.raises(UserError, match="another config.*lora_r"):
        pipeline(preset="cpu-smoke", output_dir=str(run), submission_dir=str(subs), max_steps=2, lora_r=4)


def test_smoke_preset_on_many_reports_uses_the_first_few_and_says_so_once(tmp_path, capsys):
    """cpu-smoke on a user's file of 40 reports: every one read and checked once, the first 24 used."""
    from dataclasses import replace

    from emotion_summary.data.records import read_records, write_records
    from emotion_summary.data.sample_data import SAMPLE_EN

    samples = read_records(SAMPLE_EN)
    many = write_records(tmp_path / "train.jsonl",
                         [replace(samples[i % len(samples)], id=i) for i in range(40)])
    pipeline(preset="cpu-smoke", train_data=str(many), output_dir=str(tmp_path / "model"),
             submission_dir=str(tmp_path / "subs"), max_steps=1, max_new_tokens=8,
             allow_leakage=True)  # the 40 are copies of 6 reports
    said = [line for line in capsys.readouterr().out.splitlines() if "training records" in line]
    assert said == ["max_records=24 (preset cpu-smoke): using the first 24 of the 40 training records, all 40 "
                    "read and checked; --max_records 0 uses them all"]
    assert sum(1 for _ in (tmp_path / "subs" / "heldout_fold.jsonl").open()) < 24 // 2
