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
from emotion_summary.encode import prompt_budget, prompt_token_ids
from emotion_summary.loss import answer_only_loss
from emotion_summary.prompt import PromptSpec, parse_answer
from emotion_summary.records import Record


def device() -> torch.device:
    """This process's device: its own GPU under `accelerate launch`/`torchrun`, else GPU 0 or the CPU."""
    from emotion_summary.distributed import local_rank

    return torch.device(f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu")


def compute_dtype(name: str = "auto") -> torch.dtype:
    """bf16 where the GPU has it; fp16 on older GPUs (T4, V100, RTX 20xx); fp32 on CPU."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name != "auto":
        return table[name]
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def attn_implementation(name: str = "auto") -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def resolve_model_path(name_or_path: str) -> str:
    """'tiny' is the locally built random tiny Qwen2 (cpu-smoke); anything else goes to the hub loader."""
    if name_or_path == "tiny":
        from emotion_summary.architectures import build_tiny_qwen2

        return str(build_tiny_qwen2())
    return name_or_path


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
                    attn: str = "auto", lm_head_4bit: bool = False):
    """The base model (4-bit or 16-bit) and its tokenizer, placed on the GPU when there is one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    dtype = compute_dtype(dtype_name)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        quantization_config=quantization_config(quantization, dtype, lm_head_4bit),
        attn_implementation=attn_implementation(attn),
        device_map={"": device().index} if torch.cuda.is_available() else "cpu",
    )
    disable_cpu_weight_repacking(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


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


def keep_embedding_on_cpu(model) -> None:
    """Keep the 152,064 x 3,584 input embedding (1.1 GB in bf16) in CPU RAM: ids go down, rows come up."""
    embed = model.get_input_embeddings()
    target = next(p.device for p in model.lm_head.parameters())
    embed.to("cpu")
    embed.register_forward_pre_hook(lambda mod, args: (args[0].to("cpu"),))
    embed.register_forward_hook(lambda mod, args, out: out.to(target, non_blocking=True))


def apply_liger_kernels(setting: str) -> bool:
    if setting == "off" or not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None:
        return False
    from liger_kernel.transformers import apply_liger_kernel_to_qwen2

    # Our loss already skips most logits; Liger's fused CE would compute them over the whole sequence.
    apply_liger_kernel_to_qwen2(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False)
    return True


def enable_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target, bias="none", task_type="CAUSAL_LM")


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
            # Non-reentrant: works with frozen inputs under PEFT; the input hook avoids
            # "element 0 of tensors does not require grad" with the reentrant variant.
            enable_checkpointing(base)
            base.enable_input_require_grads()
        base.config.use_cache = False
        tile_mlp(base, cfg.mlp_tile_tokens)
        if cfg.embedding_on_cpu and torch.cuda.is_available():
            keep_embedding_on_cpu(base)
        model = get_peft_model(base, lora_config(cfg))
        return cls(model, tokenizer, PromptSpec(language=cfg.language), cfg)

    @classmethod
    def load(cls, model_path: str | Path, quantization: str | None = None) -> "Qwen2EmotionSummaryModel":
        """An adapter directory (base model and quantisation read from its train_config.json), a merged
        model directory (16-bit unless `quantization='nf4'`; both carry prompt.json), or a plain model
        directory such as Qwen2-7B-Instruct (16-bit unless told, the project's default prompt)."""
        from emotion_summary.model_identity import describe_model

        info = describe_model(model_path)
        cfg = info.config
        if info.kind == "adapter":
            from peft import PeftModel

            _check_adapter_base(info.path, cfg.model_name_or_path)
            base, tokenizer = load_base_model(cfg.model_name_or_path, info.quantization(quantization),
                                              cfg.compute_dtype, cfg.attn_implementation, cfg.lm_head_4bit)
            model = PeftModel.from_pretrained(base, str(info.path))
        else:
            model, tokenizer = load_base_model(str(info.path), info.quantization(quantization), cfg.compute_dtype,
                                               cfg.attn_implementation)
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
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer-only loss; the LM head runs at the supervised positions alone."""
        causal_lm = self.model.get_base_model()
        dev = device()
        offload = self.config.offload_activations and dev.type == "cuda"
        ctx = torch.autograd.graph.save_on_cpu(pin_memory=True) if offload else contextlib.nullcontext()
        with ctx:
            hidden = causal_lm.model(input_ids=batch["input_ids"].to(dev),
                                     attention_mask=batch["attention_mask"].to(dev)).last_hidden_state
            return answer_only_loss(hidden, causal_lm.lm_head, batch["labels"].to(dev))

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
    def generate(self, records: list[Record], max_new_tokens: int = 512, batch_size: int = 4) -> list[str]:
        """Greedy replies, in the order given (callers sort by length so batches pad little)."""
        if self.max_prompt_tokens(max_new_tokens) < 256:
            raise ModelError(f"max_new_tokens={max_new_tokens} leaves under 256 prompt tokens in this "
                             f"model's max_seq_len={self.config.max_seq_len}; lower --max_new_tokens")
        self.model.eval()
        out: list[str] = []
        for start in range(0, len(records), batch_size):
            out += self._generate_batch(records[start: start + batch_size], max_new_tokens)
        return out

    def _generate_batch(self, records: list[Record], max_new_tokens: int) -> list[str]:
        prompts = []
        for r in records:
            ids, trimmed = prompt_token_ids(self.tokenizer, self.prompt, r, self.max_prompt_tokens(max_new_tokens))
            if trimmed:
                self.trimmed[r.id] = trimmed
                print(f"report {r.id}: {trimmed} tokens trimmed from the middle to fit max_seq_len="
                      f"{self.config.max_seq_len} with max_new_tokens={max_new_tokens}", file=sys.stderr)
            prompts.append(ids)
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device())
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device())
        stop = [self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|endoftext|>")]
        gen = self.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad, eos_token_id=stop, use_cache=True)
        return self.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)

    def summarise(self, record: Record, max_new_tokens: int = 512) -> dict[str, str]:
        return parse_answer(self.generate([record], max_new_tokens, 1)[0]).fields


def _base_name(name_or_path: str) -> str:
    """Last path component of a base model's name: hub id, local copy and cache dir compare equal."""
    if name_or_path == "tiny":
        from emotion_summary.architectures import default_tiny_dir

        return default_tiny_dir().name
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

    base, tokenizer = load_base_model(cfg.model_name_or_path, "none", cfg.compute_dtype, cfg.attn_implementation)
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
