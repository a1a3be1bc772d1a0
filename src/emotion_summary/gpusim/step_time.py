"""Simulated step time: the work a simulated step counted (gpusim.work) through a roofline of the
card (gpusim.cards: peak tensor FLOPs, memory bandwidth, PCIe), calibrated on published tables
(bench/RESULTS.md, "Step time"). Light: no torch.

Per op: seconds = max(FLOPs / (peak x MATMUL_EFFICIENCY), bytes / (bandwidth x MEMORY_EFFICIENCY))
+ LAUNCH_S; a host <-> device copy: bytes / (PCIe x PCIE_EFFICIENCY) + LAUNCH_S, not overlapped with
compute (torch's save_on_cpu copies on the compute stream); host work: bytes / HOST_BANDWIDTH."""

from __future__ import annotations

from emotion_summary.gpusim.cards import Card

# Calibrated on Qwen's Q-LoRA / LoRA speed table (A100-80GB): see bench/RESULTS.md.
MATMUL_EFFICIENCY = 0.55  # of the dense tensor peak, what large bf16 GEMMs and flash attention reach
MEMORY_EFFICIENCY = 0.75  # of the memory bandwidth, what elementwise kernels and dequantisation reach
PCIE_EFFICIENCY = 0.80  # pinned host memory
LAUNCH_S = 8e-6  # per kernel: launch plus the Python/dispatch time eager PyTorch spends per op
HOST_BANDWIDTH = 10e9  # B/s of a CPU op on host memory (the CPU embedding, offload bookkeeping)
LEVERS = ("offload traffic", "recompute", "MLP tiles")


def op_seconds(kind: str, flops: int, device_bytes: int, other_bytes: int, card: Card) -> float:
    if kind == "pcie":
        return other_bytes / (card.pcie_gbs * 1e9 * PCIE_EFFICIENCY) + LAUNCH_S
    if kind == "host":
        return device_bytes / HOST_BANDWIDTH
    compute = flops / (card.tensor_tflops * 1e12 * MATMUL_EFFICIENCY)
    memory = device_bytes / (card.memory_gbs * 1e9 * MEMORY_EFFICIENCY)
    return max(compute, memory) + LAUNCH_S


def micro_and_optimizer_seconds(work: dict, card: Card) -> dict:
    """Seconds of one micro-batch (forward + backward, averaged over the simulated micro-batches)
    and of one optimizer step, with the micro-batch's seconds split by bucket and lever."""
    micro = work["micro_batches"]
    out = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "offload traffic": 0.0, "recompute": 0.0,
           "MLP tiles": 0.0, "compute-bound": 0.0, "memory-bound": 0.0, "launch": 0.0, "host": 0.0,
           "flops": 0.0, "device_bytes": 0.0, "pcie_bytes": 0.0}
    for kind, _op, phase, lever, flops, dev_bytes, other, n in work["rows"]:
        t = n * op_seconds(kind, flops, dev_bytes, other, card)
        scale = 1.0 if phase == "optimizer" else 1.0 / micro
        out[phase] += t * scale
        if phase == "optimizer":
            continue
        out["flops"] += n * flops * scale
        out["device_bytes"] += n * dev_bytes * scale
        if kind == "pcie":
            out["offload traffic"] += t * scale
            out["pcie_bytes"] += n * other * scale
        elif kind == "host":
            out["host"] += t * scale
        else:
            out["launch"] += n * LAUNCH_S * scale
            is_compute = flops / (card.tensor_tflops * 1e12 * MATMUL_EFFICIENCY) >= \
                dev_bytes / (card.memory_gbs * 1e9 * MEMORY_EFFICIENCY)
            out["compute-bound" if is_compute else "memory-bound"] += (t - n * LAUNCH_S) * scale
        if lever in LEVERS:
            out[lever] += t * scale
    out["micro_s"] = out["forward"] + out["backward"]
    return out


def step_time(result: dict, card: Card, grad_accum: int = 1) -> dict:
    """Simulated seconds of one optimizer step (`grad_accum` micro-batches of the simulated batch),
    tokens/s, and each lever's share of the step."""
    parts = micro_and_optimizer_seconds(result["work"], card)
    tokens = sum(result["seq_lens"])
    step = grad_accum * parts["micro_s"] + parts["optimizer"]
    shares = {lever: grad_accum * parts[lever] / step for lever in LEVERS}
    return {"card": card.name, "micro_batch_s": parts["micro_s"], "optimizer_s": parts["optimizer"],
            "grad_accum": grad_accum, "step_s": step, "tokens_per_s": grad_accum * tokens / step,
            "shares": shares, "forward_s": parts["forward"], "backward_s": parts["backward"],
            "tflops_per_micro": parts["flops"] / 1e12, "device_gb_per_micro": parts["device_bytes"] / 1e9,
            "pcie_gb_per_micro": parts["pcie_bytes"] / 1e9,
            "bound_s": {k: parts[k] for k in ("compute-bound", "memory-bound", "launch", "offload traffic", "host")}}


def epoch_seconds(lengths: list[int], micro_seconds, optimizer_s: float, grad_accum: int) -> float:
    """One epoch over examples of `lengths` tokens, batch 1: each example's micro-batch time
    (micro_seconds(n), e.g. a curve through simulated lengths) plus an optimizer step every
    `grad_accum` examples."""
    steps = -(-len(lengths) // grad_accum)
    return sum(micro_seconds(n) for n in lengths) + steps * optimizer_s


def preset_grad_accum(preset: str) -> int:
    from emotion_summary.training.config import TrainConfig
    from emotion_summary.training.presets import PRESETS

    default = TrainConfig.__dataclass_fields__["grad_accum"].default
    return PRESETS.get(preset, {}).get("config", {}).get("grad_accum", default)


def time_section(result: dict, card: Card) -> tuple[dict, str]:
    """plan_memory's time lines: the simulated step of `result` (a training simulation) on `card`."""
    timing = step_time(result, card, preset_grad_accum(result["preset"]))
    text = describe_time(timing)
    if result.get("layers"):
        text += f"\n  (only {result['layers']} layers simulated: the time is for that depth)"
    return timing, text


def describe_time(timing: dict) -> str:
    shares = ", ".join(f"{k} {v:.0%}" for k, v in timing["shares"].items() if v >= 0.005) or "none"
    return (f"  {'simulated time':<20} {timing['micro_batch_s']:6.2f} s per micro-batch, "
            f"{timing['step_s']:.1f} s per optimizer step of {timing['grad_accum']}, "
            f"{timing['tokens_per_s']:,.0f} tokens/s on {timing['card']} (roofline; levers: {shares})")
