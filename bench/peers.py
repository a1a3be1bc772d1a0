"""Ours against its peers on one QLoRA training step: TRL's SFTTrainer and plain transformers + peft.

Peers (each on the same random-weight model directory, built once, and the same token ids):
  ours         Qwen2EmotionSummaryModel.for_training(preset) + wrapper.loss (LM head at the answer
               positions only), as bench/train_step.py's "ours".
  plain        the plain baseline, bench/plain.py: the textbook peft QLoRA recipe (4-bit NF4 ->
               peft.prepare_model_for_kbit_training -> get_peft_model, step = model(input_ids,
               labels=labels).loss over full logits, torch AdamW).
  trl          trl.SFTTrainer(model=<path>, quantization_config=<the same NF4 config>,
               peft_config=<the same LoRA>) on a tokenized completion-only dataset (input_ids +
               completion_mask, completion_only_loss=True): TRL's own completion-only path, default
               SFTConfig otherwise (loss_type nll, gradient checkpointing on, its default optimizer).
  trl:OPTION   the same with one of TRL's memory options (TRL_OPTIONS below).

Every (peer, length) runs in a fresh subprocess, so each peak is its own process's (not a reset
between phases in one process). Batches: random ids below the special tokens, the last
`answer_tokens` positions supervised (train_step.py's batches, same seed: same ids; each row records
a hash of its ids and the run checks they agree). One warm-up step, then `steps` timed steps
(forward + backward + optimizer step; TRL's through trainer.train(), which adds its gradient
clipping and scheduler step). tokens/s = batch x length / the median timed step.

Memory on the CPU: "step extra" = the peak RSS during the steps (VmHWM reset after the model is
built) minus the RSS after the model is built. Compute is fp32 on the CPU for every peer (ours
picks fp32 without a GPU; TRL runs with bf16=False, use_cpu=True; `trl:bf16_autocast` is TRL's
literal default there, bf16 autocast).

The check (fails the run, exit 1): every row of an NLL peer must compute the same first-step loss as
ours at the same length (LoRA B starts at 0, so it is the base model's loss on the answer), within
LOSS_RTOL (bf16 autocast: BF16_LOSS_RTOL); ours, plain and trl (default) must run; an option that
fails (activation offloading and Liger need a GPU) is a row with status "failed" and its error.

--device sim runs the same peers on the simulated GPU (emotion_summary.gpusim: fake CUDA, the real
Qwen2-7B shape, no weights): ours is the simulator's own run of the project's training step (once per
preset in --ours_presets); plain and TRL run their own code on the model the project's loader would
build (gpusim runners: bench/plain.py's simulate_plain, simulate_trl here). TRL's device checks are not
patched; what the simulator stands in for is listed at simulate_trl,
_triton_as_noop and _streams_as_synchronous. Memory only (fake tensors carry no values: no loss check,
no time). Then each peer's longest context per card (find_longest).

  python bench/peers.py --seq_lens 4096,8192 --hidden_size 256 --out bench/results/peers_cpu.jsonl
  python bench/peers.py --device sim --seq_lens 8192,16384,32768 --lora_dropout 0
      --trl_options activation_offloading,offload_reentrant --triton_site DIR --out bench/results/peers_sim.jsonl
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import append_rows, gb, host_info, markdown_table, read_status_kb, reset_peak_rss

from emotion_summary.core.cli import comma_list, run
from emotion_summary.core.errors import UserError
from emotion_summary.modeling.tokenizer import FIRST_SPECIAL_ID

PEERS = ("ours", "plain", "trl")
# TRL's memory options: SFTConfig fields set on top of the default config.
TRL_OPTIONS = {
    "dft": {"loss_type": "dft"},  # Dynamic Fine-Tuning: another objective (loss not compared)
    "padding_free": {"padding_free": True},
    "no_gc": {"gradient_checkpointing": False},
    "selective_gc": {"gradient_checkpointing_kwargs": {"selective": True}},
    "reentrant_gc": {"gradient_checkpointing_kwargs": {"use_reentrant": True}},
    "activation_offloading": {"activation_offloading": True},
    # Non-reentrant checkpointing keeps each layer's input by reference, out of reach of TRL's
    # saved-tensor hooks; the reentrant variant saves it through them, so offloading can move it.
    "offload_reentrant": {"activation_offloading": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}},
    "liger": {"use_liger_kernel": True},
    "bf16_autocast": {"bf16": True},  # CPU only: what SFTConfig's default bf16=True does there
}
BENCH = Path(__file__).resolve().parent  # the workers import this file (and plain.py) from here
REQUIRED = ("ours", "plain", "trl")  # must run; an option may be unsupported on this machine
NOT_NLL = {"trl:dft"}  # a different objective: its loss is not compared
SDPA_BACKENDS = ("math", "flash_attention")  # the kernels torch's SDPA has on a CPU
LOSS_RTOL = 1e-5
BF16_LOSS_RTOL = 2e-2


class CheckFailed(UserError):
    """The peers disagree (first-step loss, token ids) or a required peer did not run."""


# ---- the parent: plan, spawn, check, report --------------------------------------------------------
def peers(
    seq_lens: str = "4096,8192",
    peers: str = "ours,plain,trl",
    trl_options: str = "all",
    preset: str = "cpu-smoke",
    hidden_size: int | None = 256,
    intermediate_size: int | None = None,
    num_hidden_layers: int | None = None,
    steps: int = 2,
    answer_tokens: int = 200,
    out: str | None = None,
    seed: int = 0,
    timeout_s: int = 3600,
    device: str = "cpu",
    ours_presets: str = "8gb,12gb,24gb",
    cards_gb: str = "8,12,24",
    layers: int | None = None,
    triton_site: str | None = None,
    lora_dropout: float | None = None,
    reuse_rows: str | None = None,
    longest: bool = True,
    model: str | None = None,
    data: str | None = None,
    quantization: str = "nf4",
    ours_overrides: str | None = None,
    threads: int | None = None,
    sdpa_backend: str | None = None,
    compile_layers: bool = False,
) -> None:
    """One QLoRA step of ours, plain transformers + peft and TRL's SFTTrainer, measured on the CPU
    (--device cpu) or simulated on fake CUDA for the real Qwen2-7B shape (--device sim).

    Args:
        seq_lens: comma-separated tokens per sequence.
        peers: comma-separated from ours, plain, trl (none: only the --trl_options rows).
        trl_options: comma-separated TRL memory options run as extra rows (trl:OPTION), "all" or "none".
        preset: ours' preset (its memory levers; on the CPU only mlp_tile_tokens and lm_head_4bit act).
        hidden_size: widen the tiny Qwen2 (2 layers, real 152,064 vocabulary) to this hidden size.
        intermediate_size: the MLP width (default: 2.75 x hidden).
        num_hidden_layers: override the number of layers.
        steps: timed steps after one warm-up step.
        answer_tokens: supervised positions at the end of the sequence.
        out: append the JSON rows to this file.
        seed: seed of the token ids.
        timeout_s: wall-clock limit per subprocess.
        device: cpu (measured, tiny model) or sim (simulated GPU, Qwen2-7B shape; emotion_summary.gpusim).
        ours_presets: sim: ours runs once per preset (each card's longest context uses its own preset).
        cards_gb: sim: card sizes (GiB, as the presets count them) for each peer's longest context.
        layers: sim: cut the 7B shape to this many layers (a quick look; default: all 28).
        triton_site: sim: a directory holding triton (pip install --target DIR triton==3.6.0), put on
            the workers' path so TRL sees what a Linux GPU machine has (its compact LM-head branch).
        lora_dropout: sim: override the LoRA dropout of every peer (default: the preset's).
        reuse_rows: sim: a JSONL file of earlier rows: a fixed-length row of the same peer, length,
            depth and overrides is taken from it instead of simulated again.
        longest: sim: search each peer's longest context per card (not for --trl_options rows).
        model: cpu: a model directory or a name the project resolves (smollm2-135m) instead of the
            random tiny Qwen2 (--hidden_size and friends are then ignored).
        data: cpu: an ES JSONL file with gold summaries: each batch is a real report and its gold
            answer in the project's prompt, reports joined until the prompt reaches --seq_lens
            (the supervised tokens are the gold answer, not --answer_tokens random ones).
        quantization: cpu: the base weights of every peer: nf4 (bitsandbytes' CPU backend) or none.
        ours_overrides: cpu: JSON of TrainConfig fields for ours only (CPU levers, e.g.
            '{"gradient_checkpointing": false}').
        threads: cpu: torch.set_num_threads in every peer's process (default: torch's choice).
        sdpa_backend: cpu: force one SDPA kernel in every peer's step: math or flash_attention
            (default: torch's choice; --ours_overrides '{"attn_implementation": "eager"}' skips SDPA).
        compile_layers: cpu: torch.compile each of ours' decoder layers (inductor) before the steps;
            the first step then includes the compilation.
    """
    from train_step import ensure_model_dir

    if device not in ("cpu", "sim"):
        raise UserError(f"--device: cpu or sim, got {device!r}")

    chosen = [] if peers == "none" else comma_list(peers, "peers")  # none: only --trl_options rows
    if any(p not in PEERS for p in chosen):
        raise UserError(f"--peers: comma-separated from {', '.join(PEERS)} (or none), got {peers!r}")
    # The default "all" goes with the trl peer; named options run with any peers.
    options = _options(trl_options) if "trl" in chosen or not chosen or trl_options != "all" else []
    if not chosen and not options:
        raise UserError("--peers none needs --trl_options")
    lengths = comma_list(seq_lens, "seq_lens", item=int)
    if not lengths or min(lengths) <= 2 * answer_tokens or answer_tokens <= 0:
        raise UserError(f"--seq_lens: integers above 2 x --answer_tokens ({answer_tokens}), got {seq_lens!r}")
    if device == "sim":
        return run_sim(lengths, chosen, options, comma_list(ours_presets, "ours_presets"),
                       comma_list(cards_gb, "cards_gb", item=float), answer_tokens, layers, triton_site, out,
                       timeout_s, {} if lora_dropout is None else {"lora_dropout": lora_dropout}, reuse_rows,
                       longest)
    overrides = {k: v for k, v in {"hidden_size": hidden_size, "intermediate_size": intermediate_size,
                                   "num_hidden_layers": num_hidden_layers}.items() if v}
    if hidden_size and not intermediate_size:
        overrides["intermediate_size"] = int(hidden_size * 2.75)
    if model:
        model_path, overrides = _resolved_model(model), {}
    else:
        model_path = ensure_model_dir("tiny", overrides, timeout_s)  # the one model build
    if model_path == "tiny":  # the project's own tiny model: a directory the peers can load too
        from emotion_summary.modeling.architectures import build_tiny_qwen2

        model_path = str(build_tiny_qwen2())
    if sdpa_backend not in (None, *SDPA_BACKENDS):
        raise UserError(f"--sdpa_backend: {' or '.join(SDPA_BACKENDS)}, got {sdpa_backend!r}")
    if quantization not in ("nf4", "none"):
        raise UserError(f"--quantization: nf4 or none, got {quantization!r}")
    host = host_info()
    base = {"bench": "peers", "device": "cpu", "arch": model or "tiny", "arch_overrides": overrides,
            "preset": preset, "model_name_or_path": model_path, "steps": steps, "batch_size": 1,
            "answer_tokens": answer_tokens, "seed": seed, "data": data, "quantization": quantization,
            "ours_overrides": json.loads(ours_overrides) if ours_overrides else {}, "threads": threads,
            "sdpa_backend": sdpa_backend, "compile_layers": compile_layers}
    variants = chosen + [f"trl:{o}" for o in options]
    rows = []
    for seq_len in lengths:
        for variant in variants:
            row = {**host, **base, "variant": variant, "seq_len": seq_len}
            row.update(_spawn({**base, "variant": variant, "seq_len": seq_len}, timeout_s))
            print(json.dumps(row, ensure_ascii=False), flush=True)
            append_rows(out, [row])  # as it comes: a long run keeps what it measured
            rows.append(row)
    problems = check(rows)
    print(report(rows))
    if problems:
        raise CheckFailed("peers check failed:\n" + "\n".join(f"- {p}" for p in problems))
    print("check passed: the same token ids and first-step loss in every NLL row")


def _options(value: str) -> list[str]:
    if value == "all":
        return list(TRL_OPTIONS)
    if value in ("none", ""):
        return []
    names = comma_list(value, "trl_options")
    bad = [n for n in names if n not in TRL_OPTIONS]
    if bad:
        raise UserError(f"--trl_options: from {', '.join(TRL_OPTIONS)} (or all, none), got {', '.join(bad)}")
    return names


def check(rows: list[dict]) -> list[str]:
    """What is wrong with a set of rows (empty: the check passes)."""
    problems = []
    for seq_len in sorted({r["seq_len"] for r in rows}):
        at = {r["variant"]: r for r in rows if r["seq_len"] == seq_len}
        for name in REQUIRED:
            if name in at and at[name]["status"] != "ok":
                problems.append(f"{name} at {seq_len}: {at[name]['status']}: {at[name].get('error')}")
        hashes = {r["ids_sha1"] for r in at.values() if r.get("ids_sha1")}
        if len(hashes) > 1:
            problems.append(f"{seq_len}: the peers saw different token ids")
        ref = at.get("ours")
        if not ref or ref.get("loss_first") is None:
            continue
        for name, r in at.items():
            if name == "ours" or name in NOT_NLL or r["status"] != "ok":
                continue
            sixteen_bit = r.get("autocast_bf16") or (ref.get("ours_overrides") or {}).get("compute_dtype") in (
                "bf16", "fp16")  # ours in 16-bit: the fp32 peers agree to 16-bit precision
            rtol = BF16_LOSS_RTOL if sixteen_bit else LOSS_RTOL
            got = r.get("loss_first")
            if got is None or not math.isclose(got, ref["loss_first"], rel_tol=rtol):
                problems.append(f"{name} at {seq_len}: first-step loss {got} != ours {ref['loss_first']} "
                                f"(rtol {rtol})")
    return problems


def report(rows: list[dict]) -> str:
    header = ["peer", "seq_len", "status", "after load GB", "step peak GB", "step extra GB", "tokens/s",
              "first-step loss", "extra vs ours"]
    ours = {r["seq_len"]: r for r in rows if r["variant"] == "ours" and r["status"] == "ok"}
    table = []
    for r in rows:
        ref = ours.get(r["seq_len"])
        ratio = (f"{r['step_extra_bytes'] / ref['step_extra_bytes']:.2f}x"
                 if ref and r.get("step_extra_bytes") and r is not ref else None)
        table.append([r["variant"], r["seq_len"], r["status"], gb(r.get("rss_after_load_bytes")),
                      gb(r.get("step_peak_rss_bytes")), gb(r.get("step_extra_bytes")),
                      None if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:.0f}",
                      None if r.get("loss_first") is None else f"{r['loss_first']:.6f}", ratio])
    return markdown_table(header, table)


def run_sim(lengths, chosen, options, presets, cards, answer_tokens, layers, triton_site, out, timeout_s, overrides,
            reuse_rows=None, search=True):
    """Every peer at every length on the simulated GPU, then each peer's longest context per card:
    the need line through those rows (linear in the length), checked by simulating the length it
    predicts (must fit) and 512 tokens more (must not)."""
    from dataclasses import asdict

    from emotion_summary.gpusim.cards import CARDS, GiB, PRESET_CARDS, card_of_size

    host = host_info()
    base = {"bench": "peers", "device": "sim", "arch": "qwen2-7b", "layers": layers, "batch_size": 1,
            "answer_tokens": answer_tokens, "card": asdict(CARDS["rtx4090"]), "triton_site": triton_site,
            "overrides": overrides, "code_commit": _commit()}
    lines = [f"ours@{p}" for p in presets if "ours" in chosen] + [v for v in chosen if v != "ours"] \
        + [f"trl:{o}" for o in options]

    def simulate(line: str, seq_len: int, card=None, kind="length") -> dict:
        variant, _, preset = line.partition("@")
        spec = {**base, "variant": variant, "preset": preset or "12gb", "seq_len": seq_len}
        if card:
            spec["card"] = asdict(card)
        row = {**host, **spec, "line": line, "row_kind": kind, **simulated_row(spec, timeout_s)}
        row.pop("traceback", None)
        print(json.dumps({k: row.get(k) for k in ("line", "seq_len", "status", "estimated_need_gb", "fits",
                                                   "card", "error")}), flush=True)
        append_rows(out, [row])
        return row

    earlier = {}
    for r in (json.loads(x) for x in Path(reuse_rows).read_text().splitlines() if x.strip()) if reuse_rows else ():
        if r.get("row_kind") == "length" and r.get("status") == "ok" and r.get("layers") == layers \
                and (r.get("overrides") or {}) == overrides:
            earlier[(r["line"], r["seq_len"])] = r
    rows = [earlier.get((line, n)) or simulate(line, n) for n in lengths for line in lines]
    longest = []
    for gib in cards if search else ():
        for line in lines:
            if ":" in line:  # TRL options: fixed lengths only (each costs a simulation per probe)
                continue
            if line.startswith("ours@") and PRESET_CARDS.get(line[5:]) and \
                    CARDS[PRESET_CARDS[line[5:]]].total_bytes != int(gib * GiB):
                continue  # ours on a card: that card's preset
            like = CARDS[PRESET_CARDS.get(line[5:], "rtx4090")] if line.startswith("ours@") else CARDS["rtx4090"]
            card = card_of_size(gib, like)
            longest.append(find_longest(line, [r for r in rows if r["line"] == line and r["status"] == "ok"],
                                        card, lambda n, c=card, l=line: simulate(l, n, c, "probe")))
    for row in longest:
        append_rows(out, [{**host, **base, **row, "row_kind": "longest"}])
    print(report_sim(rows, longest))
    problems = [f"{r['line']} at {r['seq_len']}: {r['status']}: {r.get('error')}" for r in rows
                if r["status"] != "ok" and r["line"].split(":")[0].split("@")[0] in REQUIRED and ":" not in r["line"]]
    if problems:
        raise CheckFailed("simulated peers failed:\n" + "\n".join(f"- {p}" for p in problems))


def _commit() -> str | None:
    """The commit of the code that ran (plus '+dirty' for uncommitted changes), for the record."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src", "bench"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def find_longest(line: str, rows: list[dict], card, simulate, step: int = 512, limit: int = 32768) -> dict:
    """The longest multiple of `step` (up to Qwen2's 32,768 positions) whose simulated need fits
    `card`: the need curve through `rows` (need_curve) gives a guess, which the planner's search
    (gpusim.planner.longest_fitting) confirms with a simulation at the guess and one at guess + step,
    moving on from there when the curve was off. Rows already simulated count as probes."""
    from emotion_summary.gpusim.planner import longest_fitting

    out = {"line": line, "card": card.name, "vram_gib": card.total_bytes / 2**30, "max_seq_len": None}
    if len(rows) < 2:
        return {**out, "status": "no rows"}
    coef = need_curve([r["seq_len"] for r in rows], [r["estimated_need_gb"] * 1e9 for r in rows])
    guess = _solve(coef, card.total_bytes) // step * step
    probes = {r["seq_len"]: r["estimated_need_gb"] * 1e9 <= card.total_bytes for r in rows}

    def fits(k):
        if k not in probes:
            r = simulate(k)
            probes[k] = r["status"] == "ok" and r["estimated_need_gb"] * 1e9 <= card.total_bytes
        return probes[k]

    n = longest_fitting(fits, step, limit, step, start=guess, first_gap=step)
    return {**out, "status": "ok", "max_seq_len": n, "at_limit": n == limit, "curve_guess": guess,
            "need_gb_curve": [c / 1e9 for c in coef], "probes": sorted(probes.items())}


def need_curve(xs: list[int], ys: list[float]) -> list[float]:
    """need(L) = a + b L + c L^2 through the rows (least squares; c = 0 with two rows). The need is
    linear in L for every kernel that streams attention; a peer whose attention falls back to the
    math path (an L x L matrix per head) grows with L^2."""
    import numpy as np

    degree = min(2, len(set(xs)) - 1)
    return [float(c) for c in np.polyfit(np.array(xs, float), np.array(ys, float), degree)[::-1]] + [0.0] * (2 - degree)


def _solve(coef: list[float], total: float) -> int:
    """The largest L >= 0 with a + b L + c L^2 <= total (0 if none)."""
    a, b, c = coef
    if abs(c) < 1e-12 * max(abs(b), 1):
        return max(0, int((total - a) / b)) if b > 0 else 10**9
    disc = b * b - 4 * c * (a - total)
    if disc < 0:
        return 0
    roots = [(-b + sign * math.sqrt(disc)) / (2 * c) for sign in (1, -1)]
    return max(0, int(max(r for r in roots if c > 0 or r >= 0)) if c > 0 else int(min(roots)))


def report_sim(rows: list[dict], longest: list[dict]) -> str:
    header = ["peer", "seq_len", "status", "weights GB", "peak allocated GB", "estimated need GB",
              "need vs trl"]
    trl = {r["seq_len"]: r for r in rows if r["line"] == "trl" and r["status"] == "ok"}
    table = []
    for r in rows:
        ref = trl.get(r["seq_len"])
        ok = r["status"] == "ok"
        table.append([r["line"], r["seq_len"], r["status"], f"{r['weights_gb']:.2f}" if ok else None,
                      f"{r['peak_allocated_gb']:.2f}" if ok else None,
                      f"{r['estimated_need_gb']:.2f}" if ok else None,
                      f"{r['estimated_need_gb'] / ref['estimated_need_gb']:.2f}x" if ok and ref else None])
    lines = [f"- {r['line']} on {r['vram_gib']:g} GiB: longest {r['max_seq_len']}"
             + (" (Qwen2's 32,768 positions)" if r.get("at_limit") else "") for r in longest]
    return markdown_table(header, table) + "\n\n" + "\n".join(lines)


def _spawn(spec: dict, timeout_s: int) -> dict:
    """`worker(spec)` in a fresh process (its peak memory is its own); a dead process is a row too."""
    from emotion_summary.core.subprocess_jobs import WorkerDied, run_in_worker

    try:
        row = run_in_worker("peers:worker", [spec], timeout_s, paths=[BENCH])[0]
    except WorkerDied as e:
        return {"status": "crashed", "error": str(e)[-1500:]}
    return {"status": "crashed", **row} if "traceback" in row else row


def simulated_row(spec: dict, timeout_s: int) -> dict:
    """One peer at one length on the simulated GPU (gpusim's worker): ours is the simulator's run of
    the project's training step, plain and TRL run their own code (runners) on the fake base model."""
    from emotion_summary.gpusim.api import SimulationError, job, run_jobs
    from emotion_summary.gpusim.cards import Card

    peer, _, option = spec["variant"].partition(":")
    card = Card(**{**spec["card"], "capability": tuple(spec["card"]["capability"])})
    common = dict(preset=spec["preset"], seq_lens=[spec["seq_len"]], card=card, arch=spec["arch"],
                  layers=spec.get("layers"), overrides=spec.get("overrides") or {},
                  answer_tokens=spec["answer_tokens"])
    one = (job("train", **common) if peer == "ours" else
           job("run", **common, runner="plain:simulate_plain") if peer == "plain" else
           job("run", **common, runner="peers:simulate_trl", params={"option": option or None}))
    try:
        result = run_jobs([one], timeout_s, paths=[BENCH, spec.get("triton_site")])[0]
    except SimulationError as e:
        return {"status": "crashed", "error": str(e)[-1500:]}
    if "error" in result:  # an option the simulator cannot run is a row; the parent decides the rest
        return {"status": "failed", **result}
    return {"status": "ok", **result}


# ---- the subprocess: one peer at one length -------------------------------------------------------
def _resolved_model(name: str) -> str:
    """A directory as given; a name through the project's resolver (e.g. smollm2-135m)."""
    if Path(name).is_dir():
        return str(Path(name).resolve())
    from emotion_summary.modeling.loading import resolve_model_path

    return resolve_model_path(name)


def make_batch(spec: dict) -> dict:
    return real_batch(spec) if spec.get("data") else random_batch(spec)


def real_batch(spec: dict) -> dict:
    """A real ES example as the trainer encodes it (the model's chat template, the project's prompt,
    the gold answer supervised), its report lengthened by the next reports' consultation text until
    the prompt fills `seq_len` (the trainer trims it to fit): the same ids for the same file and length."""
    import dataclasses

    import torch
    from transformers import AutoTokenizer

    from emotion_summary.data.records import read_records
    from emotion_summary.prompting.encode import encode_example
    from emotion_summary.prompting.prompt import PromptSpec

    tokenizer = AutoTokenizer.from_pretrained(spec["model_name_or_path"])
    records = read_records(spec["data"], require_gold=True)
    first, words, process = records[0], 0, []
    for r in records:  # ~1.3 tokens per word: enough text for seq_len, then trimmed to it
        process += list(r.consultation_process)
        words += sum(len(p.split()) for p in r.consultation_process)
        if words > spec["seq_len"]:
            break
    long_record = dataclasses.replace(first, consultation_process=tuple(process))
    ex = encode_example(tokenizer, PromptSpec(language="en"), long_record, spec["seq_len"])
    ids = torch.tensor([ex["input_ids"]] * spec["batch_size"])
    labels = torch.tensor([ex["labels"]] * spec["batch_size"])
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def random_batch(spec: dict) -> dict:
    """train_step.py's synthetic batch: the same ids for the same seed and length."""
    import torch

    from emotion_summary.modeling.loss import IGNORE_INDEX

    seq_len = spec["seq_len"]
    g = torch.Generator().manual_seed(spec["seed"] + seq_len)
    ids = torch.randint(0, FIRST_SPECIAL_ID, (spec["batch_size"], seq_len), generator=g)
    labels = ids.clone()
    labels[:, : seq_len - spec["answer_tokens"]] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def ids_sha1(batch: dict) -> str:
    h = hashlib.sha1(batch["input_ids"].numpy().tobytes())
    h.update(batch["labels"].numpy().tobytes())
    return h.hexdigest()[:16]


def project_config(spec: dict):
    from emotion_summary.training.config import resolve_config

    return resolve_config(spec["preset"], model_name_or_path=spec["model_name_or_path"],
                          batch_size=spec["batch_size"], max_seq_len=spec["seq_len"], seed=spec["seed"],
                          quantization=spec.get("quantization", "nf4"),
                          **(spec.get("ours_overrides") or {} if spec["variant"] == "ours" else {}))


def build_ours(spec: dict, cfg):
    """(step function, optimizer, info): the project's model and answer-only loss."""
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
    from emotion_summary.training.step import make_optimizer

    wrapper = Qwen2EmotionSummaryModel.for_training(cfg)
    wrapper.model.train()
    info: dict = {"optimizer": "make_optimizer (preset)"}
    if spec.get("compile_layers"):
        compiled = [m for m in wrapper.model.modules() if type(m).__name__.endswith("DecoderLayer")]
        for layer in compiled:
            layer.compile()  # in place: the checkpointing wrapper around each layer stays as it is
        info["compiled_layers"] = len(compiled)
    params = [p for p in wrapper.model.parameters() if p.requires_grad]
    return wrapper.loss, make_optimizer(cfg, params), info


def build_plain(spec: dict, cfg):
    """The plain baseline (bench/plain.py) with the project's NF4 and LoRA settings."""
    from plain import load_plain, loss_fn, optimizer

    from emotion_summary.modeling.device import device

    model = load_plain(cfg)
    model.train()
    dev, loss = device(), loss_fn(model)

    def step_loss(batch):
        return loss({k: v.to(dev) for k, v in batch.items()})

    return step_loss, optimizer(model, cfg.learning_rate), {"optimizer": "torch AdamW"}


def measure_steps(step_loss, optimizer, batch: dict, steps: int) -> dict:
    """Warm-up + timed steps: forward, backward, optimizer step (steps=0: the first step is timed,
    no warm-up). Wall-clock and process CPU seconds (all threads) per step."""
    losses, times, cpu = [], [], []
    for i in range(1 + steps if steps else 1):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if i or not steps:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"losses": losses, "step_times_s": times, "step_cpu_s": cpu}


def run_trl(spec: dict, cfg, batch: dict, option: str | None) -> tuple[dict, dict]:
    """trainer.train() for 1 + steps optimizer steps on a one-row tokenized completion-only dataset."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from emotion_summary.modeling.device import attn_implementation, compute_dtype
    from emotion_summary.modeling.adapters import lora_config
    from emotion_summary.modeling.loading import quantization_config

    cuda = torch.cuda.is_available()
    dtype = compute_dtype(cfg.compute_dtype)
    extra = dict(TRL_OPTIONS.get(option or "", {}))
    args = SFTConfig(
        output_dir=str(Path(spec["workdir"]) / "trl"),
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        completion_only_loss=True, max_length=None, learning_rate=cfg.learning_rate, seed=spec["seed"],
        max_steps=1 + spec["steps"] if spec["steps"] else 1,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        **{"use_cpu": not cuda, "bf16": cuda, **extra},
        model_init_kwargs={"dtype": dtype, "attn_implementation": attn_implementation(cfg.attn_implementation)})
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    dataset = Dataset.from_list([{"input_ids": ids, "completion_mask": [int(t != -100) for t in labels]}])
    losses: list[float] = []
    times: list[float] = []

    class Measured(SFTTrainer):
        def compute_loss(self, *a, **k):
            loss = super().compute_loss(*a, **k)
            losses.append(float(loss.detach().float().item()))
            return loss

    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)
            cpu.append(time.process_time() - self.c0)

    trainer = Measured(model=cfg.model_name_or_path, args=args, train_dataset=dataset,
                       processing_class=AutoTokenizer.from_pretrained(cfg.model_name_or_path),
                       quantization_config=quantization_config(cfg.quantization, dtype), peft_config=lora_config(cfg),
                       callbacks=[Clock()])
    seen = trainer.train_dataset[0]
    if seen["input_ids"] != ids or seen["labels"] != labels:
        raise RuntimeError("TRL's prepared dataset differs from the batch (ids or labels)")
    info = {"optimizer": str(args.optim), "trl_args": {k: getattr(args, k) for k in
            ("loss_type", "padding_free", "gradient_checkpointing", "gradient_checkpointing_kwargs",
             "activation_offloading", "use_liger_kernel", "bf16", "completion_only_loss")},
            "autocast_bf16": bool(args.bf16)}

    def train():
        trainer.train()
        timed = slice(1, None) if spec["steps"] else slice(None)
        return {"losses": losses, "step_times_s": times[timed], "step_cpu_s": cpu[timed]}

    return train, info


def worker(spec: dict) -> dict:
    """One peer at one length, measured in this (fresh) process: see _spawn."""
    import torch

    spec = {**spec, "workdir": spec.get("workdir") or tempfile.mkdtemp(prefix="peers-")}

    variant = spec["variant"]
    peer, _, option = variant.partition(":")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfg = project_config(spec)
    torch.manual_seed(spec["seed"])
    batch = make_batch(spec)
    row: dict = {"status": "ok", "error": None, "ids_sha1": ids_sha1(batch)}
    try:
        if peer == "trl":
            train, info = run_trl(spec, cfg, batch, option or None)
        else:
            step_loss, optimizer, info = (build_ours if peer == "ours" else build_plain)(spec, cfg)

            def train():
                return measure_steps(step_loss, optimizer, batch, spec["steps"])
        row.update(info)
        row["rss_after_load_bytes"] = read_status_kb("VmRSS")
        row["peak_rss_reset"] = reset_peak_rss()
        with _sdpa_kernel(spec.get("sdpa_backend")):
            result = train()
    except Exception as e:  # reported in the row; the parent's check decides whether it fails the run
        if option and option in TRL_OPTIONS:
            return {**row, "status": "failed", "error": f"{type(e).__name__}: {str(e)[:400]}"}
        raise
    row["step_peak_rss_bytes"] = read_status_kb("VmHWM")
    row["step_extra_bytes"] = row["step_peak_rss_bytes"] - row["rss_after_load_bytes"]
    losses, times = result["losses"], result["step_times_s"]
    row["losses"] = losses
    row["loss_first"] = losses[0] if losses and math.isfinite(losses[0]) else None
    row["tokens"] = int(batch["input_ids"].numel())  # a real report may end a little short of seq_len
    if times:
        row["step_times_s"] = [round(t, 4) for t in times]
        row["step_s"] = statistics.median(times)
        row["tokens_per_s"] = row["tokens"] / row["step_s"]
        row["step_cpu_s"] = statistics.median(result["step_cpu_s"])
        row["tokens_per_cpu_s"] = row["tokens"] / row["step_cpu_s"]
        row["loadavg_1m_after"] = os.getloadavg()[0]
    return row


def _sdpa_kernel(name: str | None):
    """A context that forces one SDPA backend (None: torch's own choice)."""
    import contextlib

    if not name:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, name.upper()))


# ---- simulated GPU (emotion_summary.gpusim): TRL's own code on the fake base model ----------------
SIM_STEPS = 2  # the first creates the optimizer state, the second is a steady step; peak over both


def simulate_trl(sim) -> dict:
    """gpusim runner: SFTTrainer.train() on the base model the project's loader would build (TRL's
    own device checks see the simulated CUDA card). What the simulator stands in for: the
    from_pretrained attributes (_as_from_pretrained), Triton launches (_triton_as_noop) and, for
    activation offloading, CUDA streams (_streams_as_synchronous)."""
    import contextlib
    from unittest import mock

    option = sim.job.params.get("option")
    n = sim.job.seq_lens[0]
    sim.tracker.oracle.nonzero_rows = min(sim.job.answer_tokens, n - 1)
    streams = _streams_as_synchronous() if option in ("activation_offloading", "offload_reentrant") else []
    with contextlib.ExitStack() as stack:
        for target, name, value in _triton_as_noop() + streams:
            stack.enter_context(mock.patch.object(target, name, value))
        base, _ = sim.base_model(quantization="nf4", lm_head_4bit=False)
        _as_from_pretrained(base)
        weights_bytes = sim.tracker.now
        info = _sim_trl(base, sim.config, {"seq_len": n, "answer_tokens": sim.job.answer_tokens}, sim.tracker,
                        option)
    return {"weights_gb": weights_bytes / 1e9, **info}


def _as_from_pretrained(model) -> None:
    """The attributes from_pretrained's bitsandbytes quantizer leaves on a 4-bit model (the simulator
    builds it from the config): Trainer reads them to leave a 4-bit model where it was loaded."""
    from transformers.quantizers.auto import AutoHfQuantizer

    qcfg = model.config.quantization_config
    model.hf_quantizer = AutoHfQuantizer.from_config(qcfg, pre_quantized=False)
    model.is_quantized = True
    model.quantization_method = qcfg.quant_method
    model.hf_device_map = {"": 0}


def _sim_trl(base, cfg, spec, tracker, option) -> dict:
    """SFTTrainer.train() for SIM_STEPS steps on the fake model: TRL's own device checks see CUDA."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.kernels.chunked_logprob import _use_triton

    from emotion_summary.modeling.architectures import build_tiny_qwen2
    from emotion_summary.modeling.adapters import lora_config

    n, answer = spec["seq_len"], spec["answer_tokens"]
    args = SFTConfig(output_dir=str(Path(tempfile.mkdtemp(prefix="peers-trl-")) / "trl"), max_steps=SIM_STEPS,
                     per_device_train_batch_size=1, completion_only_loss=True, max_length=None,
                     learning_rate=cfg.learning_rate, logging_steps=1, save_strategy="no", report_to=[],
                     disable_tqdm=True, dataloader_num_workers=0,
                     dataloader_pin_memory=False,  # host memory only; pinning needs a real driver
                     **TRL_OPTIONS.get(option or "", {}))
    row = {"input_ids": [0] * n, "completion_mask": [0] * (n - answer) + [1] * answer}
    # Two equal rows: the sampler's shuffle reads fake values (the simulator answers 1 for an index).
    dataset = Dataset.from_list([row, row])
    tokenizer = AutoTokenizer.from_pretrained(str(build_tiny_qwen2()))  # the real Qwen2 tokenizer

    class Phases(TrainerCallback):
        def on_train_begin(self, *a, **k):
            tracker.reset_peak()  # after SFTTrainer built the adapter; the optimizer comes in train()
            tracker.category_name = "saved activations"

        def on_step_begin(self, args, state, control, **k):
            if state.global_step == SIM_STEPS - 1 and tracker.work is not None:
                tracker.work.reset()  # time counts the steady step only (the optimizer state exists)

        def on_pre_optimizer_step(self, *a, **k):
            tracker.category_name = "lora + optimizer"

        def on_step_end(self, *a, **k):
            tracker.category_name = "saved activations"

    with tracker.category("lora + optimizer"):
        trainer = SFTTrainer(model=base, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora_config(cfg), callbacks=[Phases()])
    trainer.train()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return {"optimizer": str(args.optim), "lora_dtype": str(params[0].dtype),
            "trl_fused_lm_head_compact": _use_triton(next(trainer.model.parameters()).device),
            "trl_args": {k: getattr(args, k) for k in ("loss_type", "padding_free", "gradient_checkpointing",
                                                        "gradient_checkpointing_kwargs", "activation_offloading",
                                                        "bf16", "completion_only_loss")}}


class _Stream:
    """A CUDA stream or event on the simulated card: work runs in program order, so waits are no-ops."""

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def wait_stream(self, *a):
        pass

    wait_event = record = synchronize = record_event = wait = wait_stream

    def query(self):
        return True


def _streams_as_synchronous() -> list:
    """TRL's activation offloading copies on a side stream and syncs it with events; the simulator
    runs every op in program order, so the copies land when the Python code issues them and a
    tensor lives as long as TRL's own stashes keep it (the real overlap can only hold it longer)."""
    import torch

    current = _Stream()
    return [(torch.cuda, "Stream", _Stream), (torch.cuda, "Event", _Stream),
            (torch.cuda, "stream", lambda s=None: _Stream()), (torch.cuda, "current_stream", lambda *a: current),
            (torch.cuda, "default_stream", lambda *a: current),
            (torch.Tensor, "record_stream", lambda self, stream: None)]


def _triton_as_noop() -> list:
    """Triton kernels cannot run on fake tensors. TRL's log-prob kernels fold a tile that TRL has
    already allocated into per-row statistics it has also allocated: they allocate nothing, so a
    launch is simulated as nothing. Without Triton installed there is nothing to patch (and TRL
    then takes its torch fallback, which scores every position)."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return []
    return [(JITFunction, "run", lambda self, *a, **k: None)]


if __name__ == "__main__":
    run(peers)
