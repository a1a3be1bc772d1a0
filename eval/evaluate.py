from emotion_summary.cli import run
from emotion_summary.evaluate import evaluate

if __name__ == "__main__":
    run(evaluate)
