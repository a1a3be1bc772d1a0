"""Qwen2EmotionSummaryModel: a causal LM with a LoRA adapter, its tokenizer, its prompt and its config.

Everything that decides how a checkpoint was built (quantisation, LoRA, prompt) is read back from
the `train_config.json` and `prompt.json` saved beside it; inference never restates it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

from emotion_summary.core.atomic_io import follow_umask
from emotion_summary.modeling.adapters import adapters_in_compute_dtype, lora_config
from emotion_summary.modeling.decoding import reply_repetition_penalty, stop_when_answer_complete
from emotion_summary.modeling.device import device, uses_flash_attention
from emotion_summary.modeling.generation import (
    dtype_bytes,
    free_gpu_bytes,
    generation_groups,
    sampling,
    prefill_chunk_tokens,
    strip_padding,
)
from emotion_summary.modeling.levers import (
    apply_liger_kernels,
    enable_checkpointing,
    final_norm_deferred,
    keep_embedding_on_cpu,
    tile_mlp,
)
from emotion_summary.modeling.loading import load_base_model
from emotion_summary.modeling.loss import answer_only_loss
from emotion_summary.modeling.merge import check_adapter_base
from emotion_summary.prompting.encode import FittedPrompt
from emotion_summary.prompting.prompt import PromptSpec
from emotion_summary.training.config import TrainConfig


def answer_prefix(cfg: TrainConfig) -> str:
    """The PromptSpec.answer_prefix of a run's --answer_prefix choice."""
    from emotion_summary.prompting.prompt import JSON_ANSWER_PREFIX

    return JSON_ANSWER_PREFIX if cfg.answer_prefix == "json" else ""


class Qwen2EmotionSummaryModel:
    """A Qwen2 causal LM with a LoRA adapter, its tokenizer, its prompt and its training config."""

    def __init__(self, model, tokenizer, prompt: PromptSpec, config: TrainConfig):
        self.model, self.tokenizer, self.prompt, self.config = model, tokenizer, prompt, config

    # ---- building -----------------------------------------------------------------------------
    @classmethod
    def for_training(cls, cfg: TrainConfig, loaded: tuple | None = None) -> "Qwen2EmotionSummaryModel":
        """The trainable model of `cfg`: its base model (`loaded`, a (model, tokenizer) pair already
        built, e.g. by the GPU simulator; default: `load_base_model` of cfg's model), frozen, with
        cfg's memory levers and a new LoRA adapter."""
        from peft import get_peft_model

        apply_liger_kernels(cfg.liger_kernels)
        base, tokenizer = loaded or load_base_model(cfg.model_name_or_path, cfg.quantization, cfg.compute_dtype,
                                                    cfg.attn_implementation, cfg.lm_head_4bit)
        # Not peft's prepare_model_for_kbit_training: it upcasts every 16-bit weight to fp32, and the
        # embedding and LM head alone (2 x 152,064 x 3,584) would grow from 2.2 GB to 4.4 GB.
        base.requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable_checkpointing(base, cfg.save_attention)
        base.config.use_cache = False
        tile_mlp(base, cfg.mlp_tile_tokens)
        if cfg.embedding_on_cpu and torch.cuda.is_available():
            keep_embedding_on_cpu(base)
        model = get_peft_model(base, lora_config(cfg),
                               autocast_adapter_dtype=not adapters_in_compute_dtype(base.dtype))
        base.disable_input_require_grads()  # peft hooks the embedding again for 16-bit bases
        print(f"preset {cfg.preset}: compute dtype {str(base.dtype).removeprefix('torch.')}, attention "
              f"{base.config._attn_implementation}, LoRA weights "
              f"{str(next(p.dtype for p in model.parameters() if p.requires_grad)).removeprefix('torch.')}"
              f", embedding on {base.get_input_embeddings().weight.device.type}", file=sys.stderr)
        return cls(model, tokenizer, PromptSpec(language=cfg.language, answer_prefix=answer_prefix(cfg)), cfg)

    @classmethod
    def load(cls, model_path: str | Path, quantization: str | None = None) -> "Qwen2EmotionSummaryModel":
        """An adapter directory (base model and quantisation read from its train_config.json), a merged
        model directory (16-bit unless `quantization='nf4'`; both carry prompt.json), or a plain model
        directory such as Qwen2-7B-Instruct (16-bit unless told, the project's default prompt). The
        embedding stays in CPU RAM where training kept it there."""
        from emotion_summary.modeling.identity import describe_model

        info = describe_model(model_path)
        cfg = info.config
        if info.kind == "adapter":
            check_adapter_base(info.path, cfg.model_name_or_path)
            loaded = load_base_model(cfg.model_name_or_path, info.quantization(quantization), cfg.compute_dtype,
                                     cfg.attn_implementation, cfg.lm_head_4bit)
            return cls.for_inference(loaded, cfg, info.spec, adapter=str(info.path))
        loaded = load_base_model(str(info.path), info.quantization(quantization), cfg.compute_dtype,
                                 cfg.attn_implementation)
        return cls.for_inference(loaded, cfg, info.spec)

    @classmethod
    def for_inference(cls, loaded: tuple, cfg: TrainConfig, prompt: PromptSpec,
                      adapter=None) -> "Qwen2EmotionSummaryModel":
        """The generating model around `loaded`, a (base model, tokenizer) pair: the embedding in CPU
        RAM where training kept it there, then `adapter` attached: a trained adapter's directory, a
        peft LoraConfig (a new adapter of that shape, as the GPU simulator uses) or None (the base alone)."""
        base, tokenizer = loaded
        if cfg.embedding_on_cpu and torch.cuda.is_available():
            keep_embedding_on_cpu(base)
        model = base
        autocast = not adapters_in_compute_dtype(base.dtype)
        if isinstance(adapter, (str, Path)):
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, str(adapter), autocast_adapter_dtype=autocast)
        elif adapter is not None:
            from peft import get_peft_model

            model = get_peft_model(base, adapter, autocast_adapter_dtype=autocast)
        model.eval()
        return cls(model, tokenizer, prompt, cfg)

    # ---- training -----------------------------------------------------------------------------
    @property
    def pads_cheaply(self) -> bool:
        """Whether a padded batch costs no more than its rows (FlashAttention-2's varlen path); other
        kernels get a dense [batch, 1, L, L] mask (2.15 GB at 32K x 2), so the trainer runs rows one by one."""
        return uses_flash_attention(self.model)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer-only loss; the final norm and the LM head run at the supervised positions alone.

        With `offload_activations` only the decoder's saved tensors (the checkpointed layer inputs)
        go to pinned CPU memory; the loss (LM-head weight, answer logits) stays on the GPU. Token ids
        stay on the CPU when the embedding is there, and labels always do (the gather index is built
        on the CPU: no GPU sync)."""
        causal_lm = self.model.get_base_model()
        decoder = causal_lm.model
        dev = device()
        offload = self.config.offload_activations and dev.type == "cuda"
        ctx = torch.autograd.graph.save_on_cpu(pin_memory=True) if offload else contextlib.nullcontext()
        ids_device = decoder.get_input_embeddings().weight.device
        mask = batch.get("attention_mask")
        # A mask without padding is no mask: SDPA then runs causal with no L x L mask at all.
        mask = None if mask is None or bool(mask.all()) else mask.to(dev, non_blocking=True)
        with ctx, final_norm_deferred(decoder) as norm:
            hidden = decoder(input_ids=batch["input_ids"].to(ids_device, non_blocking=True),
                             attention_mask=mask).last_hidden_state
        return answer_only_loss(hidden, causal_lm.lm_head, batch["labels"], norm=norm)

    def save(self, out_dir: str | Path) -> Path:
        """Adapter weights, tokenizer, prompt.json and train_config.json: all inference needs."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        started = time.time_ns() - 2_000_000_000  # 2 s of slack for file systems with coarse timestamps
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
        follow_umask(out, since_ns=started)  # safetensors writes 0600
        self.prompt.save(out)
        self.config.save(out)
        return out

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[FittedPrompt], max_new_tokens: int = 512, batch_size: int | None = None,
                 temperature: float = 0.0, top_p: float = 1.0) -> list[str]:
        """Replies to prompts fitted into this model's window by `encode.fit_report`, in the order given
        (callers sort by length so batches pad little): greedy, or sampled when `temperature` > 0 (with
        nucleus `top_p`). `batch_size` caps the prompts per `generate` call; on a GPU the free memory may
        cap it lower."""
        new_ids = self.generate_ids([p.ids for p in prompts], max_new_tokens, batch_size=batch_size,
                                    temperature=temperature, top_p=top_p)
        # The prompt ends with the answer prefix (if any): the reply is the prefix and its continuation.
        return [self.prompt.answer_prefix + text
                for text in self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, batch_size: int | None = None,
                     temperature: float = 0.0, top_p: float = 1.0) -> list[list[int]]:
        """New token ids, greedy unless `temperature` > 0 (stop tokens included, padding not), for each
        prompt's token ids, in order. Prompts go in groups of at most `batch_size` (default: as many as the free GPU memory
        holds, `DEFAULT_CPU_BATCH` on the CPU), left-padded; long prompts are prefilled in chunks."""
        self.model.eval()
        out: list[list[int]] = []
        for group in generation_groups([len(p) for p in prompts], max_new_tokens, self._kv_bytes_per_token(),
                                       self._prefill_bytes_per_token(), free_gpu_bytes(), batch_size):
            out += self._generate_group([prompts[i] for i in group], max_new_tokens, sampling(temperature, top_p))
        return out

    def _generate_group(self, prompts: list[list[int]], max_new_tokens: int,
                        decoding: dict | None = None) -> list[list[int]]:
        gen = self._generate_tensor(prompts, max_new_tokens, decoding)
        return [strip_padding(row, self._stop_ids()) for row in gen.tolist()]

    def _stop_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|endoftext|>")]

    def _generate_tensor(self, prompts: list[list[int]], max_new_tokens: int,
                         decoding: dict | None = None) -> torch.Tensor:
        """The new ids of one left-padded group, [group, new tokens] (finished rows padded)."""
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device())
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device())
        stop = self._stop_ids()
        chunk = prefill_chunk_tokens(len(prompts))
        penalty = self.config.repetition_penalty
        processors = [reply_repetition_penalty(width, penalty)] if penalty != 1 else []
        gen = self.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                  pad_token_id=pad, eos_token_id=stop, use_cache=True, **(decoding or sampling()),
                                  logits_processor=processors or None,
                                  stopping_criteria=[stop_when_answer_complete(self.tokenizer, width,
                                                                               self.prompt.answer_prefix)],
                                  prefill_chunk_size=chunk if width > chunk else None)
        return gen[:, width:]

    def _kv_bytes_per_token(self) -> int:
        c = self.model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * dtype_bytes(self.model)

    def _prefill_bytes_per_token(self) -> int:
        """Live activations per prompt token while one layer runs a prefill chunk without grad:
        residual, normed input, q/k/v/attention output, the MLP's gate, up and product."""
        c = self.model.config
        return (6 * c.hidden_size + 3 * c.intermediate_size) * dtype_bytes(self.model)
