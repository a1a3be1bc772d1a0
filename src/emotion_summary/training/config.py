"""The training config: every option defined once (type, default, help) as a field of `TrainConfig`.

A run's config is TrainConfig's defaults (the 24gb card's values), then the preset file's values
(`configs/NAME.yaml`, see presets.py), then a --config file, then the command line. It is validated all at once before any
model loads, saved beside every checkpoint as train_config.json and read back by inference
(quantisation, LoRA, prompt) and by `--resume`. The command line is generated from these fields.
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from emotion_summary.core.cli import number_problem
from emotion_summary.core.errors import ConfigError
from emotion_summary.training.presets import CPU_PRESETS, PRESET_NAMES, PRESETS, pick_preset, preset_overrides, unknown_preset
from emotion_summary.prompting.prompt import Language

CONFIG_FILE = "train_config.json"
BASE_MODEL = "Qwen/Qwen2-7B-Instruct"
# Fields that may differ between an interrupted run and its resume.
# The memory levers that leave the training maths alone are free too: pull one after an out-of-memory stop.
RESUME_FREE_FIELDS = {"output_dir", "max_steps", "epochs", "eval_every", "save_every", "repetition_penalty",
                      "offload_activations", "mlp_tile_tokens", "embedding_on_cpu"}


def parse_lora_target(raw: str) -> str | list[str]:
    """`all-linear`, or a comma-separated list of module names."""
    from emotion_summary.core.cli import parse_value

    return "all-linear" if raw.strip() == "all-linear" else parse_value(raw, list[str])


def option(default, help: str, **metadata):
    """A config field: its default, and the help line the command line shows."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainConfig:
    preset: Literal[PRESET_NAMES] = option(  # type: ignore[valid-type]
        "auto", f"card preset: {', '.join(PRESET_NAMES)} (by the GPU's memory; cpu without a GPU); "
        "reads configs/NAME.yaml; options you set override it")
    train_data: list[str] = option(
        [], "labelled ES file(s), comma-separated (JSONL or JSON array; all five gold fields); "
        "cpu and cpu-smoke default to the project's own sample reports")
    eval_data: list[str] = option([], "labelled file(s) for the validation loss, comma-separated")
    max_records: int = option(0, "use only the first N records of train_data, all read and checked "
                              "(0: all; cpu-smoke: a smoke test on a few)")
    output_dir: str = option("", "run directory (default model/qwen2-es-PRESET); never overwritten")
    folds: int = option(0, "hold out one of this many folds (by id) of train_data for validation (0: none)")
    fold: int = option(0, "which fold to hold out (0-based)")
    language: Language = option(
        "auto", "summary language in the prompt: en, zh, or auto (the language the training labels "
        "were written in: the labeller's --language, else the report's)")
    model_name_or_path: str = option(BASE_MODEL, "base model (hub name or local directory); 'tiny' builds "
                                     "a random tiny Qwen2; smollm2-135m or a .gguf file is dequantised "
                                     "once into the cache")
    quantization: Literal["nf4", "none"] = option("nf4", "nf4 (4-bit QLoRA) or none (16-bit LoRA)")
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = option(
        "auto", "auto (bf16 where the GPU or CPU computes it natively, fp16 on older GPUs, else fp32), "
        "bf16, fp16 or fp32")
    max_seq_len: int = option(32768, "tokens per example (prompt + answer); longer reports are trimmed "
                              "in the middle")
    batch_size: int = option(2, "examples per micro-batch")
    grad_accum: int = option(8, "micro-batches per optimizer step")
    epochs: int = option(3, "passes over the training data")
    max_steps: int = option(0, "stop after this many optimizer steps or at the end of --epochs, whichever "
                            "comes first (0: all epochs)")
    learning_rate: float = option(2e-4, "peak learning rate (cosine schedule with warm-up)")
    warmup_ratio: float = option(0.05, "share of the steps spent warming the learning rate up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling numerator")
    # 0: no dropout mask and output kept per LoRA input (0.47 GB per projection at 32K; unsloth's default too).
    lora_dropout: float = option(0.0, "dropout on the LoRA input")
    lora_target: str | list[str] = option(
        "all-linear", "modules that get LoRA: all-linear, or a comma-separated list (q_proj,v_proj)",
        parse=parse_lora_target)
    answer_prefix: Literal["none", "json"] = option(
        "none", "json: the prompt ends with the answer's opening {\"causes\": \" (written into prompt.json), "
        "so a small model answers in JSON from its first token; none: the model writes all of it")
    max_new_tokens: int = option(512, "generation budget the trained model is used with (reserved in "
                                 "max_seq_len)")
    repetition_penalty: float = option(1.0, "generation: divide the logits of tokens the reply already holds "
                                       "by this (1: off; the report's tokens are not penalised)")
    gradient_checkpointing: bool = option(True, "recompute activations in the backward pass (non-reentrant)")
    save_attention: bool = option(False, "with gradient checkpointing, keep each layer's attention output "
                                  "instead of recomputing it (L x hidden values a layer; attention is most "
                                  "of a long step on a CPU)")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = option(
        "auto", "auto (flash_attention_2 when installed, else sdpa), flash_attention_2, sdpa or eager")
    liger_kernels: Literal["auto", "off"] = option("auto", "auto (on a GPU when liger-kernel is installed) "
                                                   "or off")
    offload_activations: bool = option(True, "keep checkpointed activations in CPU RAM (GPU only)")
    mlp_tile_tokens: int = option(16384, "run the MLP in tiles of this many tokens (0: off)")
    embedding_on_cpu: bool = option(False, "keep the input embedding in CPU RAM (GPU only)")
    lm_head_4bit: bool = option(False, "quantise the LM head to NF4 too")
    optimizer: Literal["paged_adamw_8bit", "adamw"] = option("paged_adamw_8bit", "paged_adamw_8bit (GPU) "
                                                             "or adamw")
    eval_every: int = option(50, "optimizer steps between validation losses")
    save_every: int = option(50, "optimizer steps between checkpoints")
    seed: int = option(42, "seed for data order, dropout and initialisation")

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: str | Path) -> Path:
        from emotion_summary.core.atomic_io import atomic_write_json

        return atomic_write_json(Path(directory) / CONFIG_FILE, self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> "TrainConfig":
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; was this written by our trainer?")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k in known})

    def differences(self, other: "TrainConfig", free: set[str] = RESUME_FREE_FIELDS) -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if k not in free and a[k] != b[k]]

    def with_options(self, **options) -> "TrainConfig":
        return replace(self, **options)


OPTION_NAMES = tuple(f.name for f in fields(TrainConfig))


def default_output_dir(preset_name: str) -> str:
    return f"model/qwen2-es-{preset_name}"


def detect_vram_gb() -> float | None:
    """FREE memory of this process's GPU in GB (a desktop or another process may hold some), or None
    without CUDA (imports torch only when asked)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from emotion_summary.core.distributed import local_rank

    return torch.cuda.mem_get_info(local_rank())[0] / 1e9


def with_path_lists(options: dict) -> dict:
    """train_data/eval_data given from Python as one path or "a.jsonl,b.jsonl", as lists."""
    from emotion_summary.core.cli import parse_value

    out = dict(options)
    for key in ("train_data", "eval_data"):
        if isinstance(out.get(key), (str, Path)):
            try:
                out[key] = parse_value(str(out[key]), list[str])
            except ValueError:
                out[key] = [str(out[key])]  # validate() names the problem with the others
    return out


def check_known(options: dict) -> None:
    unknown = sorted(k for k in options if k not in OPTION_NAMES)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join('--' + u for u in unknown)} "
                          "(python scripts/train_qwen2.py --help lists them)")


def resolve_config(preset_name: str = "auto", vram_gb: float | None = None, **overrides) -> TrainConfig:
    """TrainConfig's defaults, the preset's overrides, then every non-None override; 'auto' picks the
    preset from the GPU's memory."""
    if preset_name not in PRESET_NAMES:
        raise ConfigError(unknown_preset(preset_name))
    given = {k: v for k, v in overrides.items() if v is not None}
    check_known(given)
    if preset_name == "auto" and vram_gb is None:  # a GPU torch cannot use is an error, not cpu-smoke
        from emotion_summary.install_torch import gpu_visible_but_unusable

        if problem := gpu_visible_but_unusable():
            raise ConfigError(f"--preset auto: {problem}")
    name = pick_preset(vram_gb) if preset_name == "auto" else preset_name
    given = with_path_lists(given)
    cfg = TrainConfig(**{**preset_overrides(name), **given, "preset": name})
    cfg.output_dir = cfg.output_dir or default_output_dir(cfg.preset)
    return cfg


def _type_problems(cfg: TrainConfig) -> dict[str, str]:
    """Every field checked against its declared type (values may come from Python calls too)."""
    from emotion_summary.core.cli import check_value

    hints = typing.get_type_hints(TrainConfig)
    problems = {}
    for f in fields(TrainConfig):
        try:
            check_value(getattr(cfg, f.name), hints[f.name])
        except ValueError as e:
            problems[f.name] = f"{f.name}: {e}"
    return problems


def validate(cfg: TrainConfig, vram_gb: float | None = None, check_files: bool = True) -> list[str]:
    """Every problem with the config, so the user fixes them in one go (nothing is loaded yet)."""
    mistyped = _type_problems(cfg)
    # the value checks run on a copy whose mistyped fields hold their defaults; their problems are dropped
    typed = replace(cfg, **{name: getattr(TrainConfig(), name) for name in mistyped})
    values = [p for p in _value_problems(typed, vram_gb, check_files) if p.split(":")[0] not in mistyped]
    return list(mistyped.values()) + values


def _value_problems(cfg: TrainConfig, vram_gb: float | None, check_files: bool) -> list[str]:
    problems = []
    ranges = {**dict.fromkeys(("lora_r", "lora_alpha", "batch_size", "grad_accum", "epochs", "max_new_tokens",
                               "eval_every", "save_every"), (int, 1)),
              **dict.fromkeys(("max_steps", "mlp_tile_tokens", "folds", "max_records"), (int, 0)),  # 0: off
              "learning_rate": (float, 0, True), "weight_decay": (float, 0)}
    problems += [problem.removeprefix("--") for name, spec in ranges.items()
                 if (problem := number_problem(name, getattr(cfg, name), *spec))]
    if not 0 <= cfg.warmup_ratio < 1:
        problems.append(f"warmup_ratio: must be in [0, 1), got {cfg.warmup_ratio}")
    if not (cfg.lora_target == "all-linear" or (isinstance(cfg.lora_target, list) and cfg.lora_target)):
        problems.append(f"lora_target: 'all-linear' or a list of module names (q_proj,v_proj), "
                        f"got {cfg.lora_target!r}")
    if cfg.repetition_penalty < 1:
        problems.append(f"repetition_penalty: must be at least 1 (1: off), got {cfg.repetition_penalty}")
    if not 0 <= cfg.lora_dropout < 1:
        problems.append(f"lora_dropout: must be in [0, 1), got {cfg.lora_dropout}")
    if cfg.max_seq_len < cfg.max_new_tokens + 256:
        problems.append(f"max_seq_len: {cfg.max_seq_len} leaves no room for a report beside "
                        f"max_new_tokens={cfg.max_new_tokens}")
    if cfg.folds == 1:
        problems.append("folds: must be 0 (no held-out fold) or at least 2, got 1")
    if cfg.folds and not 0 <= cfg.fold < cfg.folds:
        problems.append(f"fold: must be in 0..{cfg.folds - 1}, got {cfg.fold}")
    if not cfg.folds and cfg.fold:
        problems.append(f"fold: {cfg.fold} given without --folds N")
    if check_files:
        problems += _data_problems(cfg)
    min_vram = PRESETS[cfg.preset]["min_vram_gb"]
    if vram_gb is None and cfg.preset not in CPU_PRESETS:
        problems.append(f"preset {cfg.preset}: needs a CUDA GPU and none was found "
                        "(use --preset cpu or cpu-smoke to try the pipeline on CPU)")
    elif vram_gb is not None and vram_gb < min_vram:
        problems.append(f"preset {cfg.preset}: needs {min_vram} GB of GPU memory, this GPU has "
                        f"{vram_gb:.1f} GB free; pick a smaller preset or --preset auto")
    return problems


def _data_problems(cfg: TrainConfig) -> list[str]:
    from emotion_summary.core.paths import missing_file, output_dir_problems

    problems = [p.replace("--output_dir ", "output_dir: ", 1) for p in output_dir_problems("--output_dir", cfg.output_dir)]
    if not cfg.train_data and cfg.preset not in CPU_PRESETS:
        problems.append("train_data: give one or more labelled ES files (JSONL or JSON)")
    for path in cfg.train_data + cfg.eval_data:
        if missing_file(path):
            problems.append(f"data file {path}: {missing_file(path)}")
    both = {str(Path(p).resolve()) for p in cfg.train_data} & {str(Path(p).resolve()) for p in cfg.eval_data}
    if both:
        problems.append(f"eval_data: {', '.join(sorted(both))} is also training data; a validation loss on "
                        "the training reports measures memorisation (use --folds, or another file)")
    return problems
