"""Synthetic case reports in the ES input schema, written by a teacher model from seeds (resumable)."""

from emotion_summary.commands import synthesize_reports

if __name__ == "__main__":
    synthesize_reports()
