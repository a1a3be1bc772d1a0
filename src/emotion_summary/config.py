"""The resolved training config: preset + command-line overrides, validated all at once before any
model loads, saved beside every checkpoint and read back by inference (quantisation, LoRA, prompt)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from emotion_summary.presets import PRESET_NAMES, pick_preset, preset

CONFIG_FILE = "train_config.json"
# Fields that may differ between an interrupted run and its resume.
# The memory levers that leave the training maths alone are free too: pull one after an out-of-memory stop.
RESUME_FREE_FIELDS = {"resume", "output_dir", "max_steps", "eval_every", "save_every",
                      "offload_activations", "mlp_tile_tokens", "embedding_on_cpu"}


@dataclass
class TrainConfig:
    preset: str
    description: str
    model_name_or_path: str
    quantization: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target: str | list[str]
    gradient_checkpointing: bool
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    epochs: int
    max_new_tokens: int
    optimizer: str
    attn_implementation: str
    liger_kernels: str
    eval_every: int
    save_every: int
    seed: int
    min_vram_gb: float
    max_seq_len: int
    batch_size: int
    grad_accum: int
    offload_activations: bool
    mlp_tile_tokens: int
    embedding_on_cpu: bool
    lm_head_4bit: bool
    max_steps: int = 0  # 0: run all epochs
    compute_dtype: str = "auto"  # auto: bf16 where supported, fp16 on older GPUs, fp32 on CPU
    output_dir: str = ""  # default_output_dir(preset) when empty
    train_data: list[str] = field(default_factory=list)
    eval_data: list[str] = field(default_factory=list)
    folds: int = 0  # >0: hold out fold `fold` of the training data for validation
    fold: int = 0
    language: str = "auto"
    resume: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, directory: str | Path) -> Path:
        from emotion_summary.atomic_io import atomic_write_json

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
    from emotion_summary.distributed import local_rank

    return torch.cuda.mem_get_info(local_rank())[0] / 1e9


def resolve_config(preset_name: str = "auto", vram_gb: float | None = None, **overrides) -> TrainConfig:
    """Preset values, then every non-None override; 'auto' picks the preset from the GPU's memory."""
    if preset_name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESET_NAMES)}")
    if preset_name == "auto" and vram_gb is None:  # a GPU torch cannot use is an error, not cpu-smoke
        from emotion_summary.install_torch import gpu_visible_but_unusable
        if problem := gpu_visible_but_unusable():
            raise ValueError(f"--preset auto: {problem}")
    name = pick_preset(vram_gb) if preset_name == "auto" else preset_name
    values = {"preset": name, **preset(name)}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in known)
    if unknown:
        raise ValueError(f"unknown config fields: {', '.join(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("train_data", "eval_data"):
        if isinstance(values.get(key), (str, Path)):
            values[key] = [str(values[key])]
        values[key] = [str(p) for p in values.get(key) or []]
    cfg = TrainConfig(**{k: v for k, v in values.items() if k in known})
    cfg.output_dir = cfg.output_dir or default_output_dir(cfg.preset)
    return cfg


def validate(cfg: TrainConfig, vram_gb: float | None = None, check_files: bool = True) -> list[str]:
    """Every problem with the config, so the user fixes them in one go (nothing is loaded yet)."""
    problems = []
    if cfg.quantization not in ("nf4", "none"):
        problems.append(f"quantization: {cfg.quantization!r} is not one of nf4, none")
    if cfg.compute_dtype not in ("auto", "bf16", "fp16", "fp32"):
        problems.append(f"compute_dtype: {cfg.compute_dtype!r} is not one of auto, bf16, fp16, fp32")
    if cfg.optimizer not in ("paged_adamw_8bit", "adamw"):
        problems.append(f"optimizer: {cfg.optimizer!r} is not one of paged_adamw_8bit, adamw")
    for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "epochs", "max_new_tokens",
                 "eval_every", "save_every"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) <= 0:
            problems.append(f"{name}: must be a positive integer, got {getattr(cfg, name)!r}")
    if not isinstance(cfg.max_steps, int) or cfg.max_steps < 0:
        problems.append(f"max_steps: must be 0 (all epochs) or a positive integer, got {cfg.max_steps!r}")
    if not 0 <= cfg.warmup_ratio < 1:
        problems.append(f"warmup_ratio: must be in [0, 1), got {cfg.warmup_ratio}")
    if not (cfg.lora_target == "all-linear" or (isinstance(cfg.lora_target, list) and cfg.lora_target)):
        problems.append(f"lora_target: 'all-linear' or a list of module names (q_proj,v_proj), "
                        f"got {cfg.lora_target!r}")
    if not 0 <= cfg.lora_dropout < 1:
        problems.append(f"lora_dropout: must be in [0, 1), got {cfg.lora_dropout}")
    if not cfg.learning_rate or cfg.learning_rate <= 0:
        problems.append(f"learning_rate: must be positive, got {cfg.learning_rate}")
    if cfg.max_seq_len < cfg.max_new_tokens + 256:
        problems.append(f"max_seq_len: {cfg.max_seq_len} leaves no room for a report beside "
                        f"max_new_tokens={cfg.max_new_tokens}")
    if cfg.attn_implementation not in ("auto", "flash_attention_2", "sdpa", "eager"):
        problems.append(f"attn_implementation: {cfg.attn_implementation!r} is not one of auto, "
                        "flash_attention_2, sdpa, eager")
    if cfg.liger_kernels not in ("auto", "off"):
        problems.append(f"liger_kernels: {cfg.liger_kernels!r} is not one of auto, off")
    if cfg.language not in ("en", "zh", "auto"):
        problems.append(f"language: {cfg.language!r} is not one of en, zh, auto")
    if cfg.folds and not 0 <= cfg.fold < cfg.folds:
        problems.append(f"fold: must be in 0..{cfg.folds - 1}, got {cfg.fold}")
    if check_files:
        if not cfg.train_data and cfg.preset != "cpu-smoke":
            problems.append("train_data: give one or more labelled ES files (JSONL or JSON)")
        for path in cfg.train_data + cfg.eval_data:
            if not Path(path).is_file():
                problems.append(f"data file {path}: no such file")
    if vram_gb is None and cfg.preset != "cpu-smoke":
        problems.append(f"preset {cfg.preset}: needs a CUDA GPU and none was found "
                        "(use --preset cpu-smoke to try the pipeline on CPU)")
    elif vram_gb is not None and vram_gb < cfg.min_vram_gb:
        problems.append(f"preset {cfg.preset}: needs {cfg.min_vram_gb} GB of GPU memory, this GPU has "
                        f"{vram_gb:.1f} GB free; pick a smaller preset or --preset auto")
    return problems
