"""Token-length statistics of ES files with the real Qwen2 tokenizer: what fits which preset.

Counted exactly as the model sees it:
- prompt tokens: `build_prompt(PromptSpec(language=...), record)` rendered by Qwen2's chat template
  with the assistant header (`add_generation_prompt=True`), untrimmed;
- answer tokens (records with gold only): `prompt.answer_text(gold)` plus the `<|im_end|>` token;
- a record fits a context of N tokens for inference when prompt + max_new_tokens <= N, and for
  training when prompt + answer <= N.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from emotion_summary.core.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from emotion_summary.training.config import resolve_config
from emotion_summary.training.presets import PRESETS
from emotion_summary.prompting.encode import answer_token_ids, fit_report
from emotion_summary.core.paths import refuse_overwrite
from emotion_summary.prompting.prompt import Language, PromptSpec
from emotion_summary.data.records import Record, read_records

WINDOWS = (4096, 8192, 16384, 32768)
DEFAULT_NEW_TOKENS = resolve_config("24gb").max_new_tokens  # the budget used for the 4K..32K table
COUNTED = (
    "prompt = build_prompt(PromptSpec(language=...), record) through Qwen2's chat template with the "
    "assistant header (add_generation_prompt=True), untrimmed",
    "answer = prompt.answer_text(gold) + <|im_end|> (records with gold only)",
    "fits N for inference: prompt + max_new_tokens <= N; for training: prompt + answer <= N",
)


def prompt_tokens(tokenizer, spec: PromptSpec, record: Record) -> int:
    return len(fit_report(tokenizer, spec, record).ids)


def answer_tokens(tokenizer, record: Record) -> int | None:
    return len(answer_token_ids(tokenizer, record.gold())) if record.has_gold else None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def describe(values: Sequence[int]) -> dict | None:
    if not values:
        return None
    return {"count": len(values), "mean": round(sum(values) / len(values), 1),
            "median": percentile(values, 0.5), "p90": round(percentile(values, 0.9), 1),
            "min": min(values), "max": max(values)}


def measure(tokenizer, files: dict[str, list[Record]], spec: PromptSpec) -> list[dict]:
    rows = []
    total = sum(len(v) for v in files.values())
    with tqdm(total=total, desc="tokenizing", unit="report") as bar:
        for path, records in files.items():
            for r in records:
                rows.append({"file": path, "id": r.id, "source": r.source,
                             "prompt_tokens": prompt_tokens(tokenizer, spec, r),
                             "answer_tokens": answer_tokens(tokenizer, r)})
                bar.update()
    return rows


def _group(rows: list[dict]) -> dict:
    prompts = [r["prompt_tokens"] for r in rows]
    gold = [r for r in rows if r["answer_tokens"] is not None]
    return {"records": len(rows), "with_gold": len(gold), "prompt_tokens": describe(prompts),
            "answer_tokens": describe([r["answer_tokens"] for r in gold]),
            "prompt_plus_answer": describe([r["prompt_tokens"] + r["answer_tokens"] for r in gold])}


def fit_counts(rows: list[dict]) -> tuple[dict, list[dict]]:
    windows = {str(n): sum(r["prompt_tokens"] + DEFAULT_NEW_TOKENS <= n for r in rows) for n in WINDOWS}
    gold = [r for r in rows if r["answer_tokens"] is not None]
    presets = []
    for name in PRESETS:
        cfg = resolve_config(name)
        limit, new = cfg.max_seq_len, cfg.max_new_tokens
        presets.append({"preset": name, "max_seq_len": limit, "max_new_tokens": new,
                        "fit_inference": sum(r["prompt_tokens"] + new <= limit for r in rows),
                        "fit_training": sum(r["prompt_tokens"] + r["answer_tokens"] <= limit for r in gold)
                        if gold else None})
    return windows, presets


def length_table(rows: list[dict], spec: PromptSpec) -> dict:
    sources = Counter(r["source"] for r in rows)
    groups = {"all": _group(rows)}
    if len(sources) > 1:
        groups.update({s: _group([r for r in rows if r["source"] == s]) for s in sorted(sources)})
    windows, presets = fit_counts(rows)
    return {"prompt_spec": {"version": spec.version, "language": spec.language},
            "counted": list(COUNTED),
            "files": dict(Counter(r["file"] for r in rows)), "sources": dict(sources), "groups": groups,
            "window_budget_new_tokens": DEFAULT_NEW_TOKENS, "fits_windows": windows,
            "fits_presets": presets, "records": rows}


def _fmt(v) -> str:
    return "–" if v is None else f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def _fit_training(p: dict, s: dict) -> str:
    gold = s["groups"]["all"]["with_gold"]
    return "–" if p["fit_training"] is None else f"{p['fit_training']}/{gold}"


def markdown(s: dict) -> str:
    n = s["groups"]["all"]["records"]
    lines = ["# Token lengths (Qwen2 tokenizer)", "", f"Files: {', '.join(f'`{f}` ({c})' for f, c in s['files'].items())}.",
             f"Sources: {', '.join(f'{k} {v}' for k, v in s['sources'].items())}.", "",
             "| group | what | n | mean | median | p90 | min | max |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for g, d in s["groups"].items():
        for what in ("prompt_tokens", "answer_tokens", "prompt_plus_answer"):
            if d[what]:
                x = d[what]
                lines.append(f"| {g} | {what.replace('_', ' ')} | {x['count']} | {_fmt(x['mean'])} | "
                             f"{_fmt(x['median'])} | {_fmt(x['p90'])} | {_fmt(x['min'])} | {_fmt(x['max'])} |")
    lines += ["", f"Fit in a context window (prompt + {s['window_budget_new_tokens']} new tokens), of {n}:", "",
              "| window | fit |", "|---:|---:|"]
    lines += [f"| {int(w):,} | {c} |" for w, c in s["fits_windows"].items()]
    lines += ["", "Fit per preset, untruncated (inference: prompt + max_new_tokens <= max_seq_len; "
              "training: prompt + answer <= max_seq_len, records with gold only):", "",
              "| preset | max_seq_len | max_new_tokens | fit (inference) | fit (training) |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {p['preset']} | {p['max_seq_len']:,} | {p['max_new_tokens']} | {p['fit_inference']}/{n} | "
              f"{_fit_training(p, s)} |" for p in s["fits_presets"]]
    return "\n".join(lines + ["", "Counted:", *[f"- {c}" for c in s["counted"]], ""])


def histogram_png(rows: list[dict]) -> bytes:
    import matplotlib.ticker
    import numpy as np

    from emotion_summary.core.plots import png_bytes, pyplot

    plt = pyplot()
    values = [r["prompt_tokens"] for r in rows]
    bins = np.geomspace(max(min(values), 16) * 0.9, max(max(values), WINDOWS[-1]) * 1.1, 60)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for source in sorted({r["source"] for r in rows}):
        ax.hist([r["prompt_tokens"] for r in rows if r["source"] == source], bins=bins, alpha=0.7, label=source)
    for w in WINDOWS:
        ax.axvline(w, color="black", linestyle="--", linewidth=1)
    ticks = [t for t in (256, 512, 1024, 2048, *WINDOWS) if bins[0] <= t <= bins[-1]]
    ax.set(xscale="log", xlabel="prompt tokens (Qwen2 chat template; dashed: 4K/8K/16K/32K)", ylabel="reports",
           title="Prompt length per report")
    ax.set_xticks(ticks, [f"{t / 1024:g}K" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend()
    return png_bytes(fig, dpi=120, bbox_inches="tight")


OUTPUT_FILES = ("stats.json", "stats.md", "prompt_tokens_hist.png")


def write_outputs(summary: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    json_name, md_name, png_name = OUTPUT_FILES
    return [atomic_write_json(out / json_name, summary), atomic_write_text(out / md_name, markdown(summary)),
            atomic_write_bytes(out / png_name, histogram_png(summary["records"]))]


def stats(inputs: str, *more_inputs: str, out_dir: str = "data/stats", language: Language = "auto",
          tokenizer_cache: str | None = None) -> None:
    """Token lengths of ES files (Qwen2 tokenizer): mean/median/p90/max and what fits each preset.

    Args:
        inputs: ES records (JSONL or JSON array); more files may follow it.
        more_inputs: further ES files, listed after the first one.
        out_dir: where stats.json, stats.md and prompt_tokens_hist.png are written.
        language: prompt language rule used for the measured prompts: en, zh or auto.
        tokenizer_cache: folder for the offline-built Qwen2 tokenizer (default ~/.cache/emotion_summary).
    """
    refuse_overwrite({f"--out_dir/{n}": Path(out_dir) / n for n in OUTPUT_FILES},
                     {f"input {i + 1}": p for i, p in enumerate((inputs, *more_inputs))},
                     dirs={"--out_dir": out_dir, "--tokenizer_cache": tokenizer_cache})
    files = {str(p): read_records(p) for p in (inputs, *more_inputs)}
    from emotion_summary.modeling.tokenizer import qwen2_tokenizer

    print("loading the Qwen2 tokenizer (built once, ~1 min, then cached)", file=sys.stderr)
    spec = PromptSpec(language=language)
    summary = length_table(measure(qwen2_tokenizer(tokenizer_cache), files, spec), spec)
    paths = write_outputs(summary, out_dir)
    print(markdown(summary))
    print("wrote " + ", ".join(map(str, paths)))
