"""Fine-tune Qwen2-7B-Instruct with QLoRA on labelled ES records: `python scripts/train_qwen2.py --help`."""

from emotion_summary.commands import train

if __name__ == "__main__":
    train()
