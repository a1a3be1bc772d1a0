"""Merge a trained LoRA adapter into its 16-bit base model (for vLLM or plain transformers)."""

from emotion_summary.cli import run
from emotion_summary.model import merge_adapter

if __name__ == "__main__":
    run(merge_adapter)
