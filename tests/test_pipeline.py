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
