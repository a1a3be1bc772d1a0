"""The base model as `model.load_base_model` would place it on the GPU, built from the config
with fake weights: 16-bit tensors, and for 4-bit layers the packed NF4 data and quantisation state
that bitsandbytes keeps (double quantisation: uint8 absmax per 64 weights, fp32 absmax per 256 of
those, a shared 256-entry code, a 16-entry NF4 code per layer). No weight is ever materialised."""

from __future__ import annotations

import math

import torch

from emotion_summary.gpusim.archs import arch_config

NF4_BLOCK = 64
NESTED_BLOCK = 256


def _dynamic_code() -> torch.Tensor:
    """bitsandbytes' 8-bit dynamic map, made outside fake mode (it calls .tolist()) and cached
    where quantize_blockwise looks for it."""
    import bitsandbytes.functional as F
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    if "dynamic" not in F.name2qmap:
        with unset_fake_temporarily():
            F.name2qmap["dynamic"] = F.create_dynamic_map()
    return F.name2qmap["dynamic"]


def fake_params4bit(data, **attrs) -> torch.nn.Parameter:
    """A frozen Parameter on a FakeTensor carrying Params4bit's attributes: Params4bit itself cannot
    wrap a FakeTensor (_make_subclass), and bitsandbytes and peft read only the attributes."""
    param = torch.nn.Parameter(data, requires_grad=False)
    for name, value in attrs.items():
        setattr(param, name, value)
    return param


def quantised_weight(module, device, shared_code: torch.Tensor):
    """The packed 4-bit weight of a bnb Linear4bit with its QuantState, as after loading."""
    from bitsandbytes.functional import QuantState, get_4bit_type

    n, k = module.out_features, module.in_features
    blocks = math.ceil(n * k / NF4_BLOCK)
    packed = torch.empty(((n * k + 1) // 2, 1), dtype=torch.uint8, device=device)
    nested = module.weight.compress_statistics
    if nested:
        state2 = QuantState(absmax=torch.empty(math.ceil(blocks / NESTED_BLOCK), dtype=torch.float32, device=device),
                            code=shared_code, blocksize=NESTED_BLOCK, dtype=torch.float32)
        absmax = torch.empty(blocks, dtype=torch.uint8, device=device)
        offset = torch.empty((), dtype=torch.float32, device=device)
    else:
        state2, offset = None, None
        absmax = torch.empty(blocks, dtype=torch.float32, device=device)
    code = get_4bit_type(module.weight.quant_type, device=device)
    state = QuantState(absmax=absmax, shape=torch.Size([n, k]), code=code, blocksize=NF4_BLOCK,
                       quant_type=module.weight.quant_type, dtype=module.compute_dtype, offset=offset, state2=state2)
    return fake_params4bit(packed, quant_state=state, blocksize=NF4_BLOCK, compress_statistics=nested,
                           quant_type=module.weight.quant_type, quant_storage=module.weight.quant_storage,
                           bnb_quantized=True, module=module)


def materialise(model, device, dtype: torch.dtype) -> None:
    """Replace every meta parameter and buffer by a fake tensor on `device` (4-bit layers packed)."""
    import bitsandbytes as bnb

    shared_code = _dynamic_code().to(device)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.weight = quantised_weight(module, device, shared_code)
            module.quant_state = module.weight.quant_state
        for name, p in list(module.named_parameters(recurse=False)):
            if p.device.type == "meta":  # loaded in the model's dtype, as from_pretrained(dtype=...) does
                kind = dtype if p.dtype.is_floating_point else p.dtype
                setattr(module, name, torch.nn.Parameter(torch.empty(p.shape, dtype=kind, device=device),
                                                         requires_grad=p.requires_grad))
        for name, b in list(module.named_buffers(recurse=False)):
            if b.device.type == "meta":
                if name == "inv_freq":  # rotary frequencies: fp32, computed at init
                    module._buffers[name] = torch.empty(b.shape, dtype=torch.float32, device=device)
                else:
                    module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
    for name in ("inv_freq", "original_inv_freq"):
        for module in model.modules():
            if hasattr(module, name) and isinstance(getattr(module, name), torch.Tensor) \
                    and getattr(module, name).device.type == "meta":
                setattr(module, name, torch.empty(getattr(module, name).shape, dtype=torch.float32, device=device))


def build_base_model(arch: str, layers: int | None, quantization: str, dtype: torch.dtype, attn: str,
                     lm_head_4bit: bool, device, rope_scaling: dict | None = None):
    """The model `load_base_model` returns on a GPU, with fake weights."""
    from transformers import AutoModelForCausalLM

    from emotion_summary.modeling.loading import quantization_config

    from torch.utils._python_dispatch import _disable_current_modes

    config = arch_config(arch, layers, rope_scaling)
    config.dtype = dtype
    qcfg = quantization_config(quantization, dtype, lm_head_4bit)
    with _disable_current_modes(), torch.device("meta"):  # the skeleton: plain meta tensors
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        if qcfg is not None:
            from transformers.integrations.bitsandbytes import replace_with_bnb_linear

            skip = qcfg.llm_int8_skip_modules if qcfg.llm_int8_skip_modules is not None else ["lm_head"]
            replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=qcfg)
            model.is_loaded_in_4bit = True
            model.config.quantization_config = qcfg
    model.config._attn_implementation = attn
    materialise(model, device, dtype)
    model.eval()
    return model
