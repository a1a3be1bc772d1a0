"""Convert a PsyQA JSON array into unlabelled ES records (one per question)."""

from emotion_summary.cli import run
from emotion_summary.psyqa import convert_psyqa

if __name__ == "__main__":
    run(convert_psyqa)
