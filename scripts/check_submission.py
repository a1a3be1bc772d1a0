"""Check a submission file's ids, keys, values and language (exit 1 when not ready)."""

from emotion_summary.commands import check_submission

if __name__ == "__main__":
    check_submission()
