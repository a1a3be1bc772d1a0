"""Qwen2 architectures built from a config: the real 7B shape (benchmarks, random weights, no
download) and a tiny one that trains in seconds on CPU (cpu-smoke, tests)."""

from __future__ import annotations

from pathlib import Path

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
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return Qwen2Config(**{**ARCHS[arch], **overrides})


def default_tiny_dir() -> Path:
    from emotion_summary.qwen_tokenizer_offline import default_cache_dir

    return default_cache_dir().parent / "tiny-qwen2"


def build_tiny_qwen2(out_dir: str | Path | None = None, seed: int = 0) -> Path:
    """A randomly initialised tiny Qwen2 with the real Qwen2 tokenizer, saved like a hub checkpoint,
    so the real `from_pretrained` loading path is what cpu-smoke and the tests exercise."""
    import torch
    from transformers import Qwen2ForCausalLM

    from emotion_summary.qwen_tokenizer_offline import qwen2_tokenizer

    out = Path(out_dir) if out_dir else default_tiny_dir()
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(qwen2_config("tiny"))
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    qwen2_tokenizer().save_pretrained(str(tmp))
    tmp.replace(out) if not out.exists() else None
    return out
