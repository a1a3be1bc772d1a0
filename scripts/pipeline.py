"""Main job: train -> predict -> check -> score (`bash start_training_qwen2.sh` runs this)."""

from emotion_summary.cli import run
from emotion_summary.pipeline import pipeline

if __name__ == "__main__":
    run(pipeline)
