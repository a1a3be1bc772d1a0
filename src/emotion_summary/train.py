"""The QLoRA trainer: answer-only loss, cosine schedule, checkpoints that resume exactly, Ctrl-C safe.

The run directory's layout and state are `run_dir.RunDir`'s; the options are `config.TrainConfig`'s.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from emotion_summary import distributed as dist
from emotion_summary.atomic_io import (append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_jsonl,
                                       read_jsonl_tolerant)
from emotion_summary.config import TrainConfig, detect_vram_gb, resolve_config, validate
from emotion_summary.errors import ConfigError, UserError
from emotion_summary.folds import save_fingerprints
from emotion_summary.records import Record, read_records
from emotion_summary.run_dir import RunDir, resume_command
from emotion_summary.presets import default_train_data

KEEP_CHECKPOINTS = 2


def load_data(cfg: TrainConfig) -> tuple[list[Record], list[Record]]:
    """Training and validation records; every training record must carry the five gold fields."""
    paths = cfg.train_data or default_train_data(cfg.preset)
    train = _read_labelled(paths)
    evals = _read_labelled(cfg.eval_data)
    if cfg.folds:
        from emotion_summary.folds import split_folds

        train, held = split_folds(train, folds=cfg.folds, fold=cfg.fold)  # same folds as write_fold
        evals += held
    if not train:
        raise UserError("no training records left after the fold split")
    return train, evals


def _read_labelled(paths: list[str]) -> list[Record]:
    """Records of several files; an id in two files is an error naming both."""
    records, first_seen = [], {}
    for path in paths:
        for r in read_records(path, require_gold=True):
            if r.id in first_seen:
                raise UserError(f"{path}: field 'id': id {r.id} is also in {first_seen[r.id]}; "
                                "ids must be unique across the training files")
            first_seen[r.id] = path
            records.append(r)
    return records


def describe_sources(records: list[Record]) -> str:
    from emotion_summary.label import label_source_counts

    return ", ".join(f"{n} {src}" for src, n in label_source_counts(records).items())


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "emotion-summary"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class Checkpoints:
    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.dir = run_dir.checkpoints_dir

    def save(self, wrapper, optimizer, scheduler, state: dict) -> Path:
        """Every process writes its RNG state; the main one writes the rest (all ranks hold the same
        LoRA weights and optimizer state, since gradients are summed over processes) and publishes it by rename."""
        import torch

        final = self.run_dir.checkpoint_path(state["step"])
        tmp = final.with_name(f".{final.name}.tmp")
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        torch.save(_rng_state(), tmp / f"rng-{dist.rank()}.pt")
        dist.barrier()
        if dist.is_main():
            wrapper.save(tmp)  # adapter, tokenizer, prompt.json, train_config.json: loadable as it is
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            atomic_write_json(tmp / "state.json", state)  # written last: marks a whole checkpoint
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.run_dir.checkpoints()[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return final

    def restore(self, path: Path, wrapper, optimizer, scheduler) -> dict:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(wrapper.model, load_file(str(path / "adapter_model.safetensors")))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng = path / f"rng-{dist.rank()}.pt"
        if rng.is_file():  # resumed with fewer processes than saved: the extra ranks' states go unused
            _set_rng_state(torch.load(rng, weights_only=False))
        return json.loads((path / "state.json").read_text())


def _rng_state() -> dict:
    import random

    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled example indices cut into batches; a pure function of (seed, epoch), so resume replays it."""
    import torch

    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i: i + batch_size] for i in range(0, n_examples, batch_size)]


def make_optimizer(cfg: TrainConfig, params):
    import torch

    if cfg.optimizer == "paged_adamw_8bit" and torch.cuda.is_available():
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def plot_losses(log_path: Path, out_png: Path) -> None:
    from emotion_summary.plots import png_bytes, pyplot

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

        from emotion_summary.encode import encoding_key
        from emotion_summary.model import Qwen2EmotionSummaryModel

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
        self.total_steps = self.cfg.max_steps or per_epoch * self.cfg.epochs
        # At least one checkpoint per epoch: with little data, save_every=50 would otherwise mean none
        # before the end of the run.
        self.save_interval = max(1, min(self.cfg.save_every, per_epoch))
        params = [p for p in self.wrapper.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.cfg, params)
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, int(self.cfg.warmup_ratio * self.total_steps), self.total_steps)

    def _encode(self, records: list[Record], what: str) -> list[dict]:
        from emotion_summary.encode import encode_records

        out = encode_records(self.wrapper.tokenizer, self.wrapper.prompt, records, self.cfg.max_seq_len,
                             cache_dir=self.run_dir / "cache")
        trimmed = [e["id"] for e in out if e["trimmed_tokens"]]
        if records:
            lengths = sorted(len(e["input_ids"]) for e in out)
            print(f"{what}: {len(out)} records ({describe_sources(records)}); tokens median "
                  f"{lengths[len(lengths) // 2]}, max {lengths[-1]}; {len(trimmed)} trimmed to "
                  f"max_seq_len={self.cfg.max_seq_len}{f' (ids {trimmed[:10]})' if trimmed else ''}")
        return out

    def _batch(self, indices: list[int], examples: list[dict]):
        from emotion_summary.loss import collate

        return collate([examples[i] for i in indices], self.wrapper.tokenizer.pad_token_id)

    def _loss_parts(self, indices: list[int], examples: list[dict]):
        """(batch, weight) pairs whose weighted losses add up to the loss of the micro-batch `indices`.
        Rows of unequal length go one at a time unless the attention kernel pads cheaply (FlashAttention-2):
        SDPA and eager would need a dense [batch, 1, L, L] mask. Each row is weighted by its share
        of the supervised tokens, so the sum is the micro-batch's token mean."""
        from emotion_summary.encode import IGNORE_INDEX

        if len({len(examples[i]["input_ids"]) for i in indices}) == 1:
            return [(self._unpadded_batch(indices, examples), 1.0)]
        if self.wrapper.pads_cheaply:
            return [(self._batch(indices, examples), 1.0)]
        counts = [sum(t != IGNORE_INDEX for t in examples[i]["labels"][1:]) for i in indices]
        return [(self._unpadded_batch([i], examples), n / sum(counts)) for i, n in zip(indices, counts)]

    def _unpadded_batch(self, indices: list[int], examples: list[dict]):
        """Rows of one length: no attention mask at all (known here without reading the tensor)."""
        return {**self._batch(indices, examples), "attention_mask": None}

    def validation_loss(self) -> float | None:
        import torch

        if not self.eval_examples:
            return None
        self.wrapper.model.eval()
        losses = []
        with torch.no_grad():
            for start in range(0, len(self.eval_examples), self.cfg.batch_size):
                idx = list(range(start, min(start + self.cfg.batch_size, len(self.eval_examples))))
                losses.append(sum(self.wrapper.loss(batch) * w for batch, w in self._loss_parts(idx, self.eval_examples)))
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

    def run(self, stop_after_step: int | None = None) -> Path:
        """Train to the end (or, for tests, stop after `stop_after_step` as if interrupted)."""
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
                loss = self._optimizer_step(micro, n_micro)
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
                if stop_after_step is not None and done >= stop_after_step:
                    return self.run_dir
        except KeyboardInterrupt:
            saved = "nothing new to save"
            if done > start:
                saved = f"saved {self.checkpoints.save(self.wrapper, self.optimizer, self.scheduler, self._state(done))}"
            print(f"\ninterrupted at step {done}: {saved}; continue with:\n  {resume_command(self.run_dir)}",
                  file=sys.stderr)
            raise SystemExit(130)
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

    def _optimizer_step(self, micro: list[list[int]], n_micro: int) -> float:
        """One optimizer step over this process's micro-batches, with one host sync (the loss value,
        read once before the weights change)."""
        import torch

        total = torch.zeros(())
        for indices in micro:
            for batch, weight in self._loss_parts(indices, self.train_examples):
                loss = self.wrapper.loss(batch) * (weight / n_micro)
                loss.backward()
                total = total.to(loss.device) + loss.detach()
        value = dist.total(total.item())
        if not math.isfinite(value):
            raise UserError(
                f"the loss became {value} (NaN/inf) at step {self.scheduler.last_epoch + 1}. Qwen2 "
                "overflows in fp16, the compute dtype on GPUs without bf16 (T4, V100, RTX 20xx): rerun "
                "with --compute_dtype fp32, or lower --learning_rate.")
        params = [p for p in self.wrapper.model.parameters() if p.requires_grad]
        dist.sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

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


def train(preset: str = "auto", resume: bool = False, **options) -> str:
    """Fine-tune Qwen2-7B-Instruct with QLoRA on labelled ES records; options as `config.TrainConfig`
    (unset ones take the preset's value). `resume=True` continues the unfinished run in `output_dir`
    with its saved config: only `output_dir` is needed."""
    return str(prepare_run(preset, resume, **options).run())


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in text.lower() \
        or "CUBLAS_STATUS_ALLOC_FAILED" in text


def memory_lever(cfg: TrainConfig) -> str:
    """The one memory lever to pull next: first those that leave the training maths alone (the run
    resumes from its checkpoint), then those that change it (a new run)."""
    resumable = [
        (not cfg.offload_activations, "--offload_activations true"),
        (cfg.mlp_tile_tokens == 0 or cfg.mlp_tile_tokens > 1024,
         f"--mlp_tile_tokens {max(1024, cfg.mlp_tile_tokens // 2) if cfg.mlp_tile_tokens else 2048}"),
        (not cfg.embedding_on_cpu, "--embedding_on_cpu true"),
    ]
    for pull, flag in resumable:
        if pull:
            return f"Pull this lever: {resume_command(cfg.output_dir)} {flag}"
    new_run = [
        (cfg.lora_dropout > 0, "--lora_dropout 0"),
        (cfg.batch_size > 1, f"--batch_size 1 --grad_accum {cfg.grad_accum * cfg.batch_size}"),
        (not cfg.lm_head_4bit, "--lm_head_4bit true"),
    ]
    for pull, flag in new_run:
        if pull:
            return f"Pull this lever: start a new run (new --output_dir) with {flag}"
    return (f"Every memory lever is pulled: start a new run with --max_seq_len {cfg.max_seq_len // 2} "
            "(or plan the length with scripts/plan_memory.py --find_max true)")


def prepare_run(preset: str = "auto", resume: bool = False, **options) -> "Trainer":
    """Check the config, the run directory and the data (all before any model loads), save the config,
    load the model and encode the data: a Trainer ready to `run()`."""
    cfg, records = build_config(preset, resume=resume, **options)
    train_records, eval_records = records
    dist.barrier()  # every process has checked the run directory before the main one writes to it
    if dist.is_main():
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        cfg.save(cfg.output_dir)
    trainer = Trainer(cfg, train_records, eval_records)
    trainer.resume = resume
    trainer.prepare()
    return trainer


def build_config(preset: str = "auto", resume: bool = False, **options) -> tuple[TrainConfig, tuple]:
    """The resolved, validated config (every problem at once) and its (training, validation) records.
    A new run refuses an existing run directory; a resume takes the saved config."""
    dist.init()
    if resume:
        if not options.get("output_dir"):
            raise ConfigError("--resume: give --output_dir, the run directory to continue")
        cfg = RunDir(options["output_dir"]).resume_config({"preset": preset, **options})
        vram = detect_vram_gb()
    else:
        cfg, vram = resolve(preset, **options)
        RunDir(cfg.output_dir).check_new()
    problems = validate(cfg, vram)
    if problems:
        raise ConfigError("the config has problems:\n  - " + "\n  - ".join(problems))
    records = load_data(cfg)
    if not resume:
        cfg.language = training_language(cfg.language, records[0])
    print_choices(cfg, preset, vram, options)
    return cfg, records


def resolve(preset: str = "auto", **options) -> tuple[TrainConfig, float | None]:
    vram = detect_vram_gb()
    return resolve_config(preset, vram, **options), vram


def training_language(language: str, records: list[Record]) -> str:
    """`auto` means: the language the labels are written in. That is the labeller's --language when it
    recorded one, else the gold text's; `auto` is kept when every label is in its report's language."""
    from emotion_summary.prompt import LANGUAGE_RULES
    from emotion_summary.text import detect_language, record_language

    if language != "auto":
        return language
    fits: set[str] | None = None
    for r in records:
        label = (r.label_source or {}).get("language")
        label = label if label in LANGUAGE_RULES else detect_language(" ".join(r.gold().values()))
        ok = {label, "auto"} if label == record_language(r) else {label}
        fits = ok if fits is None else fits & ok
    if fits is None or "auto" in fits:
        return "auto"
    if not fits:
        raise ConfigError("language: the training labels are in more than one language, and not always "
                          "in their report's; pass --language en or --language zh (the prompt says which)")
    chosen = fits.pop()
    print(f"language: {chosen} (--language auto: every training label is in {chosen})")
    return chosen


def print_choices(cfg: TrainConfig, asked_preset: str, vram: float | None, options: dict) -> None:
    """The resolved choices, before anything loads: which preset and why, and what it decided."""
    why = ""
    if asked_preset == "auto":
        why = f" (--preset auto: {'no CUDA GPU' if vram is None else f'{vram:.1f} GB GPU'})"
    from emotion_summary.model import attn_implementation, compute_dtype

    from_preset = [f"{k}={getattr(cfg, k)}" for k in _preset_keys(cfg.preset) if options.get(k) is None]
    dtype = str(compute_dtype(cfg.compute_dtype)).removeprefix("torch.")
    print(f"preset {cfg.preset}{why}; model {cfg.model_name_or_path}, quantization {cfg.quantization}, "
          f"compute dtype {dtype}, attention {attn_implementation(cfg.attn_implementation)}; "
          f"output {cfg.output_dir}")
    if from_preset:
        print(f"from the preset: {', '.join(from_preset)}")


def _preset_keys(name: str) -> list[str]:
    from emotion_summary.presets import preset_overrides

    return list(preset_overrides(name))


def command_options():
    """The train command's options: every TrainConfig field, and --resume."""
    from emotion_summary.cli import Option, dataclass_options

    return dataclass_options(TrainConfig) + [Option(
        "resume", bool, False, "continue the unfinished run in --output_dir from its last checkpoint with "
        "its saved config (--output_dir is all it needs)")]


PRESET_NOTE = ("Unset options take the preset's value (python -c 'from emotion_summary.presets import PRESETS; "
               "print(PRESETS)' lists them); the defaults shown are the 24gb card's.")


def main(argv: list[str] | None = None) -> None:
    """Fine-tune Qwen2-7B-Instruct with QLoRA on labelled ES records (resumable, never overwrites a run)."""
    from emotion_summary.cli import call, parse_or_exit

    values = parse_or_exit(command_options(), argv, main.__doc__, config_file=True, defaults_note=PRESET_NOTE)
    call(lambda: train(**values))
