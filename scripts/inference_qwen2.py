from emotion_summary.cli import run
from emotion_summary.inference import infer

if __name__ == "__main__":
    run(infer)
