"""Every file the project writes follows the umask, model weights included: safetensors creates its
files 0600, which a vLLM or LMDeploy server running as another user (Docker) cannot read."""

import os
import stat

import pytest

from emotion_summary.training.config import resolve_config

pytestmark = pytest.mark.slow


def modes(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_run_checkpoints_and_merged_model_follow_the_umask(tmp_path, umask_027):
    from emotion_summary.modeling.merge import merge_adapter
    from emotion_summary.training.trainer import Trainer
    from emotion_summary.training.train_data import load_data

    cfg = resolve_config("cpu-smoke", max_steps=1, output_dir=str(tmp_path / "r"))
    trainer = Trainer(cfg, *load_data(cfg))
    trainer.prepare()
    trainer.run()
    trainer.finish()
    run = modes(tmp_path / "r")
    assert "adapter_model.safetensors" in run and "checkpoints/step-1/adapter_model.safetensors" in run
    assert {name: mode for name, mode in run.items() if mode != umask_027} == {}
    merged = merge_adapter(str(tmp_path / "r"), str(tmp_path / "merged"))
    weights = modes(tmp_path / "merged")
    assert "model.safetensors" in weights
    assert {name: mode for name, mode in weights.items() if mode != umask_027} == {}
    assert merged == str(tmp_path / "merged")


def test_a_saved_adapter_follows_a_wider_umask(tmp_path):
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel

    old = os.umask(0o022)
    try:
        out = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke")).save(tmp_path / "adapter")
    finally:
        os.umask(old)
    assert modes(out)["adapter_model.safetensors"] == 0o644
    assert set(modes(out).values()) == {0o644}
