"""A training run directory and its state: new, unfinished (config, maybe checkpoints) or finished.

Layout (`--output_dir`):
  train_config.json          resolved config, written before the first step
  checkpoints/step-N/        adapter, optimizer, scheduler, RNG and trainer state (last two kept)
  log.jsonl, loss.png        per-step train loss and validation loss
  adapter_model.safetensors  final adapter, with adapter_config.json, tokenizer, prompt.json,
  data_fingerprints.json     fingerprints of the training inputs (the leakage guard reads them),
  versions.json, COMPLETE    library versions; the marker that the run finished

Light: imports no torch.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from emotion_summary.training.config import CONFIG_FILE, TrainConfig, with_path_lists
from emotion_summary.core.errors import RunDirError

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_PREFIX = "step-"


def resume_command(run_dir: str | Path) -> str:
    return f"python scripts/train_qwen2.py --output_dir {shlex.quote(str(run_dir))} --resume"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.log_path = self.path / "log.jsonl"
        self.checkpoints_dir = self.path / "checkpoints"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def is_complete(self) -> bool:
        return (self.path / COMPLETE_MARKER).is_file()

    @property
    def is_started(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> TrainConfig:
        if not self.is_started:
            raise RunDirError(f"{self.path}: no run to resume here (no {CONFIG_FILE}); start one without --resume")
        return TrainConfig.load(self.path)

    def mark_complete(self) -> None:
        (self.path / COMPLETE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")

    # ---- checkpoints ------------------------------------------------------------------------
    @staticmethod
    def step_of(checkpoint: Path) -> int:
        return int(checkpoint.name[len(CHECKPOINT_PREFIX):])

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoints(self) -> list[Path]:
        """Whole checkpoints (their state.json is written last), oldest first."""
        done = [p for p in self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
                if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "state.json").is_file()]
        return sorted(done, key=self.step_of)

    def latest_checkpoint(self) -> Path | None:
        done = self.checkpoints()
        return done[-1] if done else None

    # ---- the checks before training -------------------------------------------------------------
    def new_run_problem(self) -> str | None:
        """Why a new run cannot start here, else None. Never overwrite: a finished run stays finished;
        an unfinished one is resumed, not restarted; a folder of other files is left alone."""
        if self.is_complete:
            return f"{self.path} holds a finished run; choose another --output_dir"
        if self.is_started:
            return (f"{self.path} holds an unfinished run; continue it with: "
                    f"{resume_command(self.path)}  (or choose another --output_dir)")
        if self.path.is_dir() and any(self.path.iterdir()):  # a run writes README.md, prompt.json ... here
            return (f"{self.path} is not empty and holds no run; its files (README.md, "
                    "tokenizer files ...) would be overwritten: choose a new or empty --output_dir")
        return None

    def resume_config(self, options: dict) -> TrainConfig:
        """The saved config; options given again may change only what a resume allows to change."""
        if self.is_complete:
            raise RunDirError(f"{self.path} holds a finished run; nothing to resume")
        saved = self.config()
        options = {k: v for k, v in options.items() if v is not None}
        if options.get("preset") in ("auto", saved.preset):
            options.pop("preset")
        options = with_path_lists(options)
        diffs = saved.differences(saved.with_options(**options))
        if diffs:
            raise RunDirError(f"cannot resume {self.path} with another config: " + "; ".join(diffs))
        return saved.with_options(**{**options, "output_dir": str(self.path)})
