"""What to do when a training step runs out of GPU memory: recognise it and name the one lever to pull."""

from __future__ import annotations

from emotion_summary.training.config import TrainConfig
from emotion_summary.training.run_dir import resume_command


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
