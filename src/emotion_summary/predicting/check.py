"""`scripts/check_submission.py`: is a submission file ready for the leaderboard?"""

from __future__ import annotations

import sys

from typing import Literal

from emotion_summary.predicting.submission import check_submission


def check(file: str, inputs: str | None = None, keys: Literal["competition", "benchmark"] = "competition") -> None:
    """Check a submission's ids, keys, values and language; exit 1 when it is not ready.

    Args:
        file: the submission, e.g. submissions/Emotion_Summary_Result.jsonl.
        inputs: the ES inputs it answers (e.g. Emotion_Summary.jsonl): every id once, languages match.
        keys: competition (the CloudCom 2025 challenge: predicted_cause, predicted_illness_Characteristics, ...)
            or benchmark (LongEmotion's own result files: predicted_causes, predicted_characteristics, ...).
    """
    report = check_submission(file, inputs, keys)
    print(report.render())
    if not report.ok:
        sys.exit(1)
