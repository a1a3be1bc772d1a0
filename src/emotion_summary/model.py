"""Qwen2EmotionSummaryModel: Qwen2-7B-Instruct in 4-bit NF4 with LoRA, trained on the answer only.

Everything that decides how a checkpoint was built (quantisation, LoRA, prompt) is read back from
the `train_config.json` and `prompt.json` saved beside it; inference never restates it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch

from emotion_summary.errors import ModelError
from emotion_summary.config import TrainConfig
from emotion_summary.decoding import reply_repetition_penalty, stop_when_answer_complete
from emotion_summary.encode import prompt_budget, prompt_token_ids
from emotion_summary.loss import answer_only_loss
from emotion_summary.prompt import PromptSpec, parse_answer
from emotion_summary.records import Record


def device() -> torch.device:
    """This process's device: its own GPU under `accelerate launch`/`torchrun`, else GPU 0 or the CPU."""
    from emotion_summary.distributed import local_rank

    return torch.device(f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu")


def compute_dtype(name: str = "auto") -> torch.dtype:
    """bf16 where the GPU computes it natively (sm80+); fp16 on older GPUs (T4, V100, RTX 20xx), whose
    bf16 is emulated; fp32 on CPU."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name != "auto":
        return table[name]
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


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


def resolve_model_path(name_or_path: str) -> str:
    """'tiny' is the locally built random tiny Qwen2 (cpu-smoke); 'smollm2-135m' or a .gguf path is
    dequantised once into a cached HF directory (gguf_models); anything else goes to the hub loader."""
    if name_or_path == "tiny":
        from emotion_summary.architectures import build_tiny_qwen2

        return str(build_tiny_qwen2())
    from emotion_summary.gguf_models import resolve_base_model

    return resolve_base_model(name_or_path)


def answer_prefix(cfg: TrainConfig) -> str:
    """The PromptSpec.answer_prefix of a run's --answer_prefix choice."""
    from emotion_summary.prompt import JSON_ANSWER_PREFIX

    return JSON_ANSWER_PREFIX if cfg.answer_prefix == "json" else ""


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


def enable_checkpointing(model) -> None:
    """Non-reentrant checkpointing: gradients reach the LoRA weights inside a checkpointed layer even
    though the layer's input (the frozen embedding's output) does not require grad. transformers also
    hooks the embedding to make its output require grad (needed by the reentrant variant only); that
    hook keeps the embedding output alive and computes its gradient (0.24 GB at 32K), so it is removed."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.disable_input_require_grads()


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target, bias="none", task_type="CAUSAL_LM")


def adapters_in_compute_dtype(dtype: torch.dtype) -> bool:
    """bf16 LoRA weights in a bf16 model: peft then no longer casts every LoRA input to fp32 (six
    L x 3584 and one L x 18944 fp32 tensors per recomputed layer, 1.9 GB at 32K). fp16 models keep
    fp32 adapters: fp16 weights updated without a loss scaler underflow, and AdamW's eps is 0 in fp16."""
    return dtype != torch.float16


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


DEFAULT_CPU_BATCH = 4  # records per generate call on the CPU (RAM is not the limit there)
MAX_GPU_BATCH = 16  # records per generate call when the free GPU memory would allow more
PREFILL_CHUNK_TOKENS = 4096  # prompt tokens (over the whole batch) per prefill forward pass
GPU_MEMORY_USABLE = 0.9  # share of the free memory planned for; the rest absorbs fragmentation


def free_gpu_bytes() -> int | None:
    """Memory this process can still get on its GPU: the device's free memory plus what the caching
    allocator holds unused. None without a GPU."""
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device())
    return free + torch.cuda.memory_reserved(device()) - torch.cuda.memory_allocated(device())


def prefill_chunk_tokens(batch: int) -> int:
    """Prompt tokens per row per prefill pass: the batch shares PREFILL_CHUNK_TOKENS."""
    return max(256, PREFILL_CHUNK_TOKENS // batch)


def generation_groups(lengths: list[int], max_new_tokens: int, kv_bytes_per_token: int,
                      prefill_bytes_per_token: int, free_bytes: int | None,
                      max_batch: int | None = None) -> list[list[int]]:
    """Consecutive prompt indices per generate call. On a GPU a group holds as many prompts as the KV
    cache of the group (padded to its longest prompt, plus the new tokens) fits beside one prefill
    chunk's activations in the free memory; a prompt too long for that alone still goes alone."""
    if free_bytes is None:
        size = max_batch or DEFAULT_CPU_BATCH
        return [list(range(i, min(i + size, len(lengths)))) for i in range(0, len(lengths), size)]
    budget = GPU_MEMORY_USABLE * free_bytes - PREFILL_CHUNK_TOKENS * prefill_bytes_per_token
    cap = max_batch or MAX_GPU_BATCH
    groups: list[list[int]] = []
    group: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        kv_cache = (len(group) + 1) * (max(longest, n) + max_new_tokens) * kv_bytes_per_token
        if group and (len(group) == cap or kv_cache > budget):
            groups.append(group)
            group, longest = [], 0
        group.append(i)
        longest = max(longest, n)
    if group:
        groups.append(group)
    return groups


def _strip_padding(row: list[int], stop: list[int]) -> list[int]:
    """New ids up to and including the first stop token (generate pads finished rows after it)."""
    for i, token in enumerate(row):
        if token in stop:
            return row[: i + 1]
    return row


def _dtype_bytes(model) -> int:
    return model.get_input_embeddings().weight.dtype.itemsize


class Qwen2EmotionSummaryModel:
    """A Qwen2 causal LM with a LoRA adapter, its tokenizer, its prompt and its training config."""

    def __init__(self, model, tokenizer, prompt: PromptSpec, config: TrainConfig):
        self.model, self.tokenizer, self.prompt, self.config = model, tokenizer, prompt, config
        self.trimmed: dict[int, int] = {}  # report id -> prompt tokens trimmed at generation

    # ---- building -----------------------------------------------------------------------------
    @classmethod
    def for_training(cls, cfg: TrainConfig) -> "Qwen2EmotionSummaryModel":
        from peft import get_peft_model

        apply_liger_kernels(cfg.liger_kernels)
        base, tokenizer = load_base_model(cfg.model_name_or_path, cfg.quantization, cfg.compute_dtype,
                                          cfg.attn_implementation, cfg.lm_head_4bit)
        # Not peft's prepare_model_for_kbit_training: it upcasts every 16-bit weight to fp32, and the
        # embedding and LM head alone (2 x 152,064 x 3,584) would grow from 2.2 GB to 4.4 GB.
        base.requires_grad_(False)
        if cfg.gradient_checkpointing:
            enable_checkpointing(base)
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
        from emotion_summary.model_identity import describe_model

        info = describe_model(model_path)
        cfg = info.config
        if info.kind == "adapter":
            from peft import PeftModel

            _check_adapter_base(info.path, cfg.model_name_or_path)
            base, tokenizer = load_base_model(cfg.model_name_or_path, info.quantization(quantization),
                                              cfg.compute_dtype, cfg.attn_implementation, cfg.lm_head_4bit)
            if cfg.embedding_on_cpu and torch.cuda.is_available():
                keep_embedding_on_cpu(base)
            model = PeftModel.from_pretrained(base, str(info.path),
                                              autocast_adapter_dtype=not adapters_in_compute_dtype(base.dtype))
        else:
            model, tokenizer = load_base_model(str(info.path), info.quantization(quantization), cfg.compute_dtype,
                                               cfg.attn_implementation)
            if cfg.embedding_on_cpu and torch.cuda.is_available():
                keep_embedding_on_cpu(model)
        model.eval()
        return cls(model, tokenizer, info.spec, cfg)

    def load_adapter(self, adapter_dir: str | Path) -> None:
        """Load trained LoRA weights into this model (same base model required)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        adapter_dir = Path(adapter_dir)
        _check_adapter_base(adapter_dir, self.config.model_name_or_path)
        set_peft_model_state_dict(self.model, load_file(str(adapter_dir / "adapter_model.safetensors")))

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
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
        self.prompt.save(out)
        self.config.save(out)
        return out

    # ---- inference ----------------------------------------------------------------------------
    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        return prompt_budget(self.config.max_seq_len, max_new_tokens)

    @torch.no_grad()
    def generate(self, records: list[Record], max_new_tokens: int = 512, batch_size: int | None = None) -> list[str]:
        """Greedy replies, in the order given (callers sort by length so batches pad little).
        `batch_size` caps the records per `generate` call; on a GPU the free memory may cap it lower."""
        if self.max_prompt_tokens(max_new_tokens) < 256:
            raise ModelError(f"max_new_tokens={max_new_tokens} leaves under 256 prompt tokens in this "
                             f"model's max_seq_len={self.config.max_seq_len}; lower --max_new_tokens")
        prompts = [self._prompt_ids(r, max_new_tokens) for r in records]
        new_ids = self.generate_ids(prompts, max_new_tokens, batch_size=batch_size)
        # The prompt ends with the answer prefix (if any): the reply is the prefix and its continuation.
        return [self.prompt.answer_prefix + text for text in self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)]

    def _prompt_ids(self, record: Record, max_new_tokens: int) -> list[int]:
        ids, trimmed = prompt_token_ids(self.tokenizer, self.prompt, record, self.max_prompt_tokens(max_new_tokens))
        if trimmed:
            self.trimmed[record.id] = trimmed
            print(f"report {record.id}: {trimmed} tokens trimmed from the middle to fit max_seq_len="
                  f"{self.config.max_seq_len} with max_new_tokens={max_new_tokens}", file=sys.stderr)
        return ids

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, min_new_tokens: int = 0,
                     batch_size: int | None = None) -> list[list[int]]:
        """Greedy new token ids (stop tokens included, padding not) for each prompt's token ids, in
        order. Prompts go in groups of at most `batch_size` (default: as many as the free GPU memory
        holds, `DEFAULT_CPU_BATCH` on the CPU), left-padded; long prompts are prefilled in chunks."""
        self.model.eval()
        out: list[list[int]] = []
        for group in generation_groups([len(p) for p in prompts], max_new_tokens, self._kv_bytes_per_token(),
                                       self._prefill_bytes_per_token(), free_gpu_bytes(), batch_size):
            out += self._generate_group([prompts[i] for i in group], max_new_tokens, min_new_tokens)
        return out

    def _generate_group(self, prompts: list[list[int]], max_new_tokens: int, min_new_tokens: int) -> list[list[int]]:
        gen = self._generate_tensor(prompts, max_new_tokens, min_new_tokens)
        return [_strip_padding(row, self._stop_ids()) for row in gen.tolist()]

    def _stop_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|endoftext|>")]

    def _generate_tensor(self, prompts: list[list[int]], max_new_tokens: int, min_new_tokens: int) -> torch.Tensor:
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
                                  min_new_tokens=min_new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=stop, use_cache=True, logits_processor=processors or None,
                                  stopping_criteria=[stop_when_answer_complete(self.tokenizer, width,
                                                                               self.prompt.answer_prefix)],
                                  prefill_chunk_size=chunk if width > chunk else None)
        return gen[:, width:]

    def _kv_bytes_per_token(self) -> int:
        c = self.model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * _dtype_bytes(self.model)

    def _prefill_bytes_per_token(self) -> int:
        """Live activations per prompt token while one layer runs a prefill chunk without grad:
        residual, normed input, q/k/v/attention output, the MLP's gate, up and product."""
        c = self.model.config
        return (6 * c.hidden_size + 3 * c.intermediate_size) * _dtype_bytes(self.model)

    def summarise(self, record: Record, max_new_tokens: int = 512) -> dict[str, str]:
        return parse_answer(self.generate([record], max_new_tokens, 1)[0]).fields


def _base_name(name_or_path: str) -> str:
    """Last path component of a base model's name: hub id, local copy and cache dir compare equal."""
    if name_or_path == "tiny":
        from emotion_summary.architectures import default_tiny_dir

        return default_tiny_dir().name
    from emotion_summary.gguf_models import is_gguf_name

    if is_gguf_name(name_or_path):
        return Path(resolve_model_path(name_or_path)).name
    return Path(name_or_path.rstrip("/")).name


def _check_adapter_base(adapter_dir: Path, base_name: str) -> None:
    """Refuse an adapter trained on another base model, before any weights are loaded."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{adapter_dir}: no adapter_config.json")
    trained_on = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if trained_on and _base_name(trained_on) != _base_name(base_name):
        raise ModelError(f"{adapter_dir}: adapter was trained on {trained_on!r}, not on {base_name!r}")


def merge_adapter(adapter_dir: str, out_dir: str) -> str:
    """Merge a trained LoRA adapter into its 16-bit base model and save it standalone.

    Never into the 4-bit base: merging into NF4 weights rounds the LoRA update away. The merged
    directory carries prompt.json, train_config.json and the run's data_fingerprints.json (the leakage
    guard keeps working on it; for a checkpoint they are in the run directory two levels up), and a
    config.json that servers built on transformers 4.x read the same as 5.x. Built beside `out_dir` and
    renamed onto it, so a killed merge leaves no half model.

    Args:
        adapter_dir: directory written by the trainer: a run or one of its checkpoints/step-N.
        out_dir: where the merged model goes (serve it with vLLM or load it with --model_path).
    """
    from emotion_summary.paths import refuse_overwrite

    adapter, out = Path(adapter_dir), Path(out_dir)
    if out.resolve() == adapter.resolve():
        raise ModelError(f"--out_dir {out}: is the input --adapter_dir {adapter}; write the merged model elsewhere")
    refuse_overwrite({}, {}, dirs={"--out_dir": out})
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out}: exists and is not empty; choose a new --out_dir")
    cfg, prompt = TrainConfig.load(adapter), PromptSpec.load(adapter)
    _check_adapter_base(adapter, cfg.model_name_or_path)
    from emotion_summary.architectures import is_complete_model_dir
    from emotion_summary.atomic_io import atomic_dir

    with atomic_dir(out, is_complete_model_dir) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged, tokenizer = merged_model(adapter, cfg)
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        write_portable_config(tmp)
        prompt.save(tmp)
        cfg.save(tmp)
        copy_fingerprints(adapter, tmp)
    return str(out)


def merged_model(adapter: Path, cfg: TrainConfig):
    """(the 16-bit base with the adapter merged in, the tokenizer)."""
    from peft import PeftModel

    # On the CPU when the 16-bit model does not fit the GPU's free memory (15 GB for Qwen2-7B).
    base, tokenizer = load_base_model(cfg.model_name_or_path, "none", cfg.compute_dtype, cfg.attn_implementation,
                                      on_gpu=sixteen_bit_fits_gpu(cfg.model_name_or_path))
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload(), tokenizer


def copy_fingerprints(adapter: Path, out: Path) -> Path | None:
    """The training data's fingerprints (the adapter's own, else its run directory's) into `out`."""
    from emotion_summary.folds import FINGERPRINTS_FILE, fingerprints_path

    found = fingerprints_path(adapter)
    if found is None:
        print(f"warning: {adapter} has no {FINGERPRINTS_FILE} (nor its run directory); the merged model "
              "cannot be guarded against evaluation on its training reports", file=sys.stderr)
        return None
    return Path(shutil.copy(found, out / FINGERPRINTS_FILE))


def write_portable_config(model_dir: Path) -> dict:
    """Make config.json read the same by transformers 5.x and by readers of the 4.x layout.

    transformers 5.x writes `rope_theta` (and any scaling) only inside `rope_parameters` and the dtype
    as `dtype`; a server built on transformers 4.x reads top-level `rope_theta`, `rope_scaling` and
    `torch_dtype`, and without them silently falls back to base 10,000 instead of Qwen2's 1,000,000.
    Both spellings are written; 5.x reads `rope_parameters` first."""
    from emotion_summary.atomic_io import atomic_write_json

    path = model_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" and not config.get("rope_scaling"):
        config["rope_scaling"] = {**{k: v for k, v in rope.items() if k != "rope_theta"},
                                  "type": rope_type, "rope_type": rope_type}
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    atomic_write_json(path, config)
    return config
