"""Token-length statistics of ES files with the Qwen2 tokenizer: what fits which preset."""

from emotion_summary.cli import run
from emotion_summary.stats import stats

if __name__ == "__main__":
    run(stats)
