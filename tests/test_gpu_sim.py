"""The presets and inference on the simulated GPU at full depth (fake CUDA tensors, real Qwen2-7B shape, no
weights): each a full-depth simulation of 1-7 minutes on 2 cores, so they run when asked
(ES_FULL_SIM=1 python -m pytest tests/test_gpu_sim.py) rather than in every CI run, like the benchmark
that records the same rows (bench/simulate.py). CI runs the 2-layer simulator tests and one
full-depth preset (tests/test_gpusim.py). Needs g++ (the fake-CUDA library); skipped without one."""

import os
import shutil

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("ES_FULL_SIM") != "1",
                                 reason="full-depth simulations of minutes each: run with ES_FULL_SIM=1"),
              pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                 reason="the GPU simulator needs a C++ compiler")]

GiB = 1024**3


def fits_with_headroom(result: dict) -> bool:
    from emotion_summary.gpusim.planner import PRESET_HEADROOM  # presets promise >= 5% headroom on their card

    return result["estimated_need_gb"] * 1e9 <= (1 - PRESET_HEADROOM) * result["vram_gib"] * GiB


def test_12gb_preset_trains_32k_on_a_12_gb_card():
    from emotion_summary.gpusim.api import resolve_card, simulate_training

    result = simulate_training("12gb", 32768, resolve_card("rtx3060"))
    assert result["compute_dtype"] == "bfloat16" and fits_with_headroom(result), result


def test_24gb_preset_trains_a_padded_batch_without_a_dense_mask():
    """32,768 + 20,000 tokens under SDPA: the rows go one at a time (no [2, 1, L, L] mask)."""
    from emotion_summary.gpusim.api import resolve_card, simulate_training

    result = simulate_training("24gb", [32768, 20000], resolve_card("rtx4090"))
    assert result["attn_implementation"] == "sdpa" and fits_with_headroom(result), result
    assert result["largest_new"]["gb"] < 32768**2 / 1e9, result["largest_new"]  # not even a bool L x L mask


def test_t4_trains_in_fp16_with_a_fused_attention_kernel():
    from emotion_summary.gpusim.api import resolve_card, simulate_training

    result = simulate_training("12gb", 32768, resolve_card("t4"))
    assert result["compute_dtype"] == "float16" and result["adapter_dtype"] == "float32"  # no loss scaler: fp32 LoRA
    assert result["attn_implementation"] == "sdpa_repeat_kv" and result["fits"], result


def test_default_generation_fits_an_8_gb_card():
    """inference's 4 records of ~7.7K prompt tokens: generate_ids groups them by free memory and
    prefills in chunks (a single 4 x 7.7K prefill needed ~11 GB)."""
    from emotion_summary.gpusim.api import resolve_card, simulate_generation

    result = simulate_generation("8gb", [7700] * 4, resolve_card("rtx4060"), max_new_tokens=64)
    assert result["fits"] and sum(result["generate_groups"]) == 4, result
