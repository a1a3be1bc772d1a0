"""Label unlabelled ES records with a teacher model behind an OpenAI-compatible endpoint (resumable)."""

from emotion_summary.commands import label_with_teacher

if __name__ == "__main__":
    label_with_teacher()
