"""What a worker simulates: a JSON-able job description. Light: no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from emotion_summary.gpusim.cards import CONTEXT_BYTES


@dataclass
class Job:
    """What to simulate (JSON-able: the worker reads it from stdin)."""
    kind: str = "train"  # train | generate | run (`runner` on the simulated card)
    preset: str = "12gb"
    seq_lens: list[int] = field(default_factory=lambda: [32768])  # one per sequence of the batch
    card: dict = field(default_factory=dict)  # Card fields
    arch: str = "qwen2-7b"
    layers: int | None = None  # None: the architecture's depth
    overrides: dict = field(default_factory=dict)  # TrainConfig fields
    flash_attn: bool = False  # the flash-attn package installed (attn "auto" then picks FA2)
    answer_tokens: int = 200  # supervised positions at the end of each sequence
    max_new_tokens: int = 200  # generate: tokens produced after the prompt
    yarn: bool = False
    context_bytes: int = CONTEXT_BYTES
    runner: str | None = None  # kind "run": "module:function" called with the Simulation (gpusim.session)
    params: dict = field(default_factory=dict)  # kind "run": the runner's own options
