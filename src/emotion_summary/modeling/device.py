"""Which device, compute dtype and attention kernel a model runs with."""

from __future__ import annotations

import importlib.util

import torch

from emotion_summary.core.errors import ModelError


def device() -> torch.device:
    """This process's device: its own GPU under `accelerate launch`/`torchrun`, else GPU 0 or the CPU."""
    from emotion_summary.core.distributed import local_rank

    return torch.device(f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu")


def compute_dtype(name: str = "auto") -> torch.dtype:
    """bf16 where the hardware computes it natively: sm80+ GPUs, and CPUs with AVX512-BF16 or AMX
    (measured on the real model: 1.8x faster than fp32 and a quarter of the step memory); fp16 on
    older GPUs (T4, V100, RTX 20xx), whose bf16 is emulated; fp32 on other CPUs, where bf16 is
    converted back and forth and slower than fp32."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name != "auto":
        return table[name]
    if not torch.cuda.is_available():
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def cpu_has_native_bf16() -> bool:
    """The CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), as torch's own CPU checks see it."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


# SDPA with K/V heads repeated to the query heads: the memory-efficient kernel then applies. On sm75
# (T4, RTX 20xx) SDPA has no fused kernel for grouped-query attention (enable_gqa), so plain "sdpa"
# falls back to the math path: an L x L score matrix per head, 371 GB at 32K.
SDPA_REPEAT_KV = "sdpa_repeat_kv"


def gpu_capability() -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device()) if torch.cuda.is_available() else None


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attn_implementation(name: str = "auto", dtype: torch.dtype | None = None) -> str:
    """auto: FlashAttention-2 on sm80+ in 16-bit (`dtype`, default the auto compute dtype) when
    installed; SDPA with repeated K/V heads below sm80; else SDPA. An explicit flash_attention_2
    where it cannot run is refused."""
    capability = gpu_capability()
    dtype = dtype or compute_dtype("auto")
    fa2_possible = (capability is not None and capability >= (8, 0) and dtype in (torch.bfloat16, torch.float16)
                    and flash_attn_installed())
    if name == "flash_attention_2" and not fa2_possible:
        raise ModelError(f"attn_implementation=flash_attention_2 needs an sm80+ GPU (Ampere or newer), 16-bit "
                         f"compute and flash-attn installed; here: GPU capability {capability}, dtype {dtype}. "
                         "Use --attn_implementation auto")
    if name != "auto":
        return name
    if fa2_possible:
        return "flash_attention_2"
    if capability is not None and capability < (8, 0):
        register_sdpa_repeat_kv()
        return SDPA_REPEAT_KV
    return "sdpa"


class _Ungrouped:
    """An attention module seen as having as many K/V heads as query heads (after repeat_kv)."""
    num_key_value_groups = 1

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)


def sdpa_repeat_kv_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    return sdpa_attention_forward(_Ungrouped(module), query, repeat_kv(key, groups), repeat_kv(value, groups),
                                  attention_mask, **kwargs)


def register_sdpa_repeat_kv() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SDPA_REPEAT_KV, sdpa_repeat_kv_attention)
    AttentionMaskInterface.register(SDPA_REPEAT_KV, sdpa_mask)


def uses_flash_attention(model) -> bool:
    """FlashAttention-2 runs padded batches unpadded (varlen); every other kernel needs a dense mask."""
    return "flash_attention" in str(getattr(model.config, "_attn_implementation", ""))
