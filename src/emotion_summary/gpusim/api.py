"""The simulator's public functions: each runs the project's own code on a simulated card in a
fresh worker process (the fake-CUDA library must be loaded before torch) and returns plain dicts."""

from __future__ import annotations

from dataclasses import asdict

from emotion_summary.core.errors import ConfigError, UserError
from emotion_summary.gpusim.cards import CARDS, PRESET_CARDS, Card, card_named, card_of_size
from emotion_summary.gpusim.job import Job


class SimulationError(RuntimeError):
    """The simulated run itself failed (a bug in the simulator or in the code it runs)."""


def resolve_card(card: str | None = None, vram_gb: float | None = None, preset: str | None = None) -> Card:
    """--card NAME, else a card of --vram_gb GiB (capability of the preset's card), else the preset's card."""
    base = card_named(card) if card else CARDS[PRESET_CARDS.get(preset or "", "rtx4090")]
    if vram_gb is None:
        return base
    if vram_gb <= 0:
        raise ConfigError(f"--vram_gb: must be positive, got {vram_gb}")
    return card_of_size(vram_gb, base)


def job(kind: str = "train", preset: str = "12gb", seq_lens: list[int] | None = None, card: Card | None = None,
        arch: str = "qwen2-7b", layers: int | None = None, overrides: dict | None = None,
        flash_attn: bool = False, answer_tokens: int = 200, max_new_tokens: int = 200, yarn: bool = False,
        runner: str | None = None, params: dict | None = None) -> dict:
    """A job dict for run_jobs. kind "run": `runner` ("module:function", importable in the worker:
    see run_jobs' `paths`) is called with the session's Simulation and returns what it adds to the
    result; `params` are its own options."""
    if (kind == "run") != (runner is not None):
        raise ValueError("a runner goes with kind 'run', and kind 'run' needs one")
    card = card or resolve_card(preset=preset)
    spec = Job(kind=kind, preset=preset, seq_lens=list(seq_lens or [32768]), card=asdict(card), arch=arch,
               layers=layers, overrides=dict(overrides or {}), flash_attn=flash_attn,
               answer_tokens=answer_tokens, max_new_tokens=max_new_tokens, yarn=yarn, runner=runner,
               params=dict(params or {}))
    return asdict(spec)


def run_jobs(jobs: list[dict], timeout_s: int = 3600, paths=()) -> list[dict]:
    """Run job dicts (see `job`) in one worker process; a result per job ({'error', 'traceback'} on
    failure). `paths`: folders put on the worker's import path (where a runner's module lives)."""
    from emotion_summary.core.subprocess_jobs import WorkerDied, run_in_worker
    from emotion_summary.gpusim import native

    native.ensure_built()
    try:
        return run_in_worker("emotion_summary.gpusim.session:run_job", jobs, timeout_s, paths,
                             prepare="emotion_summary.gpusim.native:prepare_worker")
    except WorkerDied as e:
        raise SimulationError(f"the simulator {e}") from None


def _one(spec: dict) -> dict:
    result = run_jobs([spec])[0]
    if "error" in result:
        raise SimulationError(result["error"] + "\n" + result.get("traceback", ""))
    return result


def simulate_training(preset: str = "12gb", seq_lens: list[int] | int = 32768, card: Card | None = None,
                      arch: str = "qwen2-7b", layers: int | None = None, overrides: dict | None = None,
                      flash_attn: bool = False, answer_tokens: int = 200) -> dict:
    """Peak memory of the project's training step (for_training -> TrainingStep) for a
    batch of sequences of `seq_lens` tokens (several lengths: a right-padded batch)."""
    lens = [seq_lens] if isinstance(seq_lens, int) else list(seq_lens)
    return _one(job("train", preset, lens, card, arch, layers, overrides, flash_attn, answer_tokens))


def simulate_generation(preset: str = "12gb", prompt_lens: list[int] | int = 8192, card: Card | None = None,
                        arch: str = "qwen2-7b", layers: int | None = None, overrides: dict | None = None,
                        flash_attn: bool = False, max_new_tokens: int = 200) -> dict:
    """Peak memory of the project's generate call (prefill + KV cache, greedy) for left-padded
    prompts of `prompt_lens` tokens on the adapter model of `preset`."""
    lens = [prompt_lens] if isinstance(prompt_lens, int) else list(prompt_lens)
    return _one(job("generate", preset, lens, card, arch, layers, overrides, flash_attn,
                    max_new_tokens=max_new_tokens))


__all__ = ["SimulationError", "UserError", "resolve_card", "job", "run_jobs", "simulate_training",
           "simulate_generation"]
