"""The LoRA adapter's configuration and dtype."""

from __future__ import annotations

import torch

from emotion_summary.training.config import TrainConfig


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target, bias="none", task_type="CAUSAL_LM")


def adapters_in_compute_dtype(dtype: torch.dtype) -> bool:
    """bf16 LoRA weights in a bf16 model: peft then no longer casts every LoRA input to fp32 (six
    L x 3584 and one L x 18944 fp32 tensors per recomputed layer, 1.9 GB at 32K). fp16 models keep
    fp32 adapters: fp16 weights updated without a loss scaler underflow, and AdamW's eps is 0 in fp16."""
    return dtype != torch.float16
