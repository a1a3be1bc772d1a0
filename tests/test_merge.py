"""merge_adapter on a tiny random Qwen2 (CPU): the merged model computes what base + adapter computes,
carries the run's fingerprints even from a checkpoint, and its config.json reads the same under
transformers 5.x and under readers of the 4.x layout (top-level rope_theta)."""

import json
from pathlib import Path

import pytest
import torch

from emotion_summary.training.config import resolve_config
from emotion_summary.core.errors import UserError
from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
from emotion_summary.modeling.merge import merge_adapter, write_portable_config

pytestmark = pytest.mark.slow

QWEN2_ROPE_THETA = 1_000_000.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the trainer leaves it: fingerprints at the top, the adapter in a checkpoint."""
    from emotion_summary.data.folds import save_fingerprints
    from emotion_summary.data.records import read_records
    from emotion_summary.data.sample_data import SMOKE_DATA

    run = tmp_path_factory.mktemp("run")
    trained = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke", lora_dropout=0.0))
    with torch.no_grad():  # give the adapter a visible effect (B starts at zero)
        for name, p in trained.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    trained.save(run / "checkpoints" / "step-3")
    save_fingerprints(run, read_records(SMOKE_DATA[0]))
    return run


@pytest.fixture(scope="module")
def merged(run_dir, tmp_path_factory):
    return tmp_path_factory.mktemp("out") / "merged"


@pytest.fixture(scope="module")
def merged_dir(run_dir, merged):
    return merge_adapter(str(run_dir / "checkpoints" / "step-3"), str(merged))


def test_merged_model_computes_what_the_16bit_base_plus_adapter_computes(run_dir, merged_dir):
    from peft import PeftModel

    from emotion_summary.modeling.loading import load_base_model

    ids = torch.tensor([[151644, 872, 198, 108386, 151645]])
    base16, _ = load_base_model("tiny", quantization="none", dtype_name="fp32")  # the run's (cpu-smoke) dtype
    reference = PeftModel.from_pretrained(base16, str(run_dir / "checkpoints" / "step-3")).eval()
    model = Qwen2EmotionSummaryModel.load(merged_dir)
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        got = model.model(input_ids=ids).logits
        plain = load_base_model("tiny", quantization="none", dtype_name="fp32")[0](input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter did change the model


def test_merging_a_checkpoint_keeps_the_runs_fingerprints_for_the_leakage_guard(run_dir, merged_dir):
    from emotion_summary.data.folds import FINGERPRINTS_FILE, guard_leakage
    from emotion_summary.data.records import read_records
    from emotion_summary.data.sample_data import SMOKE_DATA

    assert (Path(merged_dir) / FINGERPRINTS_FILE).read_bytes() == (run_dir / FINGERPRINTS_FILE).read_bytes()
    with pytest.raises(UserError, match="LEAKAGE"):
        guard_leakage(read_records(SMOKE_DATA[0]), merged_dir)


def test_merged_config_has_rope_theta_where_transformers_4_and_5_read_it(merged_dir):
    from transformers import AutoConfig

    raw = json.loads((Path(merged_dir) / "config.json").read_text())
    assert raw["rope_theta"] == QWEN2_ROPE_THETA  # a 4.x-layout reader (vLLM/LMDeploy on transformers 4.x)
    assert raw["torch_dtype"] == raw["dtype"]
    assert "rope_scaling" not in raw  # default RoPE: no scaling to declare
    assert AutoConfig.from_pretrained(merged_dir).rope_parameters["rope_theta"] == QWEN2_ROPE_THETA


def test_yarn_scaling_is_written_in_both_layouts(tmp_path):
    from transformers import AutoConfig, Qwen2Config

    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    Qwen2Config(hidden_size=64, intermediate_size=176, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, rope_theta=QWEN2_ROPE_THETA, rope_scaling=yarn).save_pretrained(tmp_path)
    assert "rope_theta" not in json.loads((tmp_path / "config.json").read_text())  # transformers 5.x layout
    config = write_portable_config(tmp_path)
    assert config["rope_theta"] == QWEN2_ROPE_THETA
    assert config["rope_scaling"]["type"] == "yarn" and config["rope_scaling"]["factor"] == 4.0
    assert config["rope_scaling"]["original_max_position_embeddings"] == 32768
    reread = AutoConfig.from_pretrained(tmp_path).rope_parameters
    assert (reread["rope_type"], reread["factor"], reread["rope_theta"]) == ("yarn", 4.0, QWEN2_ROPE_THETA)


def test_merge_refuses_its_input_as_output_and_a_non_empty_out_dir_before_loading(run_dir, tmp_path, monkeypatch):
    from emotion_summary.modeling import merge as model

    monkeypatch.setattr(model, "merged_model", lambda *a: pytest.fail("loaded a model"))
    adapter = run_dir / "checkpoints" / "step-3"
    with pytest.raises(UserError, match="is the input --adapter_dir"):
        merge_adapter(str(adapter), str(adapter / "."))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        merge_adapter(str(adapter), str(tmp_path / "full"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        merge_adapter(str(adapter), str(tmp_path / "file"))
    assert (adapter / "adapter_model.safetensors").is_file()
