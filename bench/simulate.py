"""Simulated GPU memory (no GPU): the project's own training step per preset on its card, and the
calibration rows (published QLoRA tables against the same simulation of their recipe).

Each row runs in a worker process of emotion_summary.gpusim (fake CUDA tensors, real Qwen2-7B /
Llama-3.1-8B shapes, no weights). "need" = smallest caching-allocator pool that runs + 0.54 GB CUDA
context; a row fits when need <= the card's memory. GB = 10^9 bytes; cards in GiB (8 GB card = 8 GiB).

  python bench/simulate.py --suite presets --out bench/results/simulated.jsonl
  python bench/simulate.py --suite generation --out bench/results/simulated.jsonl
  python bench/simulate.py --suite calibration --out bench/results/simulated.jsonl
  python bench/simulate.py --suite presets --layers 2      # a quick look (2 layers)
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import append_rows, host_info, markdown_table

from emotion_summary.core.cli import run
from emotion_summary.core.errors import UserError

GiB = 1024**3
PLAIN_RUNNER = "plain:simulate_plain"  # bench/plain.py, on the simulated card
# unsloth's published HF + FlashAttention-2 baseline, Llama-3.1-8B QLoRA r=32: card GB -> longest context
UNSLOTH_LLAMA = [(12, 932), (16, 2551), (24, 5789), (40, 12264), (80, 28454)]
# Qwen's Q-LoRA profile, Qwen-7B (r=64, batch 1, checkpointing, flash-attn; its base is the GPTQ Int4
# model, whose 16-bit weights peft does not upcast; Qwen's code takes the loss on 16-bit logits; the
# Trainer's default fp32 AdamW): tokens -> GB
QWEN_QLORA = [(4096, 16.9), (8192, 23.5)]
PRESET_ROWS = [  # (name, preset, lengths, card)
    ("8gb, 8,192", "8gb", [8192], "rtx4060"),
    ("12gb, 32,768", "12gb", [32768], "rtx3060"),
    ("24gb, 32,768 x 2", "24gb", [32768, 32768], "rtx4090"),
    ("24gb, 32,768 + 20,000 padded", "24gb", [32768, 20000], "rtx4090"),
    ("12gb on a T4 (fp16, sm75), 32,768", "12gb", [32768], "t4"),
]

# The wrapper's generate_ids as inference runs it (groups by free memory, chunked prefill): prompts
# trimmed to max_seq_len - max_new_tokens (512).
GENERATION_ROWS = [  # (name, preset, prompt lengths, card)
    ("generate 8gb, 4 x 7,680 (default batch_size=4)", "8gb", [7680] * 4, "rtx4060"),
    ("generate 8gb, 1 x 7,680", "8gb", [7680], "rtx4060"),
    ("generate 12gb, 1 x 32,256", "12gb", [32256], "rtx3060"),
]
SIMULATED_NEW_TOKENS = 8  # decode steps simulated; each further token adds 57 KB of KV cache per sequence


def preset_jobs(layers: int | None) -> list[tuple[dict, dict]]:
    from emotion_summary.gpusim.api import job, resolve_card

    return [({"suite": "presets", "row": name}, job("train", preset, lens, resolve_card(card), layers=layers))
            for name, preset, lens, card in PRESET_ROWS]


def generation_jobs(layers: int | None) -> list[tuple[dict, dict]]:
    from emotion_summary.gpusim.api import job, resolve_card

    return [({"suite": "generation", "row": name},
             job("generate", preset, lens, resolve_card(card), layers=layers, max_new_tokens=SIMULATED_NEW_TOKENS))
            for name, preset, lens, card in GENERATION_ROWS]


def calibration_jobs(layers: int | None) -> list[tuple[dict, dict]]:
    """The published recipes, each the plain baseline (bench/plain.py) with the publication's knobs."""
    from emotion_summary.gpusim.api import job
    from emotion_summary.gpusim.cards import CARDS, card_of_size

    ampere = CARDS["a100-80gb"]
    out = [({"suite": "calibration", "row": f"unsloth Llama-3.1-8B r=32, {gb} GB card, {n:,} tokens",
             "published_gb": float(gb)},
            job("run", "24gb", [n], card_of_size(gb, ampere), "llama3.1-8b", layers, {"lora_r": 32, "lora_alpha": 32},
                flash_attn=True, runner=PLAIN_RUNNER, params={"optimizer": "adamw8bit"}))
           for gb, n in UNSLOTH_LLAMA]
    out += [({"suite": "calibration", "row": f"Qwen Q-LoRA Qwen-7B r=64, {n:,} tokens", "published_gb": gb},
             job("run", "24gb", [n], card_of_size(80, ampere), "qwen-7b", layers, {"lora_r": 64, "lora_alpha": 16},
                 flash_attn=True, runner=PLAIN_RUNNER, params={"upcast": False, "loss": "qwen1", "optimizer": "adamw"}))
            for n, gb in QWEN_QLORA]
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def simulate(suite: str = "presets", layers: int | None = None, parallel: int = 1, out: str | None = None,
             only: str | None = None) -> None:
    """Run the simulated rows and print them as a table.

    Args:
        suite: presets, generation, calibration or all.
        layers: simulate this many layers instead of the real depth (quick looks; not for the record).
        parallel: worker processes at once (each ~0.6 GB RAM, one CPU).
        out: append the rows (JSON lines) to this file, e.g. bench/results/simulated.jsonl.
        only: run only the rows whose name contains this text (e.g. "Qwen").
    """
    from emotion_summary.gpusim.api import run_jobs

    suites = {"presets": preset_jobs, "generation": generation_jobs, "calibration": calibration_jobs}
    if suite not in (*suites, "all"):
        raise UserError(f"--suite: {', '.join(suites)} or all, got {suite!r}")
    todo = [item for name, make in suites.items() if suite in (name, "all") for item in make(layers)
            if not only or only in item[0]["row"]]
    import shlex
    import sys

    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": _git_commit(), "host": host_info(),
            "command": "python bench/simulate.py " + shlex.join(sys.argv[1:]),
            "method": "simulated (fake CUDA, storage tracker, caching-allocator replay + 0.54 GB context)"}

    def one(item):
        label, spec = item
        result = run_jobs([spec], paths=[Path(__file__).resolve().parent])[0]
        row = {**label, **result, **meta}
        append_rows(out, [row])
        print(json.dumps({k: row.get(k) for k in ("row", "peak_allocated_gb", "estimated_need_gb", "fits",
                                                   "sim_seconds", "error")}), flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        rows = list(pool.map(one, todo))
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["row"], "error: " + r["error"][:80], "", "", "", ""])
            continue
        table.append([r["row"], r.get("published_gb", "-"), f"{r['peak_allocated_gb']:.2f}",
                      f"{r['min_pool_gb']:.2f}", f"{r['estimated_need_gb']:.2f}",
                      f"{r['vram_gb']:.2f} ({'fits' if r['fits'] else 'out of memory'})"])
    print(markdown_table(["row", "published GB", "peak allocated", "smallest pool", "need (+context)", "card GB"],
                         table))


if __name__ == "__main__":
    run(simulate)
