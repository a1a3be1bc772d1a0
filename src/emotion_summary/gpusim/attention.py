"""Attention as the CUDA build would run it. Under fake mode a CPU torch would take SDPA's math path
(an L x L matrix per head); here scaled_dot_product_attention picks the kernel the CUDA build
picks (FlashAttention for fp16/bf16 without a mask on sm80+, grouped-query heads natively; the
memory-efficient kernel with a mask or before sm80, heads repeated; else math), and
`flash_attention_2` (the flash-attn package) runs on unpadded tokens. Both flash paths count the
backward pass's scratch: fp32 dq accumulator, and dk/dv for every query head before they are
summed onto the key/value heads."""

from __future__ import annotations

import torch

aten = torch.ops.aten
FA2_NAME = "flash_attention_2"


class _Flash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale):
        out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, is_causal, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, seed, offset)
        ctx.rest = (cum_q, cum_k, max_q, max_k, is_causal, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, seed, offset = ctx.saved_tensors
        cum_q, cum_k, max_q, max_k, is_causal, scale = ctx.rest
        with _tracker_category("kernel scratch"):
            scratch = flash_backward_scratch(q, k)
        dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
            grad_out, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, is_causal, seed, offset,
            scale=scale)
        del scratch
        return dq, dk, dv, None, None


def flash_backward_scratch(q, k) -> list[torch.Tensor]:
    """FlashAttention-2's backward workspace (flash_api.cpp mha_bwd): dq_accum fp32 [B, L128, H, D],
    softmax_d fp32 [B, H, L128], and with fewer key/value heads dk/dv expanded to all query heads."""
    b, h, length, d = q.shape
    rounded = -(-length // 128) * 128
    out = [torch.empty((b, rounded, h, d), dtype=torch.float32, device=q.device),
           torch.empty((b, h, rounded), dtype=torch.float32, device=q.device)]
    if k.shape[1] != h:
        out += [torch.empty((b, length, h, d), dtype=q.dtype, device=q.device) for _ in range(2)]
    return out


def _tracker_category(name):
    from emotion_summary.gpusim.session import current_tracker
    import contextlib

    tracker = current_tracker()
    return tracker.category(name) if tracker else contextlib.nullcontext()


def _capability() -> tuple[int, int]:
    return torch.cuda.get_device_capability()


def _repeat(x, n):
    return x if n == 1 else x.repeat_interleave(n, 1)


def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention with the CUDA build's kernel choice."""
    half = query.dtype in (torch.float16, torch.bfloat16)
    cap = _capability()
    gqa = key.shape[1] != query.shape[1]
    if attn_mask is None and half and cap >= (8, 0) and query.shape[-1] <= 256 \
            and (query.dtype == torch.float16 or cap >= (8, 0)):
        return _Flash.apply(query, key, value, is_causal, scale)
    if not gqa and (query.dtype != torch.bfloat16 or cap >= (8, 0)) and cap >= (5, 0):
        bias = attn_mask
        if bias is not None and bias.dtype == torch.bool:  # torch turns a boolean mask into a float bias
            bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill_(
                bias.logical_not(), float("-inf"))
        if bias is not None:
            bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        return _efficient(query, key, value, bias, is_causal and bias is None, scale)
    k, v = (_repeat(key, query.shape[1] // key.shape[1]), _repeat(value, query.shape[1] // key.shape[1])) \
        if gqa else (key, value)
    return aten._scaled_dot_product_attention_math(query, k, v, attn_mask, dropout_p, is_causal, None,
                                                   scale=scale)[0]


def _efficient(q, k, v, bias, is_causal, scale):
    return aten._scaled_dot_product_efficient_attention(q, k, v, bias, torch.is_grad_enabled(), 0.0,
                                                        is_causal, scale=scale)[0]


def flash_attention_2(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      **kwargs):
    """transformers' flash_attention_2 (flash-attn package): [B, L, H, D] out; with padding the
    tokens are gathered (unpadded), attended as one varlen batch and scattered back."""
    b, h, length, d = query.shape
    causal = query.shape[2] > 1 if is_causal is None else (is_causal and query.shape[2] > 1)
    if attention_mask is None:
        out = _Flash.apply(query, key, value, causal, scaling)
        return out.transpose(1, 2), None
    from emotion_summary.gpusim.session import current_session

    total = current_session().real_tokens  # tokens that are not padding
    index = torch.empty(total, dtype=torch.long, device=query.device)
    q = query.transpose(1, 2).reshape(b * length, h, d).index_select(0, index)
    k = key.transpose(1, 2).reshape(b * key.shape[2], key.shape[1], d).index_select(0, index)
    v = value.transpose(1, 2).reshape(b * key.shape[2], key.shape[1], d).index_select(0, index)
    out = _Flash.apply(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                       v.transpose(0, 1).unsqueeze(0), causal, scaling)
    out = out.squeeze(0).transpose(0, 1)
    padded = torch.zeros((b * length, h, d), dtype=out.dtype, device=out.device).index_copy(0, index, out)
    return padded.view(b, length, h, d), None


def install(flash_attn_installed: bool) -> list:
    """Patches (target, name, value): the SDPA choice, the flash-attn package's presence, and the
    `flash_attention_2` attention and mask functions transformers dispatches to."""
    import importlib.util

    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(FA2_NAME, flash_attention_2)
    AttentionMaskInterface.register(FA2_NAME, flash_attention_mask)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "flash_attn":
            return real_find_spec("torch") if flash_attn_installed else None
        if name == "liger_kernel":  # Triton kernels cannot run on fake tensors
            return None
        return real_find_spec(name, *args, **kwargs)

    import transformers.masking_utils as mu

    return [(torch.nn.functional, "scaled_dot_product_attention", sdpa),
            (importlib.util, "find_spec", find_spec),
            (mu, "is_tracing", lambda *a, **k: False)]
