"""Convert a PsyQA JSON array into unlabelled ES records (one per question)."""

from emotion_summary.commands import convert_psyqa

if __name__ == "__main__":
    convert_psyqa()
