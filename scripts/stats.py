"""Token-length statistics of ES files with the Qwen2 tokenizer: what fits which preset."""

from emotion_summary.commands import stats

if __name__ == "__main__":
    stats()
