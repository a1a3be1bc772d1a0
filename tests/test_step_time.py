"""Simulated step time: the op counter (FLOPs, bytes, PCIe, which lever caused an op) and the roofline
that turns the counts into seconds per card."""

import pytest

from emotion_summary.gpusim.cards import CARDS, card_of_size
from emotion_summary.gpusim.step_time import op_seconds, step_time


def test_card_table_has_the_roofline_figures():
    assert CARDS["rtx4090"].pcie_gbs == pytest.approx(31.5, rel=0.01)  # PCIe 4.0 x16
    assert CARDS["rtx4060"].pcie_gbs == pytest.approx(CARDS["rtx4090"].pcie_gbs / 2)  # the 4060 has 8 lanes
    assert CARDS["t4"].pcie_gbs == pytest.approx(15.8, rel=0.01)  # PCIe 3.0 x16
    like = card_of_size(10, CARDS["rtx3060"])
    assert (like.tensor_tflops, like.memory_gbs, like.pcie_lanes) == (25.5, 360.0, 16)


def test_roofline_takes_the_slower_of_compute_and_memory():
    card = CARDS["a100-80gb"]
    big_matmul = op_seconds("matmul", 10**13, 10**8, 0, card)
    elementwise = op_seconds("memory", 0, 10**10, 0, card)
    assert big_matmul == pytest.approx(10**13 / (312e12 * 0.55), rel=0.01)
    assert elementwise == pytest.approx(10**10 / (2039e9 * 0.75), rel=0.01)
    slow_link = op_seconds("pcie", 0, 0, 10**9, CARDS["rtx4060"])
    assert slow_link == pytest.approx(2 * op_seconds("pcie", 0, 0, 10**9, CARDS["rtx4090"]), rel=0.01)


def _work(pcie_bytes: int) -> dict:
    rows = [["matmul", "mm", "forward", "", 10**13, 10**8, 0, 2],
            ["matmul", "mm", "backward", "recompute", 10**13, 10**8, 0, 2],
            ["matmul", "mm", "backward", "", 2 * 10**13, 10**8, 0, 2],
            ["memory", "add", "optimizer", "", 0, 10**8, 0, 1]]
    if pcie_bytes:
        rows += [["pcie", "copy_", "forward", "", 0, 0, pcie_bytes, 2],
                 ["pcie", "_to_copy", "backward", "", 0, 0, pcie_bytes, 2]]
    return {"seq_lens": [8192], "preset": "24gb", "work": {"rows": rows, "micro_batches": 2}}


def test_step_time_shares_and_offload_cost():
    card = CARDS["rtx4090"]
    with_offload, without = step_time(_work(10**9), card, 16), step_time(_work(0), card, 16)
    # two micro-batches were counted: one micro-batch is half the forward + backward work
    assert with_offload["micro_batch_s"] == pytest.approx(without["micro_batch_s"] + 2 * op_seconds(
        "pcie", 0, 0, 10**9, card), rel=1e-6)
    assert with_offload["step_s"] == pytest.approx(16 * with_offload["micro_batch_s"] + with_offload["optimizer_s"])
    assert with_offload["tokens_per_s"] == pytest.approx(16 * 8192 / with_offload["step_s"])
    assert without["shares"]["offload traffic"] == 0
    assert 0.1 < with_offload["shares"]["offload traffic"] < 0.2  # 2 GB at 25 GB/s beside 0.44 s of matmuls
    assert without["shares"]["recompute"] == pytest.approx(0.25, abs=0.01)  # 1 of 4 equal matmul units


def test_counter_counts_matmul_flops_and_skips_views():
    import torch

    from emotion_summary.gpusim.work import WorkCounter

    counter = WorkCounter()
    a, b = torch.empty(64, 32, device="meta"), torch.empty(32, 16, device="meta")
    aten = torch.ops.aten
    counter.count(aten.mm.default, (a, b), {}, torch.empty(64, 16, device="meta"), "saved activations")
    counter.count(aten.t.default, (b,), {}, torch.empty(16, 32, device="meta"), "saved activations")
    counter.count(aten.add.Tensor, (a, a), {}, torch.empty(64, 32, device="meta"), "recomputed layer")
    rows = {r[1]: r for r in counter.table()}
    assert set(rows) == {"mm", "add"}
    assert rows["mm"][:5] == ["matmul", "mm", "forward", "", 2 * 64 * 32 * 16]
    assert rows["mm"][5] == (64 * 32 + 32 * 16 + 64 * 16) * 4
    assert rows["add"][:5] == ["memory", "add", "backward", "", 0]


def test_counter_tells_recomputed_layers_from_recomputed_mlp_tiles():
    """Non-reentrant checkpointing recomputes in the backward; a checkpointed MLP forward (a tile of
    modeling.levers.tile_mlp) is tagged "MLP tiles", any other checkpointed function "recompute"."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.checkpoint import checkpoint

    from emotion_summary.gpusim.runtime import patch_all
    from emotion_summary.gpusim.work import WorkCounter, recompute_patches

    class TinyMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.tanh(self.up(x))

    counter = WorkCounter()

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            counter.count(func, args, kwargs or {}, out, self.category)
            return out

    mlp = TinyMLP()
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    mode = Counting()
    with patch_all(recompute_patches(counter)), mode:
        mode.category = "saved activations"
        y = checkpoint(mlp.forward, x, use_reentrant=False).sum() + checkpoint(
            lambda t: torch.tanh(layer(t)), x, use_reentrant=False).sum()
        mode.category = "recomputed layer"
        y.backward()
    levers = {(r[2], r[3]) for r in counter.table()}
    assert ("backward", "MLP tiles") in levers and ("backward", "recompute") in levers
    assert not any(lever for phase, lever in levers if phase == "forward")


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="the fake-CUDA library needs g++")
def test_simulated_step_counts_each_lever_on_one_layer():
    """The project's step on the simulator (one layer, 24gb levers: offloaded checkpoint inputs,
    MLP in tiles of 1,024 tokens): each lever shows up in the step time, and the PCIe bytes are the
    offloaded layer input, out and back, for each of the two micro-batches."""
    from emotion_summary.gpusim.api import resolve_card, simulate_training
    from emotion_summary.gpusim.step_time import time_section

    card = resolve_card(preset="24gb")
    result = simulate_training("24gb", 2048, card, layers=1, overrides={"mlp_tile_tokens": 1024})
    timing, text = time_section(result, card)
    assert all(timing["shares"][k] > 0 for k in ("offload traffic", "recompute", "MLP tiles"))
    layer_input = 2048 * 3584 * 2  # bf16 hidden states of one sequence
    assert timing["pcie_gb_per_micro"] * 1e9 >= 2 * layer_input
    assert "tokens/s" in text and "only 1 layers simulated" in text


def test_an_addmm_with_out_dtype_counts_as_the_plain_addmm():
    """addmm.dtype (TRL's chunked log-probs: torch.addmm(acc, a, b, out_dtype=float32)) passes out_dtype
    where torch's FLOP formula takes the output shape; it counts as the plain addmm."""
    import torch

    from emotion_summary.gpusim.work import WorkCounter

    counter = WorkCounter()
    acc, a, b = (torch.empty(*shape, device="meta") for shape in ((64, 16), (64, 32), (32, 16)))
    counter.count(torch.ops.aten.addmm.dtype, (acc, a, b, torch.float32), {}, acc, "saved activations")
    (row,) = counter.table()
    assert row[:2] == ["matmul", "addmm"] and row[4] == 2 * 64 * 32 * 16
