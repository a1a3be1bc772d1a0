"""Merge a LoRA adapter into its 16-bit base model and write a self-contained model folder."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

from emotion_summary.core.errors import ModelError
from emotion_summary.modeling.loading import load_base_model, sixteen_bit_fits_gpu
from emotion_summary.prompting.prompt import PromptSpec
from emotion_summary.training.config import TrainConfig


def _base_name(name_or_path: str) -> str:
    """Last path component of a base model's name: hub id, local copy and cache dir compare equal."""
    if name_or_path == "tiny":
        from emotion_summary.modeling.architectures import default_tiny_dir

        return default_tiny_dir().name
    from emotion_summary.modeling.gguf_models import is_gguf_name
    from emotion_summary.modeling.loading import resolve_model_path

    if is_gguf_name(name_or_path):
        return Path(resolve_model_path(name_or_path)).name
    return Path(name_or_path.rstrip("/")).name


def check_adapter_base(adapter_dir: Path, base_name: str) -> None:
    """Refuse an adapter trained on another base model, before any weights are loaded."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{adapter_dir}: no adapter_config.json")
    trained_on = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if trained_on and _base_name(trained_on) != _base_name(base_name):
        raise ModelError(f"{adapter_dir}: adapter was trained on {trained_on!r}, not on {base_name!r}")


def merge_adapter(adapter_dir: str, out_dir: str) -> str:
    """Merge a trained LoRA adapter into its 16-bit base model and save it standalone.

    Never into the 4-bit base: merging into NF4 weights rounds the LoRA update away. The merged
    directory carries prompt.json, train_config.json and the run's data_fingerprints.json (the leakage
    guard keeps working on it; for a checkpoint they are in the run directory two levels up), and a
    config.json that servers built on transformers 4.x read the same as 5.x. Built beside `out_dir` and
    renamed onto it, so a killed merge leaves no half model.

    Args:
        adapter_dir: directory written by the trainer: a run or one of its checkpoints/step-N.
        out_dir: where the merged model goes (serve it with vLLM or load it with --model_path).
    """
    from emotion_summary.core.paths import refuse_overwrite

    adapter, out = Path(adapter_dir), Path(out_dir)
    if out.resolve() == adapter.resolve():
        raise ModelError(f"--out_dir {out}: is the input --adapter_dir {adapter}; write the merged model elsewhere")
    refuse_overwrite({}, {}, dirs={"--out_dir": out})
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: exists and is not empty; choose a new --out_dir")
    cfg, prompt = TrainConfig.load(adapter), PromptSpec.load(adapter)
    check_adapter_base(adapter, cfg.model_name_or_path)
    from emotion_summary.core.atomic_io import atomic_dir
    from emotion_summary.modeling.architectures import is_complete_model_dir

    with atomic_dir(out, is_complete_model_dir) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged, tokenizer = merged_model(adapter, cfg)
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        write_portable_config(tmp)
        prompt.save(tmp)
        cfg.save(tmp)
        copy_fingerprints(adapter, tmp)
    return str(out)


def merged_model(adapter: Path, cfg: TrainConfig):
    """(the 16-bit base with the adapter merged in, the tokenizer)."""
    from peft import PeftModel

    # On the CPU when the 16-bit model does not fit the GPU's free memory (15 GB for Qwen2-7B).
    base, tokenizer = load_base_model(cfg.model_name_or_path, "none", cfg.compute_dtype, cfg.attn_implementation,
                                      on_gpu=sixteen_bit_fits_gpu(cfg.model_name_or_path))
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload(), tokenizer


def copy_fingerprints(adapter: Path, out: Path) -> Path | None:
    """The training data's fingerprints (the adapter's own, else its run directory's) into `out`."""
    from emotion_summary.data.folds import FINGERPRINTS_FILE, fingerprints_path

    found = fingerprints_path(adapter)
    if found is None:
        print(f"warning: {adapter} has no {FINGERPRINTS_FILE} (nor its run directory); the merged model "
              "cannot be guarded against evaluation on its training reports", file=sys.stderr)
        return None
    return Path(shutil.copy(found, out / FINGERPRINTS_FILE))


def write_portable_config(model_dir: Path) -> dict:
    """Make config.json read the same by transformers 5.x and by readers of the 4.x layout.

    transformers 5.x writes `rope_theta` (and any scaling) only inside `rope_parameters` and the dtype
    as `dtype`; a server built on transformers 4.x reads top-level `rope_theta`, `rope_scaling` and
    `torch_dtype`, and without them silently falls back to base 10,000 instead of Qwen2's 1,000,000.
    Both spellings are written; 5.x reads `rope_parameters` first."""
    from emotion_summary.core.atomic_io import atomic_write_json

    path = model_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" and not config.get("rope_scaling"):
        config["rope_scaling"] = {**{k: v for k, v in rope.items() if k != "rope_theta"},
                                  "type": rope_type, "rope_type": rope_type}
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    atomic_write_json(path, config)
    return config
