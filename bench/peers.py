"""Ours against its peers on one QLoRA training step: TRL's SFTTrainer and plain transformers + peft.

Peers (each on the same random-weight model directory, built once, and the same token ids):
  ours         Qwen2EmotionSummaryModel.for_training(preset) + wrapper.loss (LM head at the answer
               positions only), as bench/train_step.py's "ours".
  plain        the textbook peft QLoRA recipe: AutoModelForCausalLM.from_pretrained(4-bit NF4) ->
               peft.prepare_model_for_kbit_training -> get_peft_model, step = model(input_ids,
               labels=labels).loss (full logits over the sequence), torch AdamW.
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

  python bench/peers.py --seq_lens 4096,8192 --hidden_size 256 --out bench/results/peers_cpu.jsonl
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import append_rows, gb, host_info, markdown_table, read_status_kb, reset_peak_rss

from emotion_summary.cli import run
from emotion_summary.cli_args import as_list
from emotion_summary.errors import UserError
from emotion_summary.qwen_tokenizer_offline import FIRST_SPECIAL_ID

PEERS = ("ours", "plain", "trl")
# TRL's memory options: SFTConfig fields set on top of the default config.
TRL_OPTIONS = {
    "dft": {"loss_type": "dft"},  # Dynamic Fine-Tuning: another objective (loss not compared)
    "padding_free": {"padding_free": True},
    "no_gc": {"gradient_checkpointing": False},
    "selective_gc": {"gradient_checkpointing_kwargs": {"selective": True}},
    "reentrant_gc": {"gradient_checkpointing_kwargs": {"use_reentrant": True}},
    "activation_offloading": {"activation_offloading": True},
    "liger": {"use_liger_kernel": True},
    "bf16_autocast": {"bf16": True},  # CPU only: what SFTConfig's default bf16=True does there
}
REQUIRED = ("ours", "plain", "trl")  # must run; an option may be unsupported on this machine
NOT_NLL = {"trl:dft"}  # a different objective: its loss is not compared
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
) -> None:
    """One QLoRA step of ours, plain transformers + peft and TRL's SFTTrainer, measured on the CPU.

    Args:
        seq_lens: comma-separated tokens per sequence.
        peers: comma-separated from ours, plain, trl.
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
    """
    from train_step import ensure_model_dir

    chosen = as_list(peers, "peers")
    if not chosen or any(p not in PEERS for p in chosen):
        raise UserError(f"--peers: comma-separated from {', '.join(PEERS)}, got {peers!r}")
    options = _options(trl_options) if "trl" in chosen else []
    lengths = as_list(seq_lens, "seq_lens", item=int)
    if not lengths or min(lengths) <= 2 * answer_tokens or answer_tokens <= 0:
        raise UserError(f"--seq_lens: integers above 2 x --answer_tokens ({answer_tokens}), got {seq_lens!r}")
    overrides = {k: v for k, v in {"hidden_size": hidden_size, "intermediate_size": intermediate_size,
                                   "num_hidden_layers": num_hidden_layers}.items() if v}
    if hidden_size and not intermediate_size:
        overrides["intermediate_size"] = int(hidden_size * 2.75)
    model_path = ensure_model_dir("tiny", overrides, timeout_s)  # the one model build
    if model_path == "tiny":  # the project's own tiny model: a directory the peers can load too
        from emotion_summary.architectures import build_tiny_qwen2

        model_path = str(build_tiny_qwen2())
    host = host_info()
    base = {"bench": "peers", "device": "cpu", "arch": "tiny", "arch_overrides": overrides, "preset": preset,
            "model_name_or_path": model_path, "steps": steps, "batch_size": 1, "answer_tokens": answer_tokens,
            "seed": seed}
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
    names = as_list(value, "trl_options")
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
            rtol = BF16_LOSS_RTOL if r.get("autocast_bf16") else LOSS_RTOL
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


def _spawn(spec: dict, timeout_s: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps({**spec, "workdir": tmp}))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file), str(result_file)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
        except subprocess.TimeoutExpired as e:
            rc, tail = "timeout", str(e)
        if result_file.is_file():
            return json.loads(result_file.read_text())
    return {"status": "crashed", "error": f"exit {rc}: {tail[-1500:]}"}


# ---- the subprocess: one peer at one length -------------------------------------------------------
def make_batch(spec: dict) -> dict:
    """train_step.py's synthetic batch: the same ids for the same seed and length."""
    import torch

    from emotion_summary.loss import IGNORE_INDEX

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
    from emotion_summary.config import resolve_config

    return resolve_config(spec["preset"], model_name_or_path=spec["model_name_or_path"],
                          batch_size=spec["batch_size"], max_seq_len=spec["seq_len"], seed=spec["seed"])


def build_ours(spec: dict, cfg):
    """(step function, optimizer, info): the project's model and answer-only loss."""
    from emotion_summary.model import Qwen2EmotionSummaryModel
    from emotion_summary.train import make_optimizer

    wrapper = Qwen2EmotionSummaryModel.for_training(cfg)
    wrapper.model.train()
    params = [p for p in wrapper.model.parameters() if p.requires_grad]
    return wrapper.loss, make_optimizer(cfg, params), {"optimizer": "make_optimizer (preset)"}


def build_plain(spec: dict, cfg):
    """The textbook peft QLoRA recipe with the project's NF4 and LoRA settings."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from emotion_summary.model import attn_implementation, compute_dtype, device, lora_config, quantization_config

    dtype = compute_dtype(cfg.compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model_name_or_path, dtype=dtype, quantization_config=quantization_config("nf4", dtype),
        attn_implementation=attn_implementation(cfg.attn_implementation),
        device_map={"": 0} if torch.cuda.is_available() else "cpu")
    model = prepare_model_for_kbit_training(model)  # upcasts 16-bit weights to fp32, checkpointing on
    model = get_peft_model(model, lora_config(cfg))
    model.train()
    dev = device()

    def step_loss(batch):
        return model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                     labels=batch["labels"].to(dev)).loss

    params = [p for p in model.parameters() if p.requires_grad]
    return step_loss, torch.optim.AdamW(params, lr=cfg.learning_rate), {"optimizer": "torch AdamW"}


def measure_steps(step_loss, optimizer, batch: dict, steps: int) -> dict:
    """Warm-up + timed steps: forward, backward, optimizer step."""
    losses, times = [], []
    for i in range(1 + steps):
        t0 = time.perf_counter()
        loss = step_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if i:
            times.append(time.perf_counter() - t0)
    return {"losses": losses, "step_times_s": times}


def run_trl(spec: dict, cfg, batch: dict, option: str | None) -> tuple[dict, dict]:
    """trainer.train() for 1 + steps optimizer steps on a one-row tokenized completion-only dataset."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from emotion_summary.model import attn_implementation, compute_dtype, lora_config, quantization_config

    cuda = torch.cuda.is_available()
    dtype = compute_dtype(cfg.compute_dtype)
    extra = dict(TRL_OPTIONS.get(option or "", {}))
    args = SFTConfig(
        output_dir=str(Path(spec["workdir"]) / "trl"), max_steps=1 + spec["steps"],
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        completion_only_loss=True, max_length=None, learning_rate=cfg.learning_rate, seed=spec["seed"],
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

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    trainer = Measured(model=cfg.model_name_or_path, args=args, train_dataset=dataset,
                       processing_class=AutoTokenizer.from_pretrained(cfg.model_name_or_path),
                       quantization_config=quantization_config("nf4", dtype), peft_config=lora_config(cfg),
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
        return {"losses": losses, "step_times_s": times[1:]}

    return train, info


def worker(spec: dict) -> dict:
    import torch

    variant = spec["variant"]
    peer, _, option = variant.partition(":")
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
    if times:
        row["step_times_s"] = [round(t, 4) for t in times]
        row["step_s"] = statistics.median(times)
        row["tokens_per_s"] = spec["batch_size"] * spec["seq_len"] / row["step_s"]
    return row


def _worker_main(spec_file: str, result_file: str) -> None:
    from emotion_summary.atomic_io import atomic_write_json

    atomic_write_json(result_file, worker(json.loads(Path(spec_file).read_text())))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # internal: one measured subprocess (see _spawn)
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        run(peers)
