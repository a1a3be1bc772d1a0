"""Download LongEmotion ES (Hugging Face) and the PsyQA sample (GitHub) into data/, validated."""

from emotion_summary.commands import download_data

if __name__ == "__main__":
    download_data()
