"""Download LongEmotion ES (Hugging Face) and the PsyQA sample (GitHub) into data/, validated."""

from emotion_summary.cli import run
from emotion_summary.download import download_data

if __name__ == "__main__":
    run(download_data)
