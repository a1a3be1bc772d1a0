"""The GPU simulator: allocator replay and storage tracker on hand-made cases with figures derived by
hand, the weights of a 2-layer Qwen2-7B-width NF4 model byte for byte, bad planner input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_summary.gpusim.allocator import (CachingAllocator, OutOfMemory, peak_allocated, replay,
                                              round_size, segment_size, smallest_pool)

MiB = 1024**2
SRC = Path(__file__).resolve().parents[1] / "src"
needs_compiler = pytest.mark.skipif(
    not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")),
    reason="no C++ compiler to build the fake-CUDA library (apt-get install g++)")


# ---- allocator (pure Python) ---------------------------------------------------------------------
def test_rounding_and_segment_sizes():
    assert round_size(1) == 512 and round_size(512) == 512 and round_size(513) == 1024
    assert segment_size(1 * MiB) == 2 * MiB  # small pool
    assert segment_size(1 * MiB + 512) == 20 * MiB  # large, under 10 MiB
    assert segment_size(12 * MiB + 1) == 14 * MiB  # own segment, rounded to 2 MiB


def test_replay_best_fit_split_and_smallest_pool():
    # 100 B -> a 2 MiB small segment; 3 MiB -> a 20 MiB segment split 3 + 17; 12 MiB fits the 17 MiB
    # rest (best fit), split 12 + 5; freeing the 3 MiB block leaves it between two used blocks;
    # 15 MiB fits no free block (3, 5) -> a new 16 MiB segment: 2 + 20 + 16 = 38 MiB reserved.
    log = [(1, 100), (2, 3 * MiB), (3, 12 * MiB), (2, -1), (4, 15 * MiB), (5, 5 * MiB)]
    assert replay(log).peak_reserved == 38 * MiB
    assert peak_allocated(log) == 512 + 12 * MiB + 15 * MiB + 5 * MiB
    assert smallest_pool(log) == 38 * MiB  # nothing is wholly free to release before the 16 MiB segment
    with pytest.raises(OutOfMemory):
        replay(log, 36 * MiB)


def test_free_neighbours_merge_and_release_on_pressure():
    a = CachingAllocator(limit=24 * MiB)
    a.malloc(1, 4 * MiB)   # 20 MiB segment: 4 used + 16 free
    a.malloc(2, 4 * MiB)   # from the 16 free: 4 + 12 free
    a.free(1)
    a.free(2)              # all three pieces merge back into one 20 MiB block
    a.malloc(3, 20 * MiB)  # served by that block: no new segment
    assert a.reserved == 20 * MiB
    a.free(3)
    a.malloc(4, 22 * MiB)  # needs a new 22 MiB segment: the free 20 MiB one is released first
    assert a.reserved == 22 * MiB


# ---- tracker and model build on fake CUDA (a worker process with the fake-CUDA library) ------------
def run_simulated(code: str, card: str = "rtx3060") -> dict:
    """Run `code` on a simulated card in a fresh process; it leaves its answer in `out`."""
    prog = ("from emotion_summary.gpusim import native\nnative.preload()\n"
            "import json, torch\nfrom emotion_summary.gpusim.runtime import simulated_gpu\n"
            "from emotion_summary.gpusim.cards import CARDS\nout = {}\n"
            f"with simulated_gpu(CARDS[{card!r}], 512 * 1024**2) as gpu:\n"
            + "".join(f"    {line}\n" for line in code.strip().splitlines())
            + "print('RESULT', json.dumps(out), flush=True)\nimport os\nos._exit(0)  # as the worker: no teardown\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@needs_compiler
def test_tracker_counts_storages_not_views_and_sees_frees():
    out = run_simulated("""
tr = gpu.tracker
a = torch.empty(1000, device="cuda")                       # 4,000 B -> 4,096
b = torch.empty(100, 100, dtype=torch.bfloat16, device="cuda")  # 20,000 B -> 20,480
v = b[:10]                                                  # a view: no new storage
del a
c = torch.ones(10, device="cuda") * 2                       # ones (512) and its product (512)
out.update(peak=tr.peak, now=tr.now, events=len(tr.events), cuda_available=torch.cuda.is_available(),
           total=torch.cuda.get_device_properties(0).total_memory, cap=list(torch.cuda.get_device_capability()),
           bf16=torch.cuda.is_bf16_supported())
""")
    assert out["peak"] == 4096 + 20480
    assert out["now"] == 20480 + 512  # the temporary `ones` is gone, its product lives
    assert out["events"] == 2 + 1 + 2 + 1  # allocs a, b; free a; ones, product; free ones
    assert out["cuda_available"] and out["total"] == 12 * 1024**3 and out["cap"] == [8, 6] and out["bf16"]


@needs_compiler
def test_cuda_queries_answer_for_a_t4():
    out = run_simulated("""
x = torch.empty(1024, 1024, device="cuda")  # 4 MiB
p = torch.cuda.get_device_properties(0)
out.update(name=p.name, total=p.total_memory, cap=list(torch.cuda.get_device_capability()),
           bf16=torch.cuda.is_bf16_supported(), bf16_native=torch.cuda.is_bf16_supported(including_emulation=False),
           free_total=list(torch.cuda.mem_get_info()), allocated=torch.cuda.memory_allocated())
""", card="t4")
    assert out["name"] == "Tesla T4" and out["total"] == 16 * 1024**3 and out["cap"] == [7, 5]
    assert out["bf16"] and not out["bf16_native"]  # torch counts emulation, as on a real T4
    assert out["allocated"] == 4 * 1024**2
    assert out["free_total"] == [16 * 1024**3 - 512 * 1024**2 - 4 * 1024**2, 16 * 1024**3]


@needs_compiler
def test_backward_runs_on_fake_cuda():
    out = run_simulated("""
w = torch.empty(64, 32, device="cuda", requires_grad=True)
x = torch.empty(8, 64, device="cuda")
(x @ w).relu().sum().backward()
out.update(grad=list(w.grad.shape), device=str(w.grad.device))
""")
    assert out == {"grad": [64, 32], "device": "cuda:0"}


def nf4_linear_bytes(n: int, k: int) -> int:
    """One double-quantised NF4 weight as bitsandbytes stores it, each tensor rounded to 512 B:
    packed 4-bit data, uint8 absmax per 64 weights, fp32 absmax per 256 of those, fp32 offset,
    the 16-entry fp32 NF4 code."""
    blocks = math.ceil(n * k / 64)
    return (round_size(n * k // 2) + round_size(blocks) + round_size(4 * math.ceil(blocks / 256))
            + round_size(4) + round_size(16 * 4))


def two_layer_qwen2_weights() -> int:
    h, f, kv, vocab = 3584, 18944, 512, 152064
    layer = (nf4_linear_bytes(h, h) * 2 + nf4_linear_bytes(kv, h) * 2 + nf4_linear_bytes(f, h) * 2
             + nf4_linear_bytes(h, f)
             + round_size(2 * h) + 2 * round_size(2 * kv)  # q, k, v biases in bf16
             + 2 * round_size(2 * h))  # the two RMSNorm weights
    return (2 * layer + 2 * round_size(2 * vocab * h)  # embedding and LM head, bf16
            + round_size(2 * h) + 2 * round_size(4 * 64)  # final norm; rotary inv_freq and its original copy (fp32)
            + round_size(4 * 256))  # bitsandbytes' dynamic map, shared by all layers


def two_layer_lora_bytes(r: int = 16, itemsize: int = 2) -> int:
    """LoRA A and B of both layers; bf16 since issue 16 (adapters in the compute dtype)."""
    h, f, kv = 3584, 18944, 512
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)]  # (out, in)
    return 2 * sum(round_size(itemsize * r * k) + round_size(itemsize * n * r) for n, k in shapes)


@needs_compiler
def test_two_layer_nf4_weights_byte_for_byte():
    from emotion_summary.gpusim.api import resolve_card, run_jobs, job

    result = run_jobs([job("train", "12gb", [1024], resolve_card(preset="12gb"), layers=2)])[0]
    assert "error" not in result, result
    assert round(result["weights_gb"] * 1e9) == two_layer_qwen2_weights()
    assert round(result["lora_gb"] * 1e9) == two_layer_lora_bytes()
    assert result["lora_params"] == 2 * sum(16 * (n + k) for n, k in [(3584, 3584), (512, 3584), (512, 3584),
                                                                      (3584, 3584), (18944, 3584),
                                                                      (18944, 3584), (3584, 18944)])
    assert result["peak_allocated_gb"] > result["weights_gb"] + result["lora_gb"]
    assert result["min_pool_gb"] >= result["peak_allocated_gb"]
    assert result["attn_implementation"] == "sdpa" and result["compute_dtype"] == "bfloat16"
    assert result["adapter_dtype"] == "bfloat16"


def run_plan_memory(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    script = Path(__file__).resolve().parents[1] / "scripts" / "plan_memory.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600)


# ---- planner bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--preset", "99gb"], "unknown preset '99gb'"),
    (["--arch", "gpt2"], "unknown arch 'gpt2'"),
    (["--seq_len", "40000"], "past qwen2-7b's position limit of 32,768"),
    (["--seq_len", "200000", "--yarn", "true"], "position limit of 131,072"),
    (["--card", "rtx9999"], "unknown card 'rtx9999'"),
    (["--batch_size", "0"], "--batch_size"),
])
def test_plan_memory_bad_input_is_one_line_exit_2(args, message):
    done = run_plan_memory(*args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@needs_compiler
def test_generation_prefill_and_kv_cache_on_two_layers():
    from emotion_summary.gpusim.api import resolve_card, simulate_generation

    short = simulate_generation("12gb", [1024], resolve_card(preset="12gb"), layers=2, max_new_tokens=8)
    long = simulate_generation("12gb", [4096], resolve_card(preset="12gb"), layers=2, max_new_tokens=8)
    assert long["peak_allocated_gb"] > short["peak_allocated_gb"] > short["breakdown_gb"]["weights"]
    # the KV cache of 2 layers: 2 (K, V) x 4 heads x 128 x 2 B per token and layer, 4 KiB a token
    assert long["breakdown_gb"]["generation"] >= 2 * 4096 * 4096 / 1e9
    assert long["decode_steps"] == 8  # the oracle lets generate run exactly max_new_tokens steps


LM_HEAD_BF16 = 152064 * 3584 * 2  # Qwen2-7B's LM head dequantised to bf16


@needs_compiler
def test_padded_batch_without_flash_attention_costs_its_longest_row():
    """24gb preset, 32,768 + 20,000 tokens, SDPA: the trainer runs the rows one by one, unmasked. The
    simulator once answered transformers' packed-sequence check ("all") as if the rows were padded
    and built a dense 32K x 32K mask (1.07 GB bool + 2.15 GB bf16 bias): 3 GB too much."""
    from emotion_summary.gpusim.api import resolve_card, run_jobs, job

    padded, single = run_jobs([job("train", "24gb", lens, resolve_card("rtx4090"), layers=2)
                               for lens in ([32768, 20000], [32768])])
    assert "error" not in padded and "error" not in single, (padded, single)
    assert padded["largest_new"]["gb"] < 32768**2 / 1e9, padded["largest_new"]  # no L x L mask
    assert padded["peak_allocated_gb"] == pytest.approx(single["peak_allocated_gb"], abs=0.01)
    assert padded["estimated_need_gb"] == pytest.approx(single["estimated_need_gb"], abs=0.05)


@needs_compiler
def test_4bit_lm_head_is_dequantised_and_sizes_the_pool_on_the_8gb_preset():
    """8gb preset (embedding in CPU RAM, LM head in NF4) at 8K: bitsandbytes dequantises the whole LM
    head (1.09 GB bf16) in the forward and again in the backward; between the two, the loss's fp32
    logits are carved from the freed block, so the second request needs a segment of its own: the
    smallest pool is ~1 GB above the peak of allocated bytes."""
    from emotion_summary.gpusim.api import resolve_card, simulate_training

    result = simulate_training("8gb", 8192, resolve_card("rtx4060"), layers=2)
    assert result["weights_gb"] < 0.6  # 2 NF4 layers + the NF4 LM head; the embedding is not on the GPU
    setter = result["pool_set_by"]
    assert setter["made_by"].startswith("dequantize_4bit") and setter["category"] == "kernel scratch"
    assert setter["gb"] * 1e9 == pytest.approx(LM_HEAD_BF16, rel=1e-3)
    assert 0.8 < result["min_pool_gb"] - result["peak_allocated_gb"] < LM_HEAD_BF16 / 1e9


@needs_compiler
def test_generation_runs_generate_ids_with_chunked_prefill_and_cpu_embedding():
    """Inference's 4 prompts of 7,680 tokens on the 8gb preset: one group (the free memory allows it),
    prefilled 4,096 tokens at a time (1,024 per row), embedding in CPU RAM."""
    from emotion_summary.gpusim.api import resolve_card, simulate_generation

    result = simulate_generation("8gb", [7680] * 4, resolve_card("rtx4060"), layers=2, max_new_tokens=4)
    assert result["generate_groups"] == [4] and result["decode_steps"] == 4
    assert result["breakdown_gb"]["weights"] < 0.6  # no 1.09 GB embedding on the GPU
    whole_prefill_mlp = 4 * 7680 * 18944 * 2  # one MLP activation of an unchunked prefill, bf16: 1.16 GB
    assert result["largest_new"]["gb"] * 1e9 < whole_prefill_mlp / 4, result["largest_new"]


def test_find_max_says_where_it_stops():
    from emotion_summary.gpusim.planner import describe_find_max

    found = {"fits": (32768, {}), "headroom": (30720, {}), "limit": 32768, "first": {"seq_lens": [1024]}}
    text = describe_find_max(found, "qwen2-7b", yarn=False)
    assert "longest length that fits: 32,768 tokens" in text
    assert "longest with the presets' 5% headroom: 30,720 tokens" in text
    assert "capped at 32,768 positions (qwen2-7b's limit); add --yarn true to search past it" in text
    found = {**found, "fits": (24576, {}), "headroom": (16384, {})}
    assert "capped" not in describe_find_max(found, "qwen2-7b", yarn=False)


@needs_compiler
def test_plan_memory_takes_the_presets_batch_and_says_so():
    """--preset 24gb trains at batch 2: the planner simulates 2 sequences unless told otherwise."""
    done = run_plan_memory("--preset", "24gb", "--seq_len", "4096", "--layers", "1", "--lora_dropout", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "from the preset 24gb: batch_size=2, offload_activations=True" in done.stdout
    assert "given: seq_len=4,096, lora_dropout=0.0" in done.stdout
    assert "4,096 + 4,096 tokens (batch 2)" in done.stdout


@pytest.mark.slow
@needs_compiler
def test_8gb_preset_fits_its_card_at_full_depth():
    from emotion_summary.gpusim.api import resolve_card, simulate_training

    result = simulate_training("8gb", 8192, resolve_card(preset="8gb"))
    assert result["fits"] and result["estimated_need_gb"] < 8 * 1024**3 / 1e9
    assert result["breakdown_gb"]["weights"] > 3.0


def test_no_compiler_is_one_clear_line(monkeypatch, tmp_path):
    from emotion_summary.gpusim import native

    monkeypatch.setattr(native, "library_path", lambda: tmp_path / "absent.so")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(native.NoCompilerError, match=r"apt-get install g\+\+"):
        native.ensure_built()


@pytest.mark.parametrize("threshold", [0, 1023, 1024, 5000, 20480, 32768, 40000])
def test_longest_fitting_bisects_to_the_step(threshold):
    from emotion_summary.gpusim.planner import longest_fitting

    probes = []

    def fits(n):
        probes.append(n)
        return n <= threshold

    best = longest_fitting(fits, 1024, 32768, 512)
    expected = 0 if threshold < 1024 else min(32768, threshold // 512 * 512)
    assert best == expected
    assert len(probes) <= 12


@needs_compiler
def test_plan_memory_card_too_small_for_the_weights_alone():
    done = run_plan_memory("--preset", "12gb", "--seq_len", "1024", "--layers", "2", "--vram_gb", "2")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "too small for the 12gb preset's weights alone" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_planner_and_api_import_no_heavy_library():
    code = ("import sys\nimport emotion_summary.gpusim, emotion_summary.gpusim.api, emotion_summary.gpusim.planner\n"
            "print(','.join(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""
