"""Checkpoints that resume exactly: adapter, optimizer, scheduler, RNG state and step; the last two are kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from emotion_summary.core import distributed as dist
from emotion_summary.core.atomic_io import atomic_write_json
from emotion_summary.core.errors import UserError
from emotion_summary.training.run_dir import RunDir, resume_command

KEEP_CHECKPOINTS = 2


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
        try:
            torch.save(_rng_state(), tmp / f"rng-{dist.rank()}.pt")
        except (OSError, RuntimeError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self.save_failed(final, e) from None
        dist.barrier()
        if dist.is_main():
            try:
                wrapper.save(tmp)  # adapter, tokenizer, prompt.json, train_config.json: loadable as it is
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                atomic_write_json(tmp / "state.json", state)  # written last: marks a whole checkpoint
            except Exception as e:  # noqa: BLE001 - a full disk: torch.save says RuntimeError, tokenizers Exception
                shutil.rmtree(tmp, ignore_errors=True)
                raise self.save_failed(final, e) from None
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.run_dir.checkpoints()[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return final

    def save_failed(self, final: Path, error: BaseException) -> UserError:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        latest = self.run_dir.latest_checkpoint()
        kept = f"the last checkpoint, {latest}, is kept" if latest else "no earlier checkpoint exists"
        return UserError(f"{final}: could not write the checkpoint ({reason}); is the disk full? Nothing of it "
                         f"was kept and {kept}; free space and resume: {resume_command(self.run_dir)}")

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
