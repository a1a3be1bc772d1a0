"""plan_memory: will a preset train at a length on a card? The simulated peak, its breakdown and
the verdict; `find_max` bisects the longest length that fits. Light until a simulation runs."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

from emotion_summary.core.errors import ConfigError
from emotion_summary.gpusim.archs import PLANNER_ARCHS, position_limit

TRAIN_PRESETS = ("8gb", "12gb", "24gb", "cpu-smoke")
BREAKDOWN_ORDER = ("weights", "lora + optimizer", "saved activations", "recomputed layer", "logits",
                   "kernel scratch", "generation")


def _as_lengths(seq_len, seq_lens) -> list[int] | None:
    """--seq_lens as a list (the command line hands a list; Python callers may pass "a,b")."""
    if seq_lens is None:
        return None
    if isinstance(seq_lens, str):
        from emotion_summary.core.cli import parse_value

        try:
            return parse_value(seq_lens, list[int])
        except ValueError:
            raise ConfigError(f"--seq_lens: comma-separated token counts, got {seq_lens!r}") from None
    return [int(x) for x in seq_lens]


def _preset_max_seq_len(preset: str) -> int:
    """The preset's own length (its override, else TrainConfig's default); 1024 for an unknown name,
    which check_request then refuses."""
    from emotion_summary.training.config import TrainConfig
    from emotion_summary.training.presets import PRESETS

    if preset not in PRESETS:
        return 1024
    return PRESETS[preset]["config"].get("max_seq_len", TrainConfig.__dataclass_fields__["max_seq_len"].default)


def check_request(preset: str, arch: str, lengths: list[int], yarn: bool) -> None:
    from emotion_summary.training.presets import PRESETS

    problems = []
    if preset not in PRESETS:
        problems.append(f"--preset: unknown preset {preset!r}; choose one of {', '.join(p for p in PRESETS)}")
    if arch not in PLANNER_ARCHS:
        problems.append(f"--arch: unknown arch {arch!r}; choose one of {', '.join(PLANNER_ARCHS)}")
    elif lengths:
        limit = position_limit(arch, yarn)
        for n in lengths:
            if n < 256:
                problems.append(f"--seq_len: {n} is too short to train on (at least 256 tokens)")
            elif n > limit:
                hint = (" (--yarn true extends Qwen2 to 131,072 with YaRN factor 4)"
                        if arch.startswith("qwen") and not yarn else "")
                problems.append(f"--seq_len: {n} is past {arch}'s position limit of {limit:,}{hint}")
    if problems:
        raise ConfigError("; ".join(problems))


def weights_only_check(result: dict) -> None:
    """A card smaller than the weights alone: no length can fit."""
    weights = result.get("weights_gb") or result["breakdown_gb"].get("weights", 0.0)
    if weights + result["context_gb"] > result["vram_gb"]:
        raise ConfigError(f"{result['card']} ({result['vram_gb']:.1f} GB) is too small for the "
                          f"{result['preset']} preset's weights alone ({weights:.2f} GB + "
                          f"{result['context_gb']:.2f} GB CUDA context); pick a smaller preset or a larger card")


def describe(result: dict) -> str:
    depth = f", only {result['layers']} layers simulated" if result.get("layers") else ""
    lines = [f"simulated {result['kind']}: preset {result['preset']}, {result['arch']}{depth}, "
             f"{' + '.join(f'{n:,}' for n in result['seq_lens'])} tokens "
             f"(batch {result['batch_size']}) on {result['card']} ({result['vram_gb']:.2f} GB)"]
    parts = result["breakdown_gb"]
    for name in BREAKDOWN_ORDER:
        if parts.get(name):
            lines.append(f"  {name:<20} {parts[name]:6.2f} GB")
    lines += [f"  {'peak allocated':<20} {result['peak_allocated_gb']:6.2f} GB",
              f"  {'smallest pool':<20} {result['min_pool_gb']:6.2f} GB  (caching allocator replay)",
              f"  {'CUDA context':<20} {result['context_gb']:6.2f} GB",
              f"  {'estimated need':<20} {result['estimated_need_gb']:6.2f} GB of {result['vram_gb']:.2f} GB: "
              + ("fits" if result["fits"] else "DOES NOT FIT")
              + f" (headroom {result['headroom_gb']:+.2f} GB)"]
    if result.get("host_peak_gb"):
        lines.append(f"  host (CPU RAM) peak   {result['host_peak_gb']:6.2f} GB  (offloaded activations, CPU embedding)")
    return "\n".join(lines)


def longest_fitting(fits, lo: int, limit: int, step: int) -> int:
    """The largest multiple of `step` in [lo, limit] for which `fits(n)` holds, assuming fitting is
    monotone (shorter always fits when longer does); 0 when `lo` does not fit. Doubles from `lo`,
    then bisects: about log2(limit / lo) + log2(limit / step) probes."""
    if not fits(lo):
        return 0
    good, bad = lo, None
    while bad is None and good < limit:
        n = min(good * 2, limit)
        if fits(n):
            good = n
        else:
            bad = n
    while bad is not None:
        mid = (good + bad) // 2 // step * step
        if mid <= good:
            break
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def find_max_seq_len(preset: str, card, arch: str = "qwen2-7b", batch_size: int = 1, layers: int | None = None,
                     overrides: dict | None = None, flash_attn: bool = False, yarn: bool = False,
                     lo: int = 1024, step: int = 512, progress=print) -> tuple[int, dict | None]:
    """The longest training length (a multiple of `step`) that fits `card`, and its simulated result."""
    from emotion_summary.gpusim.api import SimulationError, job, run_jobs

    cache: dict[int, dict] = {}

    def fits(n: int) -> bool:
        spec = job("train", preset, [n] * batch_size, card, arch, layers, overrides, flash_attn, yarn=yarn)
        result = run_jobs([spec])[0]
        if "error" in result:
            raise SimulationError(result["error"])
        cache[n] = result
        progress(f"  {n:>7,} tokens: need {result['estimated_need_gb']:.2f} GB -> "
                 f"{'fits' if result['fits'] else 'does not fit'}")
        return result["fits"]

    best = longest_fitting(fits, lo, position_limit(arch, yarn), step)
    return best, cache[best] if best else cache[lo]


def plan_memory(
    preset: str = "12gb",
    seq_len: int | None = None,
    batch_size: int = 1,
    seq_lens: list[int] | None = None,
    vram_gb: float | None = None,
    card: str | None = None,
    arch: str = "qwen2-7b",
    find_max: bool = False,
    generate: bool = False,
    max_new_tokens: int = 512,
    flash_attn: bool = False,
    yarn: bool = False,
    lora_dropout: float | None = None,
    layers: int | None = None,
    json: str | None = None,
) -> None:
    """Simulate a preset's training step (or generation) on a card: memory breakdown and whether it fits.

    Args:
        preset: 8gb, 12gb, 24gb (or cpu-smoke): its memory levers (offload, tiling, 4-bit LM head).
        seq_len: tokens per sequence (default: the preset's max_seq_len).
        batch_size: sequences per micro-batch, all of --seq_len tokens (default 1).
        seq_lens: comma-separated lengths of one right-padded batch instead, e.g. 32768,20000.
        vram_gb: the card's memory in GiB as the presets count cards (8, 12, 24); default: the card's.
        card: rtx4060, rtx3060, rtx4090, t4, a100-40gb, a100-80gb (default: the preset's card).
        arch: qwen2-7b, qwen2.5-7b or llama3.1-8b.
        find_max: bisect the longest --seq_len that fits (batch --batch_size).
        generate: simulate the generate call (prompt of --seq_len tokens, batch --batch_size) instead.
        max_new_tokens: tokens generated per prompt with --generate.
        flash_attn: the flash-attn package is installed (attn_implementation auto then picks it).
        yarn: YaRN factor 4 on (Qwen2: positions up to 131,072).
        lora_dropout: override the preset's LoRA dropout (e.g. 0).
        layers: simulate only this many layers (quick looks; the real depth by default).
        json: also write the result as JSON to this file.
    """
    plan(**locals())


def plan(**options) -> dict:
    """plan_memory's work on its options (as keywords; json_out= names the JSON file too); returns the
    result dict (see gpusim.__init__)."""
    if "json_out" in options:
        options["json"] = options.pop("json_out")
    bound = inspect.signature(plan_memory).bind(**options)
    bound.apply_defaults()
    o = SimpleNamespace(**bound.arguments)
    if not isinstance(o.batch_size, int) or o.batch_size < 1:
        raise ConfigError(f"--batch_size: a positive integer, got {o.batch_size!r}")
    lengths = _as_lengths(o.seq_len, o.seq_lens)
    if lengths is None:
        n = o.seq_len if o.seq_len is not None else _preset_max_seq_len(o.preset)
        if not isinstance(n, int):
            raise ConfigError(f"--seq_len: a whole number of tokens, got {n!r}")
        lengths = [n] * o.batch_size
    check_request(o.preset, o.arch, [] if o.find_max else lengths, o.yarn)
    from emotion_summary.gpusim.api import resolve_card, simulate_generation, simulate_training

    chosen = resolve_card(o.card, o.vram_gb, o.preset)
    overrides = {} if o.lora_dropout is None else {"lora_dropout": float(o.lora_dropout)}
    if o.yarn:
        overrides["max_seq_len"] = max(lengths)
    if o.find_max:
        print(f"searching the longest length for preset {o.preset} (batch {o.batch_size}) on {chosen.name} ...")
        best, result = find_max_seq_len(o.preset, chosen, o.arch, o.batch_size, o.layers, overrides, o.flash_attn,
                                        o.yarn)
        if result is not None:
            weights_only_check(result)
        print(f"longest length that fits: {best:,} tokens" if best else "not even 1,024 tokens fit")
        out = {**(result or {}), "find_max": best}
    elif o.generate:
        out = simulate_generation(o.preset, lengths, chosen, o.arch, o.layers, overrides, o.flash_attn,
                                  o.max_new_tokens)
        print(describe(out))
    else:
        out = simulate_training(o.preset, lengths, chosen, o.arch, o.layers, overrides, o.flash_attn)
        if not out["fits"]:
            weights_only_check(out)
        print(describe(out))
        from emotion_summary.gpusim.step_time import time_section

        out["time"], text = time_section(out, chosen)
        print(text)
    if o.json:
        from emotion_summary.core.atomic_io import atomic_write_json

        atomic_write_json(Path(o.json), out)
    return out
