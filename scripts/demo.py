"""Open a page to summarise one report with a checkpoint, an endpoint or the extractive baseline."""

from emotion_summary.commands import demo

if __name__ == "__main__":
    demo()
