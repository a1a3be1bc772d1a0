"""Label unlabelled ES records with a teacher model behind an OpenAI-compatible endpoint (resumable)."""

from emotion_summary.cli import run
from emotion_summary.label import label_with_teacher

if __name__ == "__main__":
    run(label_with_teacher)
