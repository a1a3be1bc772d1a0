"""Score a submission against gold ES records: ROUGE, optional BERTScore and LLM judge."""

from emotion_summary.commands import evaluate

if __name__ == "__main__":
    evaluate()
