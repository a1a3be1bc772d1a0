"""`scripts/check_submission.py`: is a submission file ready for the leaderboard?"""

from __future__ import annotations

import sys

from emotion_summary.predicting.submission import check_submission


def check(file: str, inputs: str | None = None) -> None:
    """Check a submission's ids, keys, values and language; exit 1 when it is not ready.

    Args:
        file: the submission, e.g. submissions/Emotion_Summary_Result.jsonl.
        inputs: the ES inputs it answers (e.g. Emotion_Summary.jsonl): every id once, languages match.
    """
    report = check_submission(file, inputs)
    print(report.render())
    if not report.ok:
        sys.exit(1)
