"""Qwen2 architectures built from a config: the real 7B shape (benchmarks, random weights, no
download) and a tiny one that trains in seconds on CPU (cpu-smoke, tests)."""

from __future__ import annotations

from pathlib import Path

from emotion_summary.core.errors import ConfigError

QWEN2_VOCAB = 152064  # Qwen2-7B's embedding rows (151,646 tokens, padded)

QWEN2_7B = dict(  # Qwen/Qwen2-7B-Instruct's config.json
    vocab_size=QWEN2_VOCAB, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
)
TINY = dict(
    vocab_size=QWEN2_VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
)
ARCHS = {"qwen2-7b": QWEN2_7B, "tiny": TINY}


def qwen2_config(arch: str = "tiny", **overrides):
    from transformers import Qwen2Config

    if arch not in ARCHS:
        raise ConfigError(f"--arch: unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return Qwen2Config(**{**ARCHS[arch], **overrides})


DTYPES = ("fp32", "bf16", "fp16")


def cache_root() -> Path:
    """Where the project's built artefacts live (`$EMOTION_SUMMARY_CACHE`, else ~/.cache/emotion_summary)."""
    from emotion_summary.modeling.tokenizer import default_cache_dir

    return default_cache_dir().parent


def default_tiny_dir() -> Path:
    return cache_root() / "tiny-qwen2"


def random_qwen2_dir(arch: str, seed: int = 0, dtype: str = "fp32", **overrides) -> Path:
    """The default directory of `build_random_qwen2(arch, seed=seed, dtype=dtype, **overrides)`."""
    name = arch + "".join(f"-{k}{v}" for k, v in sorted(overrides.items())) + f"-{dtype}"
    return cache_root() / (name + (f"-seed{seed}" if seed else "") + "-random")


def is_complete_model_dir(path: str | Path) -> bool:
    """config.json, tokenizer.json and every weight file (all shards of a sharded checkpoint)."""
    path = Path(path)
    if not ((path / "config.json").is_file() and (path / "tokenizer.json").is_file()):
        return False
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        return bool(shards) and all((path / s).is_file() for s in shards)
    return (path / "model.safetensors").is_file()


def build_random_qwen2(arch: str, out_dir: str | Path | None = None, seed: int = 0, dtype: str = "fp32",
                       **overrides) -> Path:
    """A randomly initialised Qwen2 of `qwen2_config(arch, **overrides)` with the real Qwen2 tokenizer,
    saved like a hub checkpoint (built once; an existing complete directory is returned as is), so the
    real `from_pretrained` loading path is what cpu-smoke, the tests and the benchmarks exercise.

    Weights are created on the meta device and materialised on the CPU directly in `dtype` (fp32, bf16
    or fp16: the 7B shape is 15 GB in bf16, with no fp32 copy on the way), then filled with N(0, 0.02),
    norms 1 and biases 0, seeded by `seed`. Built beside `out` and renamed onto it (atomic_dir)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from emotion_summary.core.atomic_io import atomic_dir
    from emotion_summary.modeling.tokenizer import qwen2_tokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out_dir) if out_dir else random_qwen2_dir(arch, seed, dtype, **overrides)
    if is_complete_model_dir(out):
        return out
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    config = qwen2_config(arch, **overrides)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device("meta"):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model = model.to_empty(device="cpu").to(torch_dtype)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    model.config.dtype = torch_dtype
    with atomic_dir(out, is_complete_model_dir) as tmp:
        model.save_pretrained(str(tmp))
        qwen2_tokenizer().save_pretrained(str(tmp))
    return out


def build_tiny_qwen2(out_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The tiny random Qwen2 of cpu-smoke and the tests (fp32), in `default_tiny_dir()` unless told."""
    return build_random_qwen2("tiny", out_dir or default_tiny_dir(), seed)
