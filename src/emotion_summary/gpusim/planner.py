"""plan_memory: will a preset train at a length on a card? The simulated peak, its breakdown and
the verdict, for the preset's own length, batch and memory levers unless told otherwise; `find_max`
searches the longest length that fits (and the longest that keeps the presets' 5% headroom).
Light until a simulation runs."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

from emotion_summary.core.errors import ConfigError
from emotion_summary.gpusim.archs import PLANNER_ARCHS, position_limit

PRESET_HEADROOM = 0.05  # the presets keep 5% of their card free (fragmentation over many steps, desktop use)
PRESET_LEVERS = ("offload_activations", "mlp_tile_tokens", "embedding_on_cpu", "lm_head_4bit", "lora_dropout")
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


def preset_values(preset: str) -> dict:
    """What the planner takes from the preset unless given: length, batch and memory levers
    (TrainConfig's defaults where the preset sets nothing); {} for an unknown preset, which
    check_request then refuses."""
    from emotion_summary.training.config import resolve_config
    from emotion_summary.training.presets import PRESETS

    if preset not in PRESETS:
        return {}
    cfg = resolve_config(preset)
    return {"seq_len": cfg.max_seq_len, "batch_size": cfg.batch_size, **{k: getattr(cfg, k) for k in PRESET_LEVERS}}


def check_request(preset: str, arch: str, lengths: list[int], yarn: bool) -> None:
    from emotion_summary.training.presets import PRESETS, unknown_preset

    problems = []
    if preset not in PRESETS:
        problems.append(unknown_preset(preset, tuple(PRESETS)))
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
    lines += ["  largest live at the peak: " + ", ".join(
        f"{a['gb']:.2f} GB {a['made_by'].split('.')[0]} ({a['category']})" for a in result.get("largest_at_peak", [])[:3])]
    setter = result.get("pool_set_by")
    if setter and result["min_pool_gb"] - result["peak_allocated_gb"] > 0.1:
        lines.append(f"  the pool exceeds the peak by {result['min_pool_gb'] - result['peak_allocated_gb']:.2f} GB: a "
                     f"{setter['gb']:.2f} GB {setter['made_by'].split('.')[0]} ({setter['category']}) request finds "
                     f"no free block big enough in the cached segments (split by smaller blocks) while "
                     f"{setter['allocated_gb']:.2f} GB are allocated, and needs a segment of its own")
    if result.get("host_peak_gb"):
        lines.append(f"  host (CPU RAM) peak   {result['host_peak_gb']:6.2f} GB  (offloaded activations, CPU embedding)")
    return "\n".join(lines)


def longest_fitting(fits, lo: int, limit: int, step: int, start: int | None = None,
                    first_gap: int | None = None) -> int:
    """The largest multiple of `step` in [lo, limit] for which `fits(n)` holds, assuming fitting is
    monotone (shorter always fits when longer does); 0 when `lo` does not fit. Probes `start`
    (default `lo`; e.g. a guess from a need curve), then moves away from it by gaps that double from
    `first_gap` (default `start`: 2x, 4x, ...) until fitting changes, then bisects: about
    log2(limit / lo) + log2(limit / step) probes, two when the guess is right."""
    def snap(n: int) -> int:
        return min(limit, max(lo, n // step * step))

    n = snap(start if start is not None else lo)
    gap = first_gap or n
    if fits(n):
        good, bad = n, None
        while good < limit:
            n = snap(good + gap)
            if not fits(n):
                bad = n
                break
            good, gap = n, gap * 2
        if bad is None:
            return good
    else:
        good, bad = None, n
        while good is None:
            if bad <= lo:
                return 0
            n = snap(bad - gap)
            if fits(n):
                good = n
            else:
                bad, gap = n, gap * 2
    while True:
        mid = (good + bad) // 2 // step * step
        if mid <= good:
            return good
        good, bad = (mid, bad) if fits(mid) else (good, mid)


def find_max_seq_len(preset: str, card, arch: str = "qwen2-7b", batch_size: int = 1, layers: int | None = None,
                     overrides: dict | None = None, flash_attn: bool = False, yarn: bool = False,
                     lo: int = 1024, step: int = 512, progress=print) -> dict:
    """The longest training length (a multiple of `step`, up to the position limit) that fits
    `card`, and the longest whose need keeps the presets' 5% headroom: {"fits": (length, result),
    "headroom": (length, result), "limit": the position limit}; a length is 0 when `lo` does not fit."""
    from emotion_summary.gpusim.api import SimulationError, job, run_jobs

    cache: dict[int, dict] = {}

    def need(n: int) -> float:
        if n not in cache:
            spec = job("train", preset, [n] * batch_size, card, arch, layers, overrides, flash_attn, yarn=yarn)
            result = run_jobs([spec])[0]
            if "error" in result:
                raise SimulationError(result["error"])
            cache[n] = result
            progress(f"  {n:>7,} tokens: need {result['estimated_need_gb']:.2f} GB of {result['vram_gb']:.2f} GB")
        return cache[n]["estimated_need_gb"] * 1e9

    limit = position_limit(arch, yarn)
    longest = longest_fitting(lambda n: need(n) <= card.total_bytes, lo, limit, step)
    roomy = longest_fitting(lambda n: need(n) <= (1 - PRESET_HEADROOM) * card.total_bytes, lo, limit, step,
                            start=longest or lo, first_gap=step)
    return {"fits": (longest, cache.get(longest)), "headroom": (roomy, cache.get(roomy)), "limit": limit,
            "first": cache[lo]}


def describe_find_max(found: dict, arch: str, yarn: bool) -> str:
    longest, roomy, limit = found["fits"][0], found["headroom"][0], found["limit"]
    if not longest:
        return f"not even {min(found['first']['seq_lens']):,} tokens fit"
    lines = [f"longest length that fits: {longest:,} tokens",
             f"longest with the presets' {PRESET_HEADROOM:.0%} headroom: {roomy:,} tokens" if roomy
             else f"no length keeps the presets' {PRESET_HEADROOM:.0%} headroom"]
    if longest == limit:
        hint = "; add --yarn true to search past it" if arch.startswith("qwen") and not yarn else ""
        lines.append(f"capped at {limit:,} positions ({arch}'s limit{' with YaRN' if yarn else ''}){hint}")
    return "\n".join(lines)


def plan_memory(
    preset: str = "12gb",
    seq_len: int | None = None,
    batch_size: int | None = None,
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
    The preset's own length, batch and memory levers unless given; the output says which is which.

    Args:
        preset: 8gb, 12gb, 24gb (or cpu-smoke): its length, batch and memory levers (offload, tiling,
            CPU embedding, 4-bit LM head, LoRA dropout).
        seq_len: tokens per sequence (default: the preset's max_seq_len).
        batch_size: sequences per micro-batch, all of --seq_len tokens (default: the preset's).
        seq_lens: comma-separated lengths of one right-padded batch instead, e.g. 32768,20000.
        vram_gb: the card's memory in GiB as the presets count cards (8, 12, 24); default: the card's.
        card: rtx4060, rtx3060, rtx4090, t4, a100-40gb, a100-80gb (default: the preset's card).
        arch: qwen2-7b, qwen2.5-7b or llama3.1-8b.
        find_max: search the longest --seq_len that fits (batch --batch_size), and the longest that
            keeps the presets' 5% headroom, up to the architecture's position limit.
        generate: simulate inference's generation instead (generate_ids: prompts of --seq_len tokens,
            --batch_size of them, grouped by the free memory, prefilled in chunks).
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
    preset = preset_values(o.preset)
    if o.batch_size is not None and (not isinstance(o.batch_size, int) or o.batch_size < 1):
        raise ConfigError(f"--batch_size: a positive integer, got {o.batch_size!r}")
    lengths = _as_lengths(o.seq_len, o.seq_lens)
    if lengths is None:
        n = o.seq_len if o.seq_len is not None else preset.get("seq_len", 1024)
        if not isinstance(n, int):
            raise ConfigError(f"--seq_len: a whole number of tokens, got {n!r}")
        lengths = [n] * (o.batch_size or preset.get("batch_size", 1))
    check_request(o.preset, o.arch, [] if o.find_max else lengths, o.yarn)
    from emotion_summary.gpusim.api import resolve_card, simulate_generation, simulate_training

    chosen = resolve_card(o.card, o.vram_gb, o.preset)
    overrides = {} if o.lora_dropout is None else {"lora_dropout": float(o.lora_dropout)}
    if o.yarn:
        overrides["max_seq_len"] = max(lengths)
    sources = value_sources(o, preset, lengths)
    print(sources["text"])
    if o.find_max:
        print(f"searching the longest length for preset {o.preset} (batch {len(lengths)}) on {chosen.name} ...")
        found = find_max_seq_len(o.preset, chosen, o.arch, len(lengths), o.layers, overrides, o.flash_attn, o.yarn)
        longest, result = found["fits"]
        weights_only_check(result or found["first"])
        print(describe_find_max(found, o.arch, o.yarn))
        out = {**(result or found["first"]), "find_max": longest, "find_max_headroom": found["headroom"][0],
               "position_limit": found["limit"]}
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
    out["sources"] = sources["by_value"]
    if o.json:
        from emotion_summary.core.atomic_io import atomic_write_json

        atomic_write_json(Path(o.json), out)
    return out


def value_sources(o, preset: dict, lengths: list[int]) -> dict:
    """Which simulated values the user gave and which came from the preset (or the preset's card)."""
    given_len = o.seq_len is not None or o.seq_lens is not None
    by_value = {"seq_len": "given" if given_len or o.find_max else "preset",
                "batch_size": "given" if o.batch_size is not None or o.seq_lens is not None else "preset",
                "card": "given" if o.card or o.vram_gb else "preset",
                **{k: "given" if k == "lora_dropout" and o.lora_dropout is not None else "preset"
                   for k in PRESET_LEVERS}}
    values = {"seq_len": " + ".join(f"{n:,}" for n in sorted(set(lengths), reverse=True)),
              "batch_size": len(lengths), **{k: preset.get(k) for k in PRESET_LEVERS}}
    if o.lora_dropout is not None:
        values["lora_dropout"] = float(o.lora_dropout)
    if o.find_max:
        values["seq_len"] = "searched"
    text = []
    for source, label in (("preset", f"from the preset {o.preset}"), ("given", "given")):
        shown = [f"{k}={values[k]}" for k, v in by_value.items() if v == source and k in values]
        if source == "preset" and by_value["card"] == "preset":
            shown.append("its card")
        if shown:
            text.append(f"{label}: {', '.join(shown)}")
    return {"by_value": by_value, "text": "\n".join(text)}
