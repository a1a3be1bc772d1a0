"""Write gold ES records as the LongEmotion benchmark's lm-eval task reads them (lists joined into text)."""

from emotion_summary.commands import lm_eval_data

if __name__ == "__main__":
    lm_eval_data()
