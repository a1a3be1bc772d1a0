"""Peak memory and tokens/s of one QLoRA training step: ours against a plain transformers+peft step.

"ours":  the wrapper's `loss()` (LM head at the ~200 answer positions only) with the preset's memory
         levers (offload_activations, mlp_tile_tokens, embedding_on_cpu, lm_head_4bit, Liger kernels).
"plain": the plain baseline of bench/plain.py (the textbook peft QLoRA recipe: NF4 base, peft's k-bit
         preparation, `model(input_ids, labels=labels).loss` over full fp32 logits, torch AdamW).

Each (variant, sequence length) runs in a fresh subprocess, so its peak memory is its own. Batches are
synthetic: random token ids, the last `answer_tokens` positions supervised, the rest masked (-100).
One warm-up step (it also allocates the optimizer state), then `steps` timed steps, each forward +
backward + optimizer step; tokens/s is batch x length / the median step time. Peak memory covers the
warm-up too.

Memory: on a GPU torch.cuda.max_memory_reserved / max_memory_allocated, plus the CUDA context
(measured as mem_get_info's used memory right after the context is created, before any tensor).
`--vram_gb N` caps the caching allocator at N GB minus that context
(torch.cuda.set_per_process_memory_fraction), as on an N GB card; "fits" = peak reserved + context
(or the larger non-allocator use measured after the step) < N GB, and an out-of-memory error reads
"does not fit" instead of crashing. On the CPU: peak RSS (ru_maxrss, lifetime of the subprocess), RSS
after the model and optimizer are built, and the peak RSS of the steps alone (VmHWM reset after load).

  python bench/train_step.py --arch tiny --seq_lens 2048,8192 --hidden_size 256
  python bench/train_step.py --arch qwen2-7b --preset 8gb --vram_gb 8 --seq_lens 8192
  python bench/train_step.py --arch qwen2-7b --preset 12gb --vram_gb 12 --find_max true
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

from _common import GB, append_rows, gb, gpu_info, host_info, markdown_table, read_status_kb, reset_peak_rss

from emotion_summary.core.cli import comma_list, run
from emotion_summary.core.errors import UserError
from emotion_summary.modeling.tokenizer import FIRST_SPECIAL_ID  # random ids stay below it

VARIANTS = ("ours", "plain")
LEVERS = ("offload_activations", "mlp_tile_tokens", "embedding_on_cpu", "lm_head_4bit", "liger_kernels")
BUILD_DTYPE = "bf16"  # random weights saved in bf16: 15 GB for the 7B shape (loaded in the compute dtype)


# ---- the parent: plan, spawn, report ---------------------------------------------------------------
def train_step(
    arch: str = "tiny",
    preset: str | None = None,
    seq_lens: str = "4096",
    steps: int = 1,
    batch_size: int | None = None,
    answer_tokens: int = 200,
    variants: str = "ours,plain",
    vram_gb: float | None = None,
    find_max: bool = False,
    find_max_start: int = 4096,
    find_max_limit: int = 131072,
    find_max_step: int = 1024,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_hidden_layers: int | None = None,
    model_dir: str | None = None,
    out: str | None = None,
    seed: int = 0,
    timeout_s: int = 3600,
) -> None:
    """Peak memory and tokens/s of a QLoRA training step, ours against plain, one subprocess each.

    Args:
        arch: qwen2-7b (random weights of the real shape, GPU only) or tiny (2 layers, hidden 64, real vocab).
        preset: 8gb, 12gb, 24gb or cpu-smoke: its memory levers and batch size (default: cpu-smoke for
            tiny, 24gb for qwen2-7b).
        seq_lens: comma-separated tokens per sequence, e.g. 4096,8192.
        steps: timed steps after one warm-up step.
        batch_size: sequences per step (default: the preset's).
        answer_tokens: supervised positions at the end of each sequence (the rest are masked).
        variants: comma-separated: ours, plain.
        vram_gb: cap the GPU at this many GB (1e9 bytes) and report whether each run fits (GPU only).
        find_max: instead of --seq_lens, search the longest length that fits under --vram_gb (GPU only).
        find_max_start: first length tried; doubled while it fits, then bisected.
        find_max_limit: longest length tried.
        find_max_step: resolution of the bisection, in tokens.
        hidden_size: override the architecture's hidden size (e.g. 256 for the CPU logits ratio).
        intermediate_size: override the MLP width (default with --hidden_size: 2.75 x hidden).
        num_hidden_layers: override the number of layers.
        model_dir: an existing model directory to load instead of building one from --arch.
        out: append the JSON lines to this file (fsynced, one append per line).
        seed: seed of the synthetic batches and the LoRA initialisation.
        timeout_s: wall-clock limit per subprocess.
    """
    import torch  # no CUDA context here: torch.cuda.is_available() creates none

    from emotion_summary.training.config import resolve_config
    from emotion_summary.training.presets import PRESETS, unknown_preset

    if arch not in ("qwen2-7b", "tiny"):
        raise UserError(f"--arch: qwen2-7b or tiny, got {arch!r}")
    preset = preset or ("cpu-smoke" if arch == "tiny" else "24gb")
    if preset not in PRESETS:
        raise UserError(unknown_preset(preset, tuple(PRESETS)))
    chosen = comma_list(variants, "variants")
    if not chosen or any(v not in VARIANTS for v in chosen):
        raise UserError(f"--variants: comma-separated from {', '.join(VARIANTS)}, got {variants!r}")
    cuda = torch.cuda.is_available()
    if arch == "qwen2-7b" and not cuda and not model_dir and not num_hidden_layers:
        raise UserError("--arch qwen2-7b needs a CUDA GPU (7.6B random parameters); on CPU use --arch tiny, "
                        "or the 7B shape cut to --num_hidden_layers 1")
    if (find_max or vram_gb) and not cuda:
        raise UserError("--vram_gb and --find_max need a CUDA GPU")
    if find_max and not vram_gb:
        raise UserError("--find_max needs --vram_gb")
    if steps < 0 or answer_tokens <= 0:
        raise UserError("--steps must be >= 0 and --answer_tokens > 0")
    lengths = [] if find_max else comma_list(seq_lens, "seq_lens", item=int)
    if not find_max and (not lengths or min(lengths) <= 0):
        raise UserError(f"--seq_lens: expected positive integers, got {seq_lens!r}")

    overrides = {k: v for k, v in {"hidden_size": hidden_size, "intermediate_size": intermediate_size,
                                   "num_hidden_layers": num_hidden_layers}.items() if v}
    if hidden_size and not intermediate_size:
        overrides["intermediate_size"] = int(hidden_size * 2.75)
    model_path = model_dir or ensure_model_dir(arch, overrides, timeout_s)
    host = host_info()
    base = {"arch": arch, "arch_overrides": overrides, "preset": preset, "model_name_or_path": model_path,
            "steps": steps, "batch_size": batch_size or resolve_config(preset).batch_size,
            "answer_tokens": answer_tokens, "vram_gb": vram_gb, "seed": seed}

    rows: list[dict] = []
    for variant in chosen:
        if find_max:
            spec = {**base, "variant": variant, "steps": 0,
                    "find_max": {"start": find_max_start, "limit": find_max_limit, "step": find_max_step}}
            rows += run_worker(spec, host, timeout_s, out)
        else:
            for seq_len in lengths:
                rows += run_worker({**base, "variant": variant, "seq_len": seq_len}, host, timeout_s, out)
    print(report(rows, find_max))


def ensure_model_dir(arch: str, overrides: dict, timeout_s: int) -> str:
    """'tiny' as the project builds it, else `architectures.build_random_qwen2`'s bf16 random-weight
    model of the (overridden) shape, saved once and loaded through the real from_pretrained path.
    Built in a subprocess, so this process stays small (15 GB for the 7B shape)."""
    from emotion_summary.modeling.architectures import is_complete_model_dir, random_qwen2_dir

    if arch == "tiny" and not overrides:
        return "tiny"
    path = random_qwen2_dir(arch, dtype=BUILD_DTYPE, **overrides)
    if is_complete_model_dir(path):
        return str(path)
    print(f"building {path} (random weights, once)", file=sys.stderr)
    spec = {"build": {"arch": arch, "overrides": overrides}}
    _spawn(spec, timeout_s)
    return str(path)


def run_worker(spec: dict, host: dict, timeout_s: int, out: str | None) -> list[dict]:
    what = spec["variant"] + (f" at {spec['seq_len']:,} tokens" if "seq_len" in spec else ": longest fit")
    print(f"measuring {what} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    rows = _spawn(spec, timeout_s)
    print(f"measured {what} in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    rows = [{"bench": "train_step", **host, **row} for row in rows]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False), flush=True)
    append_rows(out, rows)
    return rows


def _spawn(spec: dict, timeout_s: int) -> list[dict]:
    """`worker(spec)` in a fresh process: its peak memory is its own."""
    from emotion_summary.core.subprocess_jobs import WorkerDied, run_in_worker

    try:
        result = run_in_worker("train_step:worker", [spec], timeout_s, paths=[Path(__file__).resolve().parent])[0]
        error = result.get("error") and f"{result['error']}\n{result.get('traceback', '')}"
    except WorkerDied as e:
        result, error = {}, str(e)
    if "build" in spec and error:
        raise UserError(f"building the benchmark model failed:\n{error[-3000:]}")
    if not error:
        return result["rows"]
    # The process died without a result (killed: CPU out of memory, exit -9) or the run raised.
    return [{**{k: v for k, v in spec.items() if k != "find_max"}, "status": "crashed",
             "fits": False if spec.get("vram_gb") else None, "error": error[-1500:]}]


def report(rows: list[dict], find_max: bool) -> str:
    on_gpu = any("peak_reserved_bytes" in r for r in rows)
    mem = "peak reserved + context GB" if on_gpu else "peak RSS of the step GB (after load)"
    header = ["variant", "preset", "seq_len", "batch", "status", "fits", mem, "step extra GB",
              "tokens/s", "loss"]
    table = []
    for r in rows:
        if find_max and r.get("probe"):
            continue
        peak = r.get("fits_bytes") if on_gpu else r.get("step_peak_rss_bytes")
        table.append([r["variant"], r["preset"], r.get("seq_len"), r.get("batch_size"), r["status"],
                      {True: "yes", False: "no", None: "-"}[r.get("fits")], gb(peak), gb(r.get("step_extra_bytes")),
                      None if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:.0f}",
                      None if r.get("loss") is None else f"{r['loss']:.4f}"])
    text = markdown_table(header, table)
    if find_max:
        lines = [f"- {r['variant']} ({r['preset']}, batch {r['batch_size']}, {r['vram_gb']} GB): longest "
                 f"fitting length {r.get('max_seq_len_fits')}"
                 + (" (every probe fitted: raise --find_max_limit)" if r.get("never_failed") else "")
                 for r in rows if not r.get("probe")]
        return text + "\n\n" + "\n".join(lines)
    ratios = []
    by = {(r["variant"], r.get("seq_len")): r for r in rows if r["status"] == "ok"}
    for (variant, seq_len), ours in sorted(by.items(), key=lambda kv: kv[0][1] or 0):
        plain = by.get(("plain", seq_len))
        if variant != "ours" or plain is None:
            continue
        key = "fits_bytes" if on_gpu else "step_peak_rss_bytes"
        extra = "step_extra_bytes"
        ratios.append(f"- {seq_len} tokens: plain/ours peak {plain[key] / ours[key]:.2f}x, step extra "
                      f"{plain[extra] / max(ours[extra], 1):.2f}x, ours/plain tokens/s "
                      + (f"{ours['tokens_per_s'] / plain['tokens_per_s']:.2f}x"
                         if ours.get("tokens_per_s") and plain.get("tokens_per_s") else "-"))
    return text + ("\n\n" + "\n".join(ratios) if ratios else "")


# ---- the subprocess: build a model, or measure ---------------------------------------------------
class Bench:
    """One variant's model and optimizer, measured step by step in this process."""

    def __init__(self, spec: dict):
        import torch

        self.spec, self.cuda = spec, torch.cuda.is_available()
        self.info: dict = {}
        if self.cuda:
            torch.zeros(1, device="cuda")  # creates the context
            free, total = torch.cuda.mem_get_info()
            self.context = total - free - torch.cuda.memory_reserved()
            self.info.update(gpu_info(), cuda_context_bytes=self.context)
            if spec.get("vram_gb"):
                # As on a card of vram_gb: the allocator gets what the context leaves.
                fraction = (spec["vram_gb"] * GB - self.context) / total
                torch.cuda.set_per_process_memory_fraction(max(fraction, 0.0))
                self.info["memory_fraction"] = round(fraction, 5)
        self.loss = self.optimizer = None

    def config(self):
        from emotion_summary.training.config import resolve_config

        s = self.spec
        return resolve_config(s["preset"], model_name_or_path=s["model_name_or_path"], batch_size=s["batch_size"],
                              max_seq_len=s.get("seq_len"), seed=s["seed"])

    def load(self) -> None:
        """ours: the project's model of the preset (its levers) and optimizer; plain: bench/plain.py."""
        import torch

        from emotion_summary.modeling.device import compute_dtype, device

        cfg = self.config()
        torch.manual_seed(cfg.seed)
        if self.spec["variant"] == "ours":
            from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
            from emotion_summary.training.step import make_optimizer

            wrapper = Qwen2EmotionSummaryModel.for_training(cfg)
            model, self.loss = wrapper.model, wrapper.loss
            self.optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
            levers = {k: getattr(cfg, k) for k in LEVERS}
        else:
            from plain import load_plain, loss_fn, optimizer

            model = load_plain(cfg)
            dev, plain_loss = device(), loss_fn(model)
            self.loss = lambda batch: plain_loss({k: v.to(dev) for k, v in batch.items()})
            self.optimizer, levers = optimizer(model, cfg.learning_rate), None
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        base = model.get_base_model()
        self.info.update(levers=levers, optimizer=type(self.optimizer).__name__,
                         gradient_checkpointing=cfg.gradient_checkpointing,
                         attn_implementation=base.config._attn_implementation,
                         # model.apply_liger_kernels' condition (it patches, so it is not called again here)
                         liger_applied=self.cuda and levers is not None and cfg.liger_kernels != "off"
                         and importlib.util.find_spec("liger_kernel") is not None,
                         compute_dtype=str(compute_dtype(cfg.compute_dtype)),
                         # recorded to show where the embedding and LM head stay in the compute dtype
                         param_dtypes={"embed_tokens": str(base.get_input_embeddings().weight.dtype),
                                       "lm_head": str(base.lm_head.weight.dtype),
                                       "lora": str(next(p for p in params).dtype)},
                         trainable_params=sum(p.numel() for p in params))
        if self.cuda:
            torch.cuda.synchronize()
            self.info["allocated_after_load_bytes"] = torch.cuda.memory_allocated()
        else:
            self.info["rss_after_load_bytes"] = read_status_kb("VmRSS")

    def batch(self, seq_len: int) -> dict:
        import torch

        from emotion_summary.modeling.loss import IGNORE_INDEX

        g = torch.Generator().manual_seed(self.spec["seed"] + seq_len)
        b = self.spec["batch_size"]
        ids = torch.randint(0, FIRST_SPECIAL_ID, (b, seq_len), generator=g)
        labels = ids.clone()
        labels[:, : seq_len - min(self.spec["answer_tokens"], seq_len // 2)] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}

    def step(self, batch: dict) -> float:
        loss = self.loss(batch)  # plain: full logits; the output (and its logits) dropped before backward
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        return value if math.isfinite(value) else None  # random weights: memory and speed still count

    def measure(self, seq_len: int, steps: int) -> dict:
        """Warm-up + timed steps at one length; an out-of-memory error becomes status 'oom'."""
        import gc

        import torch

        row: dict = {"seq_len": seq_len, "status": "ok", "error": None}
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            row["peak_rss_reset"] = reset_peak_rss()
        batch = self.batch(seq_len)
        oom = None
        try:
            # Warm-up: allocates the optimizer state. Its loss is the base model's (LoRA B starts at
            # 0), so it compares across variants and step counts; "loss" is the last step's.
            row["loss_first"] = row["loss"] = self.step(batch)
            if self.cuda:
                torch.cuda.synchronize()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                row["loss"] = self.step(batch)  # .item() inside: the GPU has finished the step
                times.append(time.perf_counter() - t0)
            if steps:
                # The median step: one step slowed by another process on the machine does not count.
                row["step_s"] = statistics.median(times)
                row["step_times_s"] = [round(t, 4) for t in times]
                row["tokens_per_s"] = self.spec["batch_size"] * seq_len / row["step_s"]
        except torch.OutOfMemoryError as e:
            oom = f"OutOfMemoryError: {str(e)[:300]}"
        except RuntimeError as e:  # bitsandbytes / cuBLAS report some OOMs as plain RuntimeErrors
            if "out of memory" not in str(e).lower() and "CUBLAS_STATUS_ALLOC_FAILED" not in str(e):
                raise
            oom = f"{type(e).__name__}: {str(e)[:300]}"
        if oom:  # outside the except block: the traceback no longer pins the step's tensors
            self.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            row.update(status="oom", error=oom, loss=None, loss_first=None)
        if self.cuda:
            row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
            row["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
            row["step_extra_bytes"] = row["peak_allocated_bytes"] - self.info["allocated_after_load_bytes"]
            free, total = torch.cuda.mem_get_info()
            # Context + cuBLAS/cuDNN/NCCL handles + anything outside the caching allocator, after the step.
            row["cuda_overhead_end_bytes"] = total - free - torch.cuda.memory_reserved()
            overhead = max(self.context, row["cuda_overhead_end_bytes"])
            row["fits_bytes"] = row["peak_reserved_bytes"] + overhead
            if self.spec.get("vram_gb"):
                row["fits"] = row["status"] == "ok" and row["fits_bytes"] < self.spec["vram_gb"] * GB
            if oom:
                torch.cuda.empty_cache()
        else:
            import resource

            row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            row["step_peak_rss_bytes"] = read_status_kb("VmHWM") if row["peak_rss_reset"] else row["peak_rss_bytes"]
            row["step_extra_bytes"] = row["step_peak_rss_bytes"] - self.info["rss_after_load_bytes"]
            row["fits"] = None
        return row


def worker(spec: dict) -> dict:
    """The measured subprocess (see _spawn): builds a model (spec "build") or measures; {"rows": [...]}."""
    return {"rows": _measure(spec)}


def _measure(spec: dict) -> list[dict]:
    if "build" in spec:
        b = spec["build"]
        from emotion_summary.modeling.architectures import build_random_qwen2

        build_random_qwen2(b["arch"], dtype=BUILD_DTYPE, **b["overrides"])
        return []
    import torch

    common = {k: v for k, v in spec.items() if k != "find_max"}
    bench = Bench(spec)
    try:
        bench.load()
    except torch.OutOfMemoryError as e:  # the weights alone do not fit under --vram_gb
        return [{**common, **bench.info, "status": "oom", "fits": False, "error": f"loading: {str(e)[:300]}",
                 "max_seq_len_fits": 0 if "find_max" in spec else None}]
    if "find_max" not in spec:
        return [{**common, **bench.info, **bench.measure(spec["seq_len"], spec["steps"])}]
    probes: list[dict] = []

    def fits(n: int) -> bool:
        row = {**common, **bench.info, **bench.measure(n, 0), "probe": True}
        probes.append(row)
        print(json.dumps({k: row.get(k) for k in ("variant", "seq_len", "status", "fits", "fits_bytes")}),
              file=sys.stderr, flush=True)
        return bool(row["fits"])

    fm = spec["find_max"]
    from emotion_summary.gpusim.planner import longest_fitting

    longest = longest_fitting(fits, fm["step"], fm["limit"], fm["step"], start=fm["start"])
    best = max((p for p in probes if p["seq_len"] == longest), key=lambda p: p["fits_bytes"], default={})
    summary = {**common, **bench.info, **{k: v for k, v in best.items() if k != "probe"},
               "status": "ok" if longest else "oom", "fits": bool(longest), "seq_len": longest or None,
               "max_seq_len_fits": longest, "never_failed": all(p["fits"] for p in probes),
               "probes": [[p["seq_len"], p["fits"]] for p in probes]}
    return probes + [summary]


if __name__ == "__main__":
    run(train_step)
