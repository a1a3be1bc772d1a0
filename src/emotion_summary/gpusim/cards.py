"""The GPUs the simulator answers CUDA queries for: total memory as the driver reports it, compute
capability, SM count. Light: no torch."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
CONTEXT_BYTES = 512 * 1024**2  # CUDA context + cuBLAS/cuDNN workspaces outside the caching allocator


@dataclass(frozen=True)
class Card:
    name: str
    total_bytes: int  # torch.cuda.get_device_properties(0).total_memory
    capability: tuple[int, int]
    sms: int


CARDS: dict[str, Card] = {
    "rtx4060": Card("NVIDIA GeForce RTX 4060", 8 * GiB, (8, 9), 24),
    "rtx3060": Card("NVIDIA GeForce RTX 3060", 12 * GiB, (8, 6), 28),
    "rtx4090": Card("NVIDIA GeForce RTX 4090", 24 * GiB, (8, 9), 128),
    "t4": Card("Tesla T4", 16 * GiB, (7, 5), 40),
    "a100-40gb": Card("NVIDIA A100-SXM4-40GB", 40 * GiB, (8, 0), 108),
    "a100-80gb": Card("NVIDIA A100-SXM4-80GB", 80 * GiB, (8, 0), 108),
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
    return Card(f"simulated {vram_gb:g} GB ({like.name})", int(vram_gb * GiB), like.capability, like.sms)
