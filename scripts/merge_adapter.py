"""Merge a trained LoRA adapter into its 16-bit base model (for vLLM or plain transformers)."""

from emotion_summary.commands import merge_adapter

if __name__ == "__main__":
    merge_adapter()
