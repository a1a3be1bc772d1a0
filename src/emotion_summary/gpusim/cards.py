"""The GPUs the simulator answers CUDA queries for: total memory as the driver reports it, compute
capability, SM count; and what the step-time roofline needs (gpusim.step_time): dense 16-bit tensor
FLOPs with fp32 accumulation (bf16, or fp16 on cards without bf16), memory bandwidth, PCIe link.
Figures are the vendors' datasheet peaks. Light: no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GiB = 1024**3
CONTEXT_BYTES = 512 * 1024**2  # CUDA context + cuBLAS/cuDNN workspaces outside the caching allocator


@dataclass(frozen=True)
class Card:
    name: str
    total_bytes: int  # torch.cuda.get_device_properties(0).total_memory
    capability: tuple[int, int]
    sms: int
    tensor_tflops: float = 165.2  # dense bf16/fp16 tensor peak, fp32 accumulate
    memory_gbs: float = 1008.0  # device memory bandwidth, GB/s
    pcie_gen: int = 4
    pcie_lanes: int = 16

    @property
    def pcie_gbs(self) -> float:
        """One direction of the host link, GB/s (gen 3: 0.985 GB/s a lane, doubling each generation)."""
        return 0.985 * 2 ** (self.pcie_gen - 3) * self.pcie_lanes


CARDS: dict[str, Card] = {
    # GeForce cards run 16-bit tensor math with fp32 accumulation at half the fp16-accumulate rate.
    # RTX 4060: 24 SMs of the 4090's Ada (165.2 TF on 128 SMs) at 2.46 GHz; PCIe 4.0 x8.
    "rtx4060": Card("NVIDIA GeForce RTX 4060", 8 * GiB, (8, 9), 24, 30.2, 272.0, 4, 8),
    # RTX 3060: 28 Ampere SMs x 512 FLOP/clk (fp32 accumulate) x 1.78 GHz.
    "rtx3060": Card("NVIDIA GeForce RTX 3060", 12 * GiB, (8, 6), 28, 25.5, 360.0, 4, 16),
    "rtx4090": Card("NVIDIA GeForce RTX 4090", 24 * GiB, (8, 9), 128, 165.2, 1008.0, 4, 16),
    "t4": Card("Tesla T4", 16 * GiB, (7, 5), 40, 65.0, 320.0, 3, 16),  # fp16 (no bf16)
    "a100-40gb": Card("NVIDIA A100-SXM4-40GB", 40 * GiB, (8, 0), 108, 312.0, 1555.0, 4, 16),
    "a100-80gb": Card("NVIDIA A100-SXM4-80GB", 80 * GiB, (8, 0), 108, 312.0, 2039.0, 4, 16),
}
# The card each preset is written for (its smallest), and a card of any size for --vram_gb.
PRESET_CARDS = {"8gb": "rtx4060", "12gb": "rtx3060", "24gb": "rtx4090"}


def card_named(name: str) -> Card:
    from emotion_summary.core.errors import ConfigError

    key = name.lower().replace(" ", "").replace("-", "").replace("_", "")
    for k, card in CARDS.items():
        if key in (k.replace("-", ""), card.name.lower().replace(" ", "").replace("-", "")):
            return card
    raise ConfigError(f"--card: unknown card {name!r}; choose one of {', '.join(CARDS)}")


def card_of_size(vram_gb: float, like: Card | None = None) -> Card:
    """A card with `vram_gb` GiB of memory (8 -> 8.0 GiB, as the presets count cards), Ampere-class
    unless `like` gives the capability."""
    like = like or CARDS["rtx4090"]
    return dataclasses.replace(like, name=f"simulated {vram_gb:g} GB ({like.name})", total_bytes=int(vram_gb * GiB))
