"""The benchmark scripts in CI size: tiny model, one short step, a few generated tokens (about 45 s)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def run_script(name: str, *args: str) -> tuple[list[dict], str]:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return rows, proc.stdout


@pytest.fixture
def train_step_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # how Python runs the script: its folder first on sys.path
    import train_step

    return train_step


@pytest.fixture
def generate_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import generate

    return generate


@pytest.mark.slow
def test_train_step_ours_against_plain_at_1k_tokens(tmp_path):
    """At 1,024 tokens the plain step's full logits (1024 x 152,064 fp32, plus log-softmax and their
    gradients) already dominate: ours must peak lower. Both compute the same loss."""
    out = tmp_path / "bench.jsonl"
    out.write_text('{"earlier": "row"}\n')
    rows, stdout = run_script("train_step.py", "--arch", "tiny", "--seq_lens", "1024", "--batch_size", "1",
                              "--steps", "1", "--out", str(out))
    assert [r["variant"] for r in rows] == ["ours", "plain"]
    for r in rows:
        assert r["bench"] == "train_step" and r["status"] == "ok" and r["error"] is None
        assert r["seq_len"] == 1024 and r["batch_size"] == 1 and r["steps"] == 1
        assert r["tokens_per_s"] > 0 and r["step_s"] > 0 and r["loss"] > 0
        assert r["peak_rss_bytes"] >= r["step_peak_rss_bytes"] > r["rss_after_load_bytes"] > 0
        assert r["step_extra_bytes"] > 0 and r["fits"] is None
        assert r["versions"]["torch"] and r["cpu"] and r["cpu_cores"] and r["command"].endswith("--out " + str(out))
        assert r["trainable_params"] > 0 and r["attn_implementation"]
    ours, plain = rows
    assert plain["levers"] is None and plain["optimizer"] == "AdamW"  # bench/plain.py's textbook recipe
    assert ours["levers"]["mlp_tile_tokens"] == 0 and ours["levers"]["liger_kernels"] == "auto"  # cpu-smoke's
    assert ours["loss_first"] == pytest.approx(plain["loss_first"], rel=1e-4)  # LoRA B = 0: the base model's
    assert ours["loss"] == pytest.approx(plain["loss"], rel=1e-3)  # and the same update after it
    assert ours["step_peak_rss_bytes"] < plain["step_peak_rss_bytes"]
    assert 2 * ours["step_extra_bytes"] < plain["step_extra_bytes"]
    assert "| ours | cpu-smoke | 1024 |" in stdout and "plain/ours peak" in stdout
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": "row"}  # appended, never overwritten
    assert [json.loads(line) for line in lines[1:]] == rows


@pytest.mark.slow
def test_generate_batched_against_single_at_full_length(tmp_path):
    rows, stdout = run_script("generate.py", "--n_records", "3", "--batch_size", "2", "--max_new_tokens", "4",
                              "--out", str(tmp_path / "gen.jsonl"))
    assert [r["mode"] for r in rows] == ["batched", "single"]
    batched, single = rows
    assert (batched["calls"], single["calls"]) == (2, 3)
    for r in rows:
        assert r["bench"] == "generate" and r["new_tokens"] == 3 * 4 and r["all_at_max"]
        assert r["tokens_per_s"] > 0 and r["seconds"] > 0 and r["prompt_tokens_mean"] > 100
        # greedy in fp32: left padding with its attention mask changes no token
        assert r["batched_over_single"] > 0 and r["identical_outputs"] == 3
    # the 3 sample reports differ in length: the batch of 2 pads its shorter prompt, a single call never
    assert single["pad_tokens"] == 0 and batched["pad_tokens"] > 0
    assert "batched/single tokens/s" in stdout
    assert len((tmp_path / "gen.jsonl").read_text().splitlines()) == 2


def test_find_max_search_doubles_from_its_start_then_bisects():
    """train_step's --find_max search (gpusim.planner.longest_fitting from --find_max_start)."""
    from emotion_summary.gpusim.planner import longest_fitting

    tried = []

    def fits_under(limit):
        def fits(n):
            tried.append(n)
            return n <= limit
        return fits

    assert longest_fitting(fits_under(20000), 1024, 131072, 1024, start=4096) == 19456
    assert tried[:4] == [4096, 8192, 16384, 32768] and len(tried) <= 9
    assert longest_fitting(fits_under(10**9), 1024, 65536, 1024, start=4096) == 65536
    assert longest_fitting(fits_under(3000), 1024, 65536, 1024, start=4096) == 2048
    assert longest_fitting(fits_under(100), 1024, 65536, 1024, start=4096) == 0


def test_report_marks_fits_and_find_max(train_step_module):
    gib = 10**9
    rows = [{"variant": v, "preset": "8gb", "seq_len": 8192, "batch_size": 1, "status": s, "fits": f,
             "peak_reserved_bytes": r, "fits_bytes": r + gib // 2, "step_extra_bytes": r // 2,
             "tokens_per_s": t, "loss": 1.0 if s == "ok" else None, "vram_gb": 8}
            for v, s, f, r, t in [("ours", "ok", True, 6 * gib, 900.0), ("plain", "oom", False, 8 * gib, None)]]
    text = train_step_module.report(rows, find_max=False)
    assert "| ours | 8gb | 8192 | 1 | ok | yes | 6.50 |" in text
    assert "| plain | 8gb | 8192 | 1 | oom | no | 8.50 |" in text
    summary = {**rows[0], "max_seq_len_fits": 12288, "never_failed": False}
    text = train_step_module.report([{**rows[0], "probe": True}, summary], find_max=True)
    assert "longest fitting length 12288" in text and text.count("| ours |") == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="these options are refused on CPU only")
def test_gpu_only_options_are_refused_on_cpu(train_step_module):
    from emotion_summary.core.errors import UserError

    with pytest.raises(UserError, match="needs a CUDA GPU"):
        train_step_module.train_step(arch="qwen2-7b")
    with pytest.raises(UserError, match="need a CUDA GPU"):
        train_step_module.train_step(arch="tiny", vram_gb=8)
    with pytest.raises(UserError, match="--variants"):
        train_step_module.train_step(arch="tiny", variants="ours,fast")


def test_list_options_are_checked_before_anything_is_built(train_step_module, generate_module):
    from emotion_summary.core.errors import UserError

    for bad in ("0", "512,-1", "512,x", ""):
        with pytest.raises(UserError, match="--seq_lens"):
            train_step_module.train_step(arch="tiny", seq_lens=bad)
    with pytest.raises(UserError, match="--modes"):
        generate_module.generate(modes="batched,fast")


def _model_dir(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (path / name).write_text(tag)
    return path


def test_publish_dir_keeps_the_winner_and_replaces_an_incomplete_directory(tmp_path):
    from emotion_summary.modeling.architectures import is_complete_model_dir
    from emotion_summary.core.atomic_io import publish_dir

    out = tmp_path / "model"
    mine = _model_dir(tmp_path / "model.tmp-1", "mine")
    assert publish_dir(mine, out, is_complete_model_dir) == out  # nothing there yet: renamed
    assert (out / "config.json").read_text() == "mine" and not mine.exists()

    late = _model_dir(tmp_path / "model.tmp-2", "late")  # another run published first: this one is dropped
    assert publish_dir(late, out, is_complete_model_dir) == out
    assert (out / "config.json").read_text() == "mine" and not late.exists()

    (out / "model.safetensors").unlink()  # a killed build of older code: never returned, replaced
    assert not is_complete_model_dir(out)
    again = _model_dir(tmp_path / "model.tmp-3", "again")
    publish_dir(again, out, is_complete_model_dir)
    assert (out / "config.json").read_text() == "again" and is_complete_model_dir(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_is_complete_model_dir_needs_every_shard(tmp_path):
    from emotion_summary.modeling.architectures import is_complete_model_dir

    d = _model_dir(tmp_path / "m", "x")
    (d / "model.safetensors").unlink()
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    (d / shards["a"]).write_text("x")
    assert not is_complete_model_dir(d)
    (d / shards["b"]).write_text("x")
    assert is_complete_model_dir(d)


def test_build_random_qwen2_rebuilds_an_incomplete_directory(tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from emotion_summary.modeling.architectures import build_random_qwen2, is_complete_model_dir, random_qwen2_dir

    assert random_qwen2_dir("qwen2-7b", dtype="bf16").name == "qwen2-7b-bf16-random"
    assert random_qwen2_dir("tiny", 1, "bf16", num_hidden_layers=1, hidden_size=32).name == \
        "tiny-hidden_size32-num_hidden_layers1-bf16-seed1-random"
    out = tmp_path / "small"
    out.mkdir()
    (out / "config.json").write_text("{}")  # what a killed non-atomic build could leave
    shape = dict(hidden_size=32, intermediate_size=88, num_hidden_layers=1)
    assert build_random_qwen2("tiny", out, dtype="bf16", **shape) == out
    assert is_complete_model_dir(out) and sorted(p.name for p in tmp_path.iterdir()) == ["small"]
    config = AutoConfig.from_pretrained(out)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 1, 152064)
    weights = load_file(str(out / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert weights["model.norm.weight"].eq(1).all() and 0.015 < weights["lm_head.weight"].float().std() < 0.025
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert build_random_qwen2("tiny", out, dtype="bf16", **shape) == out  # complete: returned as is
    assert (out / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_half_written_adapter_cache_is_rebuilt(generate_module, monkeypatch, tmp_path):
    """save_pretrained writes adapter_config.json first: a killed build must not count as built."""
    import emotion_summary.modeling.architectures as architectures

    monkeypatch.setattr(architectures, "cache_root", lambda: tmp_path)
    broken = tmp_path / "tiny-untrained-adapter"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    path = generate_module.untrained_adapter("tiny")
    assert path == broken and (path / "train_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".stale-" in p.name]
