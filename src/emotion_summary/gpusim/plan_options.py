"""plan_memory's command line: every number range-checked and --json checked before any simulation.

The simulator (gpusim.planner) trusts its options; this layer refuses what cannot be simulated
(negative layers, a dropout of 5, -1 new tokens), an output it could not write after minutes of work,
and a micro-batch whose size alone answers the question: one bf16 hidden state of batch x length tokens
(tokens x hidden_size x 2 bytes) must be on the card at once, so a batch whose hidden state is larger
than the card's memory cannot fit, and simulating it (batch 10^6) would run for hours.
Light: imports nothing heavy (the simulator loads only when the checks pass).
"""

from __future__ import annotations

import functools
import inspect

from emotion_summary.core.cli import number_problem
from emotion_summary.core.errors import ConfigError
from emotion_summary.gpusim.planner import plan_memory
from emotion_summary.core.paths import output_file_problems

BF16_BYTES = 2
MIN_SEQ_LEN = 256  # the planner's shortest trainable length (find_max searches from above it)


def _card_bytes(values: dict) -> int | None:
    """The memory of the card the plan runs on (None when the card is unknown: the planner says so)."""
    from emotion_summary.gpusim.cards import CARDS, PRESET_CARDS

    if values.get("vram_gb") is not None:
        return int(values["vram_gb"] * 1024**3)
    name = values.get("card") or PRESET_CARDS.get(values.get("preset"), "rtx4090")
    card = CARDS.get(str(name).lower().replace(" ", ""))
    return card.total_bytes if card else None


def _hidden_size(arch: str) -> int | None:
    from emotion_summary.gpusim.archs import ARCHS

    return ARCHS[arch][1]["hidden_size"] if arch in ARCHS else None


def _preset_value(preset: str, key: str, unknown: int) -> int:
    """The preset's value of `key` (TrainConfig's default when it sets none; `unknown` for an unknown
    preset name, which the planner refuses)."""
    from emotion_summary.training.config import TrainConfig
    from emotion_summary.training.presets import PRESETS

    if preset not in PRESETS:
        return unknown
    return PRESETS[preset].get("config", {}).get(key, getattr(TrainConfig, key))


def too_big_problem(values: dict) -> str | None:
    """Why the micro-batch cannot fit whatever the levers do, or None."""
    preset = values["preset"]
    length = MIN_SEQ_LEN if values.get("find_max") else values.get("seq_len") or _preset_value(preset, "max_seq_len",
                                                                                               MIN_SEQ_LEN)
    batch = values.get("batch_size") or _preset_value(preset, "batch_size", 1)  # None: the preset's own
    lengths = values.get("seq_lens") or [max(length, MIN_SEQ_LEN)] * batch
    tokens = sum(lengths)
    hidden, card = _hidden_size(values["arch"]), _card_bytes(values)
    if hidden is None or card is None:
        return None
    need = tokens * hidden * BF16_BYTES
    if need <= card:
        return None
    return (f"--batch_size/--seq_len: {tokens:,} tokens in one micro-batch; one bf16 hidden state of them "
            f"({tokens:,} x {hidden:,} x 2 bytes = {need / 1e9:,.1f} GB) is more than the card's "
            f"{card / 1e9:,.1f} GB, so it cannot fit; use a smaller batch or length")


def plan_problems(values: dict) -> list[str]:
    """Every range problem of plan_memory's options, and an unwritable --json, at once."""
    checks = [("batch_size", int, 1, False), ("seq_len", int, 1, False), ("layers", int, 1, False),
              ("max_new_tokens", int, 1, False), ("vram_gb", float, 0, True), ("lora_dropout", float, 0, False)]
    problems = [p for name, kind, low, strict in checks if values.get(name) is not None
                and (p := number_problem(name, values[name], kind, low, strict))]
    if values.get("lora_dropout") is not None and not problems and values["lora_dropout"] >= 1:
        problems.append(f"--lora_dropout: expected a number in [0, 1), got {values['lora_dropout']!r}")
    problems += [f"--seq_lens: expected lengths >= 1, got {n!r}" for n in values.get("seq_lens") or []
                 if number_problem("seq_lens", n, int, 1)]
    if values.get("json"):
        problems += output_file_problems("--json", values["json"])
    if not problems:  # the sizes are sane numbers: is the micro-batch possible at all?
        problems += [p for p in [too_big_problem(values)] if p]
    return problems


@functools.wraps(plan_memory)
def checked_plan_memory(*args, **kwargs) -> None:
    bound = inspect.signature(plan_memory).bind(*args, **kwargs)
    bound.apply_defaults()
    problems = plan_problems(dict(bound.arguments))
    if problems:
        raise ConfigError("\n".join(problems))
    plan_memory(*args, **kwargs)
