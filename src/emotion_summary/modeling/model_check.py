"""Is `--model_name_or_path` a model and is every `--lora_target` one of its modules? Answered from the
model's config alone (a skeleton on the meta device: no weights, no download but config.json), before
the run directory is created: a run started with a typo would leave a directory that the corrected
command refuses and `--resume` cannot load.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _path_problem(name: str) -> str | None:
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"model_name_or_path {name}: is a file; give a model directory or a hub name"
        if not (path / "config.json").is_file():
            return f"model_name_or_path {name}: no config.json in this directory; give a model directory"
        return None
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return f"model_name_or_path {name}: no such directory"
    if not HUB_NAME.match(name):
        return f"model_name_or_path {name!r}: neither a directory nor a hub name (owner/name)"
    return None


def _linear_module_names(name: str) -> set[str] | str:
    """Names of the model's linear modules (from a skeleton), or why its config cannot be read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from emotion_summary.modeling.loading import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as e:  # no such hub repo, offline and not cached, a broken config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"model_name_or_path {name}: cannot read its config ({first})"
    return {n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)}


def model_problems(model_name_or_path: str, lora_target) -> list[str]:
    """What is wrong with the model name and the LoRA targets (one line each); [] when they fit."""
    if model_name_or_path != "tiny":
        problem = _path_problem(model_name_or_path)
        if problem:
            return [problem]
    names = _linear_module_names(model_name_or_path)
    if isinstance(names, str):
        return [names]
    if lora_target == "all-linear" or not isinstance(lora_target, list):
        return []
    # peft matches a target by the end of a module's dotted name
    missing = [t for t in lora_target if not any(n == t or n.endswith("." + t) for n in names)]
    if not missing:
        return []
    known = sorted({n.rsplit(".", 1)[-1] for n in names})
    return [f"lora_target: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a linear module of "
            f"{model_name_or_path}; choose from {', '.join(known)} (or all-linear)"]
