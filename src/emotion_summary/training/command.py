"""The `train` command: resolve the preset and options, check everything before a model loads, run."""

from __future__ import annotations

from pathlib import Path

from emotion_summary.core import distributed as dist
from emotion_summary.core.errors import ConfigError
from emotion_summary.core.output_lock import hold_outputs
from emotion_summary.modeling.model_check import model_problems
from emotion_summary.training.config import TrainConfig, detect_vram_gb, resolve_config, validate
from emotion_summary.training.run_dir import RunDir
from emotion_summary.training.train_data import load_data, training_language
from emotion_summary.training.trainer import Trainer


def train(preset: str = "auto", resume: bool = False, **options) -> str:
    """Fine-tune Qwen2-7B-Instruct with QLoRA on labelled ES records; options as `config.TrainConfig`
    (unset ones take the preset's value). `resume=True` continues the unfinished run in `output_dir`
    with its saved config: only `output_dir` is needed."""
    run_dir = options.get("output_dir") or resolve(preset, **options)[0].output_dir
    with hold_outputs([run_dir] if dist.is_main() else []):  # one run writes a run directory at a time
        return str(prepare_run(preset, resume, **options).run())


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
        problems = validate(cfg, vram)
    else:
        cfg, vram = resolve(preset, **options)
        problems = validate(cfg, vram) + [p for p in [RunDir(cfg.output_dir).new_run_problem()] if p]
    if not problems:  # the model and its LoRA targets, before the run directory exists
        problems = model_problems(cfg.model_name_or_path, cfg.lora_target)
    raise_problems(problems)
    records = load_data(cfg)
    if not resume:
        cfg.language = training_language(cfg.language, records[0])
    print_choices(cfg, preset, vram, options)
    return cfg, records


def raise_problems(problems: list[str]) -> None:
    """Every problem at once (config, data files, run directory): one line for one, else a list."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("the config has problems:\n  - " + "\n  - ".join(problems))


def resolve(preset: str = "auto", **options) -> tuple[TrainConfig, float | None]:
    vram = detect_vram_gb()
    return resolve_config(preset, vram, **options), vram


def print_choices(cfg: TrainConfig, asked_preset: str, vram: float | None, options: dict) -> None:
    """The resolved choices, before anything loads: which preset and why, and what it decided."""
    why = ""
    if asked_preset == "auto":
        why = f" (--preset auto: {'no CUDA GPU' if vram is None else f'{vram:.1f} GB GPU'})"
    from emotion_summary.modeling.device import attn_implementation, compute_dtype, cpu_has_native_bf16

    from_preset = [f"{k}={getattr(cfg, k)}" for k in _preset_keys(cfg.preset) if options.get(k) is None]
    dtype = str(compute_dtype(cfg.compute_dtype)).removeprefix("torch.")
    if vram is None:  # the CPU: say why auto chose its dtype, and how many threads torch runs
        import torch

        native = "has" if cpu_has_native_bf16() else "has no"
        dtype += f" (the CPU {native} bf16 instructions)" if cfg.compute_dtype == "auto" else ""
        dtype += f", {torch.get_num_threads()} CPU threads (OMP_NUM_THREADS)"
    print(f"preset {cfg.preset}{why}; model {cfg.model_name_or_path}, quantization {cfg.quantization}, "
          f"compute dtype {dtype}, attention {attn_implementation(cfg.attn_implementation)}; "
          f"output {cfg.output_dir}")
    if from_preset:
        print(f"from the preset: {', '.join(from_preset)}")


def _preset_keys(name: str) -> list[str]:
    from emotion_summary.training.presets import preset_overrides

    return list(preset_overrides(name))


def command_options():
    """The train command's options: every TrainConfig field, and --resume."""
    from emotion_summary.core.cli import Option, dataclass_options

    return dataclass_options(TrainConfig) + [Option(
        "resume", bool, False, "continue the unfinished run in --output_dir from its last checkpoint with "
        "its saved config (--output_dir is all it needs)")]


PRESET_NOTE = ("Unset options take the preset's value: --preset NAME reads configs/NAME.yaml (copy one and "
               "pass --config FILE to edit it); the defaults shown are the 24gb card's.")


def main(argv: list[str] | None = None) -> None:
    """Fine-tune Qwen2-7B-Instruct with QLoRA on labelled ES records (resumable, never overwrites a run)."""
    from emotion_summary.core.cli import call, parse_or_exit

    values = parse_or_exit(command_options(), argv, main.__doc__, config_file=True, defaults_note=PRESET_NOTE)
    call(lambda: train(**values))
