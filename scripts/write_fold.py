"""Write one k-fold split of an ES file: python scripts/write_fold.py --input FILE --folds 5 --fold 0."""

from emotion_summary.commands import write_fold

if __name__ == "__main__":
    write_fold()
