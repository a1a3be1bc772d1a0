"""Architectures the planner knows, from their published config.json (no download)."""

from __future__ import annotations

from emotion_summary.modeling.architectures import QWEN2_7B

ARCHS = {
    "qwen2-7b": ("qwen2", QWEN2_7B),
    "qwen2.5-7b": ("qwen2", {**QWEN2_7B, "max_position_embeddings": 32768}),
    "llama3.1-8b": ("llama", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})),
    # Qwen(1)-7B, for the Qwen Q-LoRA calibration rows: multi-head attention, biased QKV.
    "qwen-7b": ("llama", dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=True)),
}
PLANNER_ARCHS = ("qwen2-7b", "qwen2.5-7b", "llama3.1-8b")
YARN_FACTOR = 4


def position_limit(arch: str, yarn: bool = False) -> int:
    limit = ARCHS[arch][1]["max_position_embeddings"]
    return limit * YARN_FACTOR if yarn and arch.startswith("qwen") else limit


def yarn_scaling(arch: str) -> dict:
    return {"rope_type": "yarn", "factor": float(YARN_FACTOR),
            "original_max_position_embeddings": ARCHS[arch][1]["max_position_embeddings"]}


def arch_config(arch: str, layers: int | None = None, rope_scaling: dict | None = None):
    from transformers import LlamaConfig, Qwen2Config

    family, values = ARCHS[arch]
    values = dict(values)
    if layers:
        values["num_hidden_layers"] = layers
    if rope_scaling:
        values["rope_scaling"] = rope_scaling
    return (Qwen2Config if family == "qwen2" else LlamaConfig)(**values)
