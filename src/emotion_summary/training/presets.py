"""Training presets as data files users copy: `configs/NAME.yaml` in this package, one per card size.

`--preset NAME` reads configs/NAME.yaml; `--config FILE` reads a user's copy of one (the command line
wins over either). A file holds a `card` note (description, min_vram_gb: read by --preset auto and the
GPU check, not a training option), `preset: NAME`, and training options with a comment each. Adding a
preset is adding one file. The repository's top-level configs/ holds the same files to copy
(tests/test_presets.py checks they agree).

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
from functools import lru_cache
from pathlib import Path

from emotion_summary.core.cli import CONFIG_NOTES
from emotion_summary.core.errors import ConfigError

PRESET_DIR = Path(__file__).parents[1] / "configs"  # packaged with emotion_summary


def read_preset_file(path: Path) -> dict:
    """{"description", "min_vram_gb", "config"} of one preset file; a ConfigError names what is wrong."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read this preset ({type(e).__name__})") from None
    card = data.get("card") if isinstance(data, dict) else None
    if not isinstance(card, dict) or not isinstance(card.get("description"), str) \
            or not isinstance(card.get("min_vram_gb"), (int, float)) or data.get("preset") != path.stem:
        raise ConfigError(f"{path}: a preset file needs card: {{description: text, min_vram_gb: number}} and "
                          f"preset: {path.stem}")
    return {"description": card["description"], "min_vram_gb": float(card["min_vram_gb"]),
            "config": {k: v for k, v in data.items() if k not in (*CONFIG_NOTES, "preset")}}


@lru_cache(maxsize=1)
def _load_all() -> dict[str, dict]:
    """GPU presets by the memory they need, then the ones that need none (CPU)."""
    presets = {p.stem: read_preset_file(p) for p in PRESET_DIR.glob("*.yaml")}
    return dict(sorted(presets.items(), key=lambda kv: (kv[1]["min_vram_gb"] == 0, kv[1]["min_vram_gb"], kv[0])))


PRESETS: dict[str, dict] = _load_all()
PRESET_NAMES = (*PRESETS, "auto")
CPU_PRESETS = tuple(n for n, p in PRESETS.items() if p["min_vram_gb"] == 0)  # run without a GPU


def default_train_data(name: str) -> list[str]:
    """A CPU preset's training data when none is given: the project's sample reports (English only for
    the real model `cpu`: SmolLM2 was trained on English)."""
    from emotion_summary.data.sample_data import SAMPLE_EN, SMOKE_DATA

    return [str(SAMPLE_EN)] if name == "cpu" else [str(p) for p in SMOKE_DATA]


def unknown_preset(name: str, choices: tuple[str, ...] = PRESET_NAMES) -> str:
    """The one message for a preset name that has no file; `choices`: the names the command takes
    (the planner and the benchmarks take no 'auto')."""
    return (f"--preset: unknown preset {name!r}; choose one of {', '.join(choices)} "
            f"(or --config FILE, a copy of one of {PRESET_DIR})")


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(unknown_preset(name))
    return PRESET_DIR / f"{name}.yaml"


def pick_preset(vram_gb: float | None) -> str:
    """'auto': the largest preset that fits the GPU's free memory (`vram_gb`); without a GPU, `cpu` (the
    real small model; cpu-smoke when that file is gone)."""
    if vram_gb is None:
        return "cpu" if "cpu" in CPU_PRESETS else CPU_PRESETS[0]  # the train command says which it took
    gpu = [n for n, p in PRESETS.items() if p["min_vram_gb"] > 0]
    fitting = [n for n in reversed(gpu) if vram_gb >= PRESETS[n]["min_vram_gb"]]
    if not fitting:
        raise ConfigError(f"the GPU has {vram_gb:.1f} GB free; the smallest preset ({gpu[0]}) needs "
                          f"{PRESETS[gpu[0]]['min_vram_gb']} GB")
    print(f"preset auto: {fitting[0]} ({PRESETS[fitting[0]]['description']}) for {vram_gb:.1f} GB free GPU memory",
          file=sys.stderr)
    return fitting[0]


def preset_overrides(name: str) -> dict:
    """The options preset `name`'s file sets (a copy); everything else keeps TrainConfig's default."""
    if name not in PRESETS:
        raise ConfigError(unknown_preset(name))
    return dict(PRESETS[name]["config"])
