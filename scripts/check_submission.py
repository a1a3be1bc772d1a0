from emotion_summary.check import check
from emotion_summary.cli import run

if __name__ == "__main__":
    run(check)
