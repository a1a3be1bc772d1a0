"""Load a base model and its tokenizer: hub name, local folder or the built tiny model; 4-bit or 16-bit."""

from __future__ import annotations

import torch

from emotion_summary.modeling.device import attn_implementation, compute_dtype, device


def resolve_model_path(name_or_path: str) -> str:
    """'tiny' is the locally built random tiny Qwen2 (cpu-smoke); 'smollm2-135m' or a .gguf path is
    dequantised once into a cached HF directory (gguf_models); anything else goes to the hub loader."""
    if name_or_path == "tiny":
        from emotion_summary.modeling.architectures import build_tiny_qwen2

        return str(build_tiny_qwen2())
    from emotion_summary.modeling.gguf_models import resolve_base_model

    return resolve_base_model(name_or_path)


def quantization_config(quantization: str, dtype: torch.dtype, lm_head_4bit: bool = False):
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # [] quantises the LM head too (0.55B params: 1.1 GB in bf16, 0.3 GB in NF4); None keeps
        # transformers' default of leaving it in 16-bit.
        llm_int8_skip_modules=[] if lm_head_4bit else None,
    )


def disable_cpu_weight_repacking(model) -> int:
    """bitsandbytes 0.49-0.50 on CPUs with AVX512-BF16 repacks 4-bit weights in place the first time
    a layer runs in eval mode without grad; the next training step then fails with 'a view of a leaf
    Variable that requires grad is being used in an in-place operation'. Turn that repacking off."""
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_base_model(name_or_path: str, quantization: str = "nf4", dtype_name: str = "auto",
                    attn: str = "auto", lm_head_4bit: bool = False, on_gpu: bool = True):
    """The base model (4-bit or 16-bit) and its tokenizer, on the GPU when there is one (and `on_gpu`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    dtype = compute_dtype(dtype_name)
    gpu = on_gpu and torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        quantization_config=quantization_config(quantization, dtype, lm_head_4bit),
        # Merging on the CPU: attention never runs, and FlashAttention-2 would not load there.
        attn_implementation=attn_implementation(attn, dtype) if gpu else ("eager" if attn == "eager" else "sdpa"),
        device_map={"": device().index} if gpu else "cpu",
    )
    disable_cpu_weight_repacking(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def sixteen_bit_fits_gpu(name_or_path: str, headroom: float = 0.9) -> bool:
    """Whether the whole 16-bit model (2 bytes per parameter, counted from its config) fits in the
    GPU's free memory; merging otherwise runs on the CPU."""
    if not torch.cuda.is_available():
        return False
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(name_or_path)))
    need = 2 * sum(p.numel() for p in skeleton.parameters())
    free, _ = torch.cuda.mem_get_info(device())
    return need < headroom * free
