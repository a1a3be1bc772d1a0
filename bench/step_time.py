"""Simulated GPU step time (no GPU): the work of the project's training step (and of the published
recipes, for calibration) counted op by op on the simulator, turned into seconds by the roofline of
`emotion_summary.gpusim.step_time`.

Each row simulates the step twice, with 1 and 2 decoder layers (every layer does the same work), and
extrapolates to the architecture's depth: t(N) = t(1) + (N - 1) x (t(2) - t(1)). A full-depth
simulation gives the same counts, at 14 times the cost on this machine.

  python bench/step_time.py --suite calibration --out bench/results/step_time.jsonl
  python bench/step_time.py --suite presets --out bench/results/step_time.jsonl
  python bench/step_time.py --suite trl --out bench/results/step_time.jsonl
      # TRL's SFTTrainer (default options, the 24gb preset's LoRA) on the same card and lengths
  python bench/step_time.py --suite presets --reuse_rows bench/results/step_time.jsonl --data FILE.jsonl
      # one epoch over FILE per simulated row, from the rows already simulated
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from _common import append_rows, host_info, markdown_table

from emotion_summary.core.cli import comma_list, run
from emotion_summary.core.errors import UserError

# Qwen's README, "Profiling of Memory and Speed": Qwen-7B Q-LoRA (GPTQ Int4 base, r=64), one
# A100-SXM4-80G, flash-attn 2, batch 1, gradient accumulation 8: seconds per iteration of 8 sequences.
QWEN_QLORA_S_PER_IT = {256: 3.0, 512: 3.0, 1024: 3.5, 2048: 7.0, 4096: 11.6, 8192: 22.3}
QWEN_ACCUM = 8
QWEN_RECIPE = {"lora_r": 64, "lora_alpha": 16, "upcast": False, "loss": "qwen1", "optimizer": "adamw"}
DEPTH = {"qwen2-7b": 28, "qwen-7b": 32, "llama3.1-8b": 32}

# (row name, preset, lengths, card, overrides)
PRESET_ROWS = {
    "8gb-8192": ("8gb", [8192], "rtx4060", {}),
    "12gb-16384": ("12gb", [16384], "rtx3060", {}),
    "12gb-32768": ("12gb", [32768], "rtx3060", {}),
    "24gb-8192": ("24gb", [8192], "rtx4090", {}),
    "24gb-8192-save-attention": ("24gb", [8192], "rtx4090", {"save_attention": True}),
    "24gb-16384": ("24gb", [16384], "rtx4090", {}),
    "24gb-32768": ("24gb", [32768], "rtx4090", {}),
    "24gb-32768x2": ("24gb", [32768, 32768], "rtx4090", {}),
}
CALIBRATION_ROWS = {f"qwen-qlora-{n}": n for n in (2048, 4096, 8192)}
# TRL's SFTTrainer with its defaults (gradient accumulation 1) and the 24gb preset's LoRA, beside the
# 24gb rows above; bench/peers.py's simulate_trl runs it on the simulated card.
TRL_ROWS = {f"trl-{n}": ("24gb", [n], "rtx4090", {}) for n in (8192, 16384, 32768)}
SUITES = {"presets": PRESET_ROWS, "calibration": CALIBRATION_ROWS, "trl": TRL_ROWS}


def step_time(suite: str = "presets", rows: str | None = None, out: str | None = None, data: str | None = None,
              timeout_s: int = 7200, reuse_rows: str | None = None) -> None:
    """Simulated step time per preset and length (or the published calibration rows).

    Args:
        suite: presets (the project's step), trl (TRL's SFTTrainer at the 24gb rows' lengths) or
            calibration (Qwen's Q-LoRA speed table).
        rows: comma-separated row names of the suite (default: all).
        out: append one JSON row per simulated row to this file.
        data: an ES JSONL file: also the simulated time of one epoch over it (presets suite).
        timeout_s: wall-clock limit of one simulation worker.
        reuse_rows: a JSONL file of earlier rows of this script: a row named there is taken from it
            instead of simulated again (e.g. to add --data's epoch time).
    """
    table = SUITES.get(suite)
    if table is None:
        raise UserError(f"--suite: {', '.join(SUITES)}, got {suite!r}")
    names = comma_list(rows, "rows") if rows else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"--rows: from {', '.join(table)}, got {', '.join(unknown)}")
    host = host_info()
    earlier = {}
    for line in open(reuse_rows, encoding="utf-8") if reuse_rows else ():
        r = json.loads(line)
        if r.get("suite") == suite:
            earlier[r["row"]] = r
    results = []
    for name in names:
        if name in earlier:
            row = {k: v for k, v in earlier[name].items() if k != "epoch"}
        elif reuse_rows:
            continue  # only the rows simulated before
        else:
            started = time.time()
            row = simulate_row(suite, name, table[name])
            row.update(host, suite=suite, row=name, wall_s=round(time.time() - started))
        if data and suite == "presets":
            row["epoch"] = epoch_row(row, data)
        print(json.dumps({k: row.get(k) for k in ("row", "card", "step_s", "tokens_per_s", "shares", "epoch")}),
              flush=True)
        append_rows(out, [row])
        results.append(row)
    print(report(results))


def simulate_row(suite: str, name: str, spec) -> dict:
    from emotion_summary.gpusim.api import SimulationError, job, resolve_card, run_jobs
    from emotion_summary.gpusim.cards import CARDS, card_of_size

    paths = []
    if suite in ("presets", "trl"):
        preset, lens, card_name, overrides = spec
        card, arch = resolve_card(card_name), "qwen2-7b"
        kind = {"kind": "train"} if suite == "presets" else {"kind": "run", "runner": "peers:simulate_trl"}
        jobs = [job(preset=preset, seq_lens=lens, card=card, arch=arch, layers=layers, overrides=overrides, **kind)
                for layers in (1, 2)]
        paths = [str(Path(__file__).resolve().parent)] if suite == "trl" else []
    else:
        card, arch, lens, preset = card_of_size(80, CARDS["a100-80gb"]), "qwen-7b", [spec], "24gb"
        jobs = [job("plain", "24gb", lens, card, arch, layers, QWEN_RECIPE, flash_attn=True) for layers in (1, 2)]
    one, two = run_jobs(jobs, paths=paths)
    for r in (one, two):
        if "error" in r:
            raise SimulationError(r["error"] + "\n" + r.get("traceback", ""))
    return extrapolated(one, two, DEPTH[arch], card, preset, suite, lens)


def extrapolated(one: dict, two: dict, depth: int, card, preset: str, suite: str, lens: list[int]) -> dict:
    """The step at full depth from the 1- and 2-layer simulations (linear in the layer count)."""
    from emotion_summary.gpusim.step_time import micro_and_optimizer_seconds, preset_grad_accum

    # TRL's default gradient accumulation is 1
    accum = {"calibration": QWEN_ACCUM, "trl": 1}.get(suite) or preset_grad_accum(preset)
    a, b = (micro_and_optimizer_seconds(r["work"], card) for r in (one, two))
    full = {k: a[k] + (depth - 1) * (b[k] - a[k]) for k in a}
    tokens = sum(lens)
    step = accum * full["micro_s"] + full["optimizer"]
    row = {"preset": preset, "seq_lens": lens, "card": card.name, "depth": depth, "grad_accum": accum,
           "micro_batch_s": full["micro_s"], "optimizer_s": full["optimizer"], "step_s": step,
           "tokens_per_s": accum * tokens / step,
           "shares": {k: accum * full[k] / step for k in ("offload traffic", "recompute", "MLP tiles")},
           "tflops_per_micro": full["flops"] / 1e12, "device_gb_per_micro": full["device_bytes"] / 1e9,
           "pcie_gb_per_micro": full["pcie_bytes"] / 1e9,
           "bound_s": {k: full[k] for k in ("compute-bound", "memory-bound", "launch", "offload traffic", "host")},
           "no_offload_step_s": step - accum * full["offload traffic"],
           "sim_need_gb_2_layers": two["estimated_need_gb"], "config": two.get("config")}
    if suite == "calibration":
        published = QWEN_QLORA_S_PER_IT[lens[0]]
        row.update(published_s_per_it=published, error=step / published - 1)
    return row


def epoch_row(row: dict, data: str) -> dict:
    """One epoch over `data` at this row's micro-batch time per token (linear in the length: the
    step's attention share is small at these lengths), lengths from the real Qwen2 tokenizer."""
    from emotion_summary.gpusim.step_time import epoch_seconds

    lengths = example_lengths(data, max(row["seq_lens"]))
    per_token = row["micro_batch_s"] / sum(row["seq_lens"])
    seconds = epoch_seconds(lengths, lambda n: n * per_token, row["optimizer_s"], row["grad_accum"])
    return {"data": data, "examples": len(lengths), "tokens": sum(lengths), "seconds": seconds}


@functools.cache
def example_lengths(data: str, max_seq_len: int) -> list[int]:
    from emotion_summary.data.records import read_records
    from emotion_summary.modeling.tokenizer import qwen2_tokenizer
    from emotion_summary.prompting.encode import encode_example
    from emotion_summary.prompting.prompt import PromptSpec

    tokenizer = qwen2_tokenizer()
    return [len(encode_example(tokenizer, PromptSpec(), r, max_seq_len)["input_ids"])
            for r in read_records(data, require_gold=True)]


def report(rows: list[dict]) -> str:
    header = ["row", "card", "micro-batch s", "step s", "tokens/s", "offload", "recompute", "MLP tiles",
              "no-offload step s", "published s", "error"]
    return markdown_table(header, [[r["row"], r["card"], f"{r['micro_batch_s']:.2f}", f"{r['step_s']:.1f}",
                                    f"{r['tokens_per_s']:,.0f}", *(f"{v:.1%}" for v in r["shares"].values()),
                                    f"{r['no_offload_step_s']:.1f}", r.get("published_s_per_it"),
                                    f"{r['error']:+.0%}" if "error" in r else None] for r in rows])


if __name__ == "__main__":
    run(step_time)
