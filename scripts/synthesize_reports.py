"""Synthetic case reports in the ES input schema, written by a teacher model from seeds (resumable)."""

from emotion_summary.cli import run
from emotion_summary.synthesize import synthesize_reports

if __name__ == "__main__":
    run(synthesize_reports)
