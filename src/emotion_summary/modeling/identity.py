"""What a `--model_path` directory is and what it decides at inference (light: reads JSON files only).

Three kinds: an adapter written by our trainer, a merged model written by merge_adapter (both carry
prompt.json and train_config.json), and a plain model directory (e.g. Qwen2-7B-Instruct as downloaded),
which is asked with the project's default prompt so base and fine-tuned runs compare on one prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from emotion_summary.training.config import CONFIG_FILE, TrainConfig
from emotion_summary.core.errors import ModelError
from emotion_summary.prompting.prompt import PromptSpec

# Batch size by default: at most this many prompt tokens (batch x max_seq_len) per generate call. The
# KV cache of Qwen2-7B is 56 KB a token (28 layers x 2 x 4 KV heads x 128 x 2 B): 1.9 GB at 32K.
TOKENS_PER_BATCH = 32768
MAX_DEFAULT_BATCH = 8


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    kind: str  # "adapter", "merged" or "plain"
    config: TrainConfig  # the saved one; for a plain model, what inference needs to load it
    spec: PromptSpec  # the saved prompt.json; for a plain model, the project's default

    @property
    def max_new_tokens(self) -> int:
        return self.config.max_new_tokens

    @property
    def batch_size(self) -> int:
        """Not the training micro-batch: generation keeps no activations, only the KV cache."""
        return max(1, min(MAX_DEFAULT_BATCH, TOKENS_PER_BATCH // self.config.max_seq_len))

    def quantization(self, asked: str | None = None) -> str:
        """What the weights load in: as asked, else an adapter's training quantization (its base is
        loaded as it was trained), else 16-bit."""
        return asked or (self.config.quantization if self.kind == "adapter" else "none")

    def identity(self) -> str:
        """Changes when the weights are rewritten (a retrained run in the same directory)."""
        files = sorted(self.path.glob("*.safetensors")) + sorted(self.path.glob("*.bin"))
        stat = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return f"{self.path.resolve()}#{hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:12]}"


def describe_model(model_path: str | Path, language: str | None = None) -> ModelInfo:
    """The directory's kind, config and prompt (with `language` overriding the answer language)."""
    path = Path(model_path)
    if not path.is_dir():
        raise ModelError(f"{path}: no such model directory")
    if (path / "adapter_config.json").is_file():
        kind = "adapter"
    elif (path / "config.json").is_file():
        kind = "merged" if (path / CONFIG_FILE).is_file() else "plain"
    else:
        raise ModelError(f"{path}: neither a LoRA adapter (adapter_config.json) nor a model (config.json)")
    if kind == "plain":
        config, spec = plain_model_config(path), PromptSpec()
    else:
        config, spec = TrainConfig.load(path), PromptSpec.load(path)
    if language and language != spec.language:
        spec = dataclasses.replace(spec, language=language)
    return ModelInfo(path, kind, config, spec)


def plain_model_config(path: Path) -> TrainConfig:
    """Loading settings for a model we did not train: 16-bit, its own context length, the default
    answer budget. Only the fields inference reads matter."""
    try:
        model_config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        positions = int(model_config.get("max_position_embeddings") or 32768)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ModelError(f"{path / 'config.json'}: unreadable ({e})") from None
    return TrainConfig(model_name_or_path=str(path), quantization="none", max_seq_len=positions,
                       output_dir=str(path))
