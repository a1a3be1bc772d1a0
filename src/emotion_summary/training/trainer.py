"""The QLoRA trainer: answer-only loss, cosine schedule, validation, checkpoints, Ctrl-C safe.

The run directory's layout and state are `run_dir.RunDir`'s; the options are `config.TrainConfig`'s.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from importlib import metadata
from pathlib import Path

from emotion_summary.core import distributed as dist
from emotion_summary.core.atomic_io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl_tolerant,
)
from emotion_summary.core.errors import UserError
from emotion_summary.data.folds import save_fingerprints
from emotion_summary.data.records import Record
from emotion_summary.training.checkpoints import Checkpoints
from emotion_summary.training.config import TrainConfig
from emotion_summary.training.oom import is_out_of_memory, memory_lever
from emotion_summary.training.run_dir import RunDir, resume_command
from emotion_summary.training.step import TrainingStep
from emotion_summary.training.train_data import describe_sources


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "emotion-summary"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled example indices cut into batches; a pure function of (seed, epoch), so resume replays it."""
    import torch

    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i: i + batch_size] for i in range(0, n_examples, batch_size)]


def plot_losses(log_path: Path, out_png: Path) -> None:
    from emotion_summary.core.plots import png_bytes, pyplot

    plt = pyplot()
    rows = read_jsonl_tolerant(log_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (answer tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_bytes(out_png, png_bytes(fig))


class Trainer:
    def __init__(self, cfg: TrainConfig, train_records: list[Record], eval_records: list[Record]):
        self.cfg, self.dir = cfg, RunDir(cfg.output_dir)
        self.run_dir = self.dir.path
        self.train_records, self.eval_records = train_records, eval_records
        self.checkpoints = Checkpoints(self.dir)
        self.log_path = self.dir.log_path
        self.resume = False

    def prepare(self) -> None:
        import torch
        from transformers import get_cosine_schedule_with_warmup

        from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
        from emotion_summary.prompting.encode import encoding_key

        dist.init()
        torch.manual_seed(self.cfg.seed)  # the same LoRA initialisation in every process
        self.wrapper = Qwen2EmotionSummaryModel.for_training(self.cfg)
        if dist.world_size() > 1:
            torch.manual_seed(self.cfg.seed + dist.rank())  # but each its own dropout masks
        if dist.is_main():  # before the first checkpoint: checkpoints are guarded against leakage too
            save_fingerprints(self.run_dir, self.train_records)
        self.train_examples = self._encode(self.train_records, "training")
        self.data_key = encoding_key(self.wrapper.tokenizer, self.wrapper.prompt, self.train_records,
                                     self.cfg.max_seq_len)
        self.eval_examples = self._encode(self.eval_records, "validation")
        per_epoch = math.ceil(math.ceil(len(self.train_examples) / self.cfg.batch_size) / self.micro_per_step)
        # Whichever ends first, as in litgpt: --max_steps caps a large file, --epochs a small one (the
        # cpu preset's 48 steps would be 12 passes over the 4 sample reports).
        all_epochs = per_epoch * self.cfg.epochs
        self.total_steps = min(self.cfg.max_steps, all_epochs) if self.cfg.max_steps else all_epochs
        # At least one checkpoint per epoch: with little data, save_every=50 would otherwise mean none
        # before the end of the run.
        self.save_interval = max(1, min(self.cfg.save_every, per_epoch))
        def cosine(optimizer):
            return get_cosine_schedule_with_warmup(optimizer, int(self.cfg.warmup_ratio * self.total_steps),
                                                   self.total_steps)

        self.step = TrainingStep.build(self.cfg, self.wrapper, self.train_examples, cosine)
        self.optimizer, self.scheduler = self.step.optimizer, self.step.scheduler

    def _encode(self, records: list[Record], what: str) -> list[dict]:
        from emotion_summary.prompting.encode import encode_records

        out = encode_records(self.wrapper.tokenizer, self.wrapper.prompt, records, self.cfg.max_seq_len,
                             cache_dir=self.run_dir / "cache")
        trimmed = [e["id"] for e in out if e["trimmed_tokens"]]
        if records:
            lengths = sorted(len(e["input_ids"]) for e in out)
            print(f"{what}: {len(out)} records ({describe_sources(records)}); tokens median "
                  f"{lengths[len(lengths) // 2]}, max {lengths[-1]}; {len(trimmed)} trimmed to "
                  f"max_seq_len={self.cfg.max_seq_len}{f' (ids {trimmed[:10]})' if trimmed else ''}")
        return out

    def validation_loss(self) -> float | None:
        import torch

        if not self.eval_examples:
            return None
        self.wrapper.model.eval()
        losses = []
        with torch.no_grad():
            for start in range(0, len(self.eval_examples), self.cfg.batch_size):
                idx = list(range(start, min(start + self.cfg.batch_size, len(self.eval_examples))))
                losses.append(sum(self.wrapper.loss(batch) * w for batch, w in self.step.loss_parts(idx, self.eval_examples)))
        self.wrapper.model.train()
        return torch.stack(losses).mean().item()

    @property
    def micro_per_step(self) -> int:
        """Micro-batches per optimizer step over all processes (each process takes every world-th)."""
        return self.cfg.grad_accum * dist.world_size()

    def micro_batches(self, start_step: int):
        """(step, this process's micro-batches, the step's micro-batch count over all processes)."""
        for step, micro in self._all_micro_batches(start_step):
            yield step, micro[dist.rank():: dist.world_size()], len(micro)

    def _all_micro_batches(self, start_step: int):
        for step, micro in enumerate(self._step_batches()):
            if step >= self.total_steps:
                return
            if step >= start_step:
                yield step, micro

    def _step_batches(self):
        """Each optimizer step's micro-batches, epoch after epoch; an epoch's tail shorter than
        grad_accum still makes one step."""
        for epoch in itertools.count():
            batches = epoch_batches(len(self.train_examples), self.cfg.batch_size, self.cfg.seed, epoch)
            for i in range(0, len(batches), self.micro_per_step):
                yield batches[i: i + self.micro_per_step]

    def run(self) -> Path:
        """Train to the end (from the last checkpoint when resuming); Ctrl-C saves and exits 130."""
        from tqdm import tqdm

        start = 0
        latest = self.dir.latest_checkpoint() if self.resume else None
        if latest is not None:
            state = self.checkpoints.restore(latest, self.wrapper, self.optimizer, self.scheduler)
            if state.get("data_key", self.data_key) != self.data_key:
                raise UserError(f"cannot resume from {latest}: the training data changed since it was "
                                "written (same paths, other records or text); start a new --output_dir")
            start = state["step"]
            print(f"resumed from {latest} at step {start}")
        elif self.resume:
            print(f"resuming {self.run_dir}: no checkpoint was saved yet, starting at step 0")
        if self.resume:
            self._truncate_log(start)  # also when killed before the first checkpoint: start is then 0
        self.wrapper.model.train()
        done = start
        bar = tqdm(total=self.total_steps, initial=start, desc="training", unit="step")
        out_of_memory = None
        try:
            for step, micro, n_micro in self.micro_batches(start):
                loss = self.step(micro, n_micro)
                done = step + 1
                row = {"step": done, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "time": time.time()}
                if done % self.cfg.eval_every == 0 or done == self.total_steps:
                    val = self.validation_loss()
                    if val is not None:
                        row["val_loss"] = val
                if dist.is_main():
                    append_jsonl(self.log_path, row)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if done % self.save_interval == 0 or done == self.total_steps:
                    self.checkpoints.save(self.wrapper, self.optimizer, self.scheduler, self._state(done))
        except KeyboardInterrupt:
            saved = "nothing new to save"
            if done > start:
                saved = f"saved {self.checkpoints.save(self.wrapper, self.optimizer, self.scheduler, self._state(done))}"
            raise KeyboardInterrupt(  # cli.call prints it and exits 130
                f"interrupted at step {done}: {saved}; continue with:\n  {resume_command(self.run_dir)}") from None
        except RuntimeError as e:  # torch.OutOfMemoryError, or bitsandbytes/cuBLAS saying the same
            if not is_out_of_memory(e):
                raise
            out_of_memory = str(e).splitlines()[0][:200]
        finally:
            bar.close()
        if out_of_memory:  # outside the except block: the traceback no longer pins the step's tensors
            self._stop_out_of_memory(done, out_of_memory)
        return self.finish()

    def _stop_out_of_memory(self, done: int, error: str) -> None:
        """Free the step's memory, keep (or write) the last checkpoint, and name the lever to pull."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        latest = self.dir.latest_checkpoint()
        saved = RunDir.step_of(latest) if latest else 0
        if done > saved:
            latest = self.checkpoints.save(self.wrapper, self.optimizer, self.scheduler, self._state(done))
        kept = f"checkpoint {latest} is kept" if latest else "no step had finished, so there is no checkpoint"
        raise UserError(f"out of GPU memory in step {done + 1} ({error}); {kept}. {memory_lever(self.cfg)}")

    def _state(self, step: int) -> dict:
        return {"step": step, "data_key": self.data_key}

    def _truncate_log(self, step: int) -> None:
        """Steps logged after the checkpoint we resume from are replayed: drop their old rows."""
        if dist.is_main() and self.log_path.exists():
            rows = [r for r in read_jsonl_tolerant(self.log_path) if r.get("step", 0) <= step]
            atomic_write_jsonl(self.log_path, rows)

    def finish(self) -> Path:
        dist.barrier()
        if not dist.is_main():
            return self.run_dir
        self.wrapper.save(self.run_dir)
        atomic_write_json(self.run_dir / "versions.json", library_versions())
        plot_losses(self.log_path, self.run_dir / "loss.png")
        self.dir.mark_complete()
        print(f"done: adapter, config and loss plot in {self.run_dir}")
        return self.run_dir
