"""Main job: train -> predict -> check -> score (`bash start_training_qwen2.sh` runs this)."""

from emotion_summary.commands import pipeline

if __name__ == "__main__":
    pipeline()
