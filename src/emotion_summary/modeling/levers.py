"""Memory levers applied to a loaded model: MLP tiles, CPU embedding, Liger kernels, checkpointing and
the deferred final norm."""

from __future__ import annotations

import contextlib
import importlib.util

import torch


def tile_mlp(model, tile_tokens: int) -> int:
    """Run each MLP over the sequence in tiles, each its own checkpoint: the 3 x L x 18944
    intermediate activations of a recomputed layer (3.7 GB at 32K) then exist one tile at a time."""
    from torch.utils.checkpoint import checkpoint

    if tile_tokens <= 0:
        return 0
    n = 0
    for module in model.modules():
        if type(module).__name__.endswith("MLP") and hasattr(module, "down_proj"):
            whole = module.forward

            def tiled(x, _whole=whole):
                if x.shape[1] <= tile_tokens:
                    return _whole(x)
                parts = [checkpoint(_whole, chunk, use_reentrant=False) if torch.is_grad_enabled()
                         else _whole(chunk) for chunk in x.split(tile_tokens, dim=1)]
                return torch.cat(parts, dim=1)

            module.forward = tiled
            n += 1
    return n


class CpuEmbedding(torch.nn.Module):
    """The input embedding kept in CPU RAM: ids go down, rows come up. Held outside the module's
    parameters, so `model.device` (the first parameter's device) stays the GPU: generate moves its
    inputs there, not to the CPU. Frozen, and never saved (adapters hold LoRA weights only)."""

    def __init__(self, embedding: torch.nn.Embedding, target: torch.device):
        super().__init__()
        self.__dict__["cpu"] = embedding.to("cpu")  # not registered as a submodule
        self.target = target

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.cpu.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.cpu(input_ids.to("cpu")).to(self.target, non_blocking=True)


def keep_embedding_on_cpu(model) -> bool:
    """Keep the 152,064 x 3,584 input embedding (1.1 GB in bf16) in CPU RAM (see CpuEmbedding). Not
    when the LM head shares its weight (tied embeddings, e.g. SmolLM2): moving it would move the head."""
    if model.get_input_embeddings().weight is model.get_output_embeddings().weight:
        return False
    target = next(p.device for p in model.lm_head.parameters())
    model.set_input_embeddings(CpuEmbedding(model.get_input_embeddings(), target))
    return True


def apply_liger_kernels(setting: str) -> bool:
    if setting == "off" or not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None:
        return False
    from liger_kernel.transformers import apply_liger_kernel_to_qwen2

    # Our loss already skips most logits; Liger's fused CE would compute them over the whole sequence.
    apply_liger_kernel_to_qwen2(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False)
    return True


def enable_checkpointing(model, save_attention: bool = False) -> None:
    """Non-reentrant checkpointing: gradients reach the LoRA weights inside a checkpointed layer even
    though the layer's input (the frozen embedding's output) does not require grad. transformers also
    hooks the embedding to make its output require grad (needed by the reentrant variant only); that
    hook keeps the embedding output alive and computes its gradient (0.24 GB at 32K), so it is removed.

    save_attention: the backward's recomputation takes each layer's attention from what the forward
    kept (the SDPA kernel's output and log-sum-exp: L x hidden values a layer) instead of running the
    attention again; everything else is still recomputed."""
    kwargs: dict = {"use_reentrant": False}
    if save_attention:
        kwargs["context_fn"] = attention_saving_contexts
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.disable_input_require_grads()


def attention_kernels() -> list:
    """torch's SDPA kernels (whichever the device and dtype pick): the ops save_attention keeps."""
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    return [getattr(torch.ops.aten, name).default for name in names if hasattr(torch.ops.aten, name)]


def attention_saving_contexts():
    """Selective checkpointing: the attention kernels' outputs are saved, every other op recomputed."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(attention_kernels())


@contextlib.contextmanager
def final_norm_deferred(decoder):
    """Run the decoder without its final RMSNorm and hand the norm over: it works row by row, so it
    can run on the ~200 supervised rows alone instead of the whole sequence (in fp32 inside)."""
    norm = decoder.norm
    decoder.norm = torch.nn.Identity()
    try:
        yield norm
    finally:
        decoder.norm = norm
