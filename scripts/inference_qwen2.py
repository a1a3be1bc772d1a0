"""Write a leaderboard submission (Emotion_Summary_Result.jsonl) for an ES inputs file."""

from emotion_summary.commands import inference

if __name__ == "__main__":
    inference()
