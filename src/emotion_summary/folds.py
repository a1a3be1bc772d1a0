"""Deterministic k-fold splits by id, and the guard that keeps training reports out of evaluation.

`save_fingerprints` records the inputs a model was trained on (`data_fingerprints.json` in the run
directory); `guard_leakage` refuses to evaluate a model on reports whose inputs it has seen.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

from emotion_summary.atomic_io import atomic_write_json
from emotion_summary.errors import UserError
from emotion_summary.records import Record, check_unique_ids

FINGERPRINTS_FILE = "data_fingerprints.json"


def _rank_key(record_id: int, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()


def fold_of(records: Sequence[Record], folds: int = 5, seed: int = 0) -> dict[int, int]:
    """id -> fold: ids ordered by a seeded hash, then dealt out in turn, so fold sizes differ by at
    most one and the split does not depend on file order (it does depend on which ids are present)."""
    if folds < 2:
        raise UserError(f"folds must be at least 2, got {folds}")
    if folds > len(records):
        raise UserError(f"{folds} folds need at least {folds} records, got {len(records)}")
    check_unique_ids(records)
    ranked = sorted((r.id for r in records), key=lambda i: _rank_key(i, seed))
    return {rid: n % folds for n, rid in enumerate(ranked)}


def split_folds(records: Sequence[Record], folds: int = 5, fold: int = 0,
                seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(train, heldout) for fold `fold` of `folds`; both keep the input order."""
    if not 0 <= fold < folds:
        raise UserError(f"fold must be in 0..{folds - 1}, got {fold}")
    assignment = fold_of(records, folds, seed)
    train = [r for r in records if assignment[r.id] != fold]
    heldout = [r for r in records if assignment[r.id] == fold]
    return train, heldout


def write_fold(input: str, out_dir: str = "data/folds", folds: int = 5, fold: int = 0) -> tuple[str, str]:
    """Write fold `fold` of `input` as FOLD-train.jsonl and FOLD-heldout.jsonl (the trainer's
    `--folds N --fold k` holds out exactly the same records).

    Args:
        input: ES records file (JSONL or JSON array).
        out_dir: where the two files go.
        folds: number of folds.
        fold: the fold to hold out (0-based).
    """
    from emotion_summary.paths import refuse_overwrite
    from emotion_summary.records import read_records, write_records

    stem = f"{Path(input).stem}.fold{fold}of{folds}"
    targets = {part: Path(out_dir) / f"{stem}-{part}.jsonl" for part in ("train", "heldout")}
    refuse_overwrite({f"--out_dir ({part})": path for part, path in targets.items()}, {"--input": input},
                     dirs={"--out_dir": out_dir})
    train, heldout = split_folds(read_records(input), folds, fold)
    paths = (write_records(targets["train"], train), write_records(targets["heldout"], heldout))
    print(f"{len(train)} training and {len(heldout)} held-out records: {paths[0]}, {paths[1]}")
    return str(paths[0]), str(paths[1])


def save_fingerprints(run_dir: str | Path, records: Sequence[Record]) -> Path:
    """Write run_dir/data_fingerprints.json: what the model in this run was trained on."""
    rows = [{"id": r.id, "source": r.source, "fingerprint": r.fingerprint()} for r in records]
    return atomic_write_json(Path(run_dir) / FINGERPRINTS_FILE, {"version": 1, "records": rows})


def fingerprints_path(run_or_model_dir: str | Path) -> Path | None:
    """The directory's own file, else its run directory's (a checkpoint is run/checkpoints/step-N)."""
    d = Path(run_or_model_dir)
    for candidate in (d / FINGERPRINTS_FILE, d.parent / FINGERPRINTS_FILE, d.parent.parent / FINGERPRINTS_FILE):
        if candidate.is_file():
            return candidate
    return None


def load_fingerprints(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {row["fingerprint"] for row in data["records"]}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a valid {FINGERPRINTS_FILE} ({type(e).__name__}: {e})") from None


def find_leaks(records: Sequence[Record], run_or_model_dir: str | Path) -> list[int]:
    """Ids of `records` whose inputs were in the model's training data ([] when no file is found)."""
    path = fingerprints_path(run_or_model_dir)
    if path is None:
        return []
    seen = load_fingerprints(path)
    return sorted(r.id for r in records if r.fingerprint() in seen)


def _id_list(ids: list[int], limit: int = 20) -> str:
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" ... (+{len(ids) - limit} more)" if len(ids) > limit else "")


def guard_leakage(records: Sequence[Record], model_dir: str | Path, allow_leakage: bool = False) -> list[int]:
    """Refuse (UserError) to evaluate `model_dir` on reports it was trained on, unless allowed."""
    if fingerprints_path(model_dir) is None:
        print(f"warning: {model_dir} has no {FINGERPRINTS_FILE}; cannot check whether the evaluation "
              "reports were in its training data", file=sys.stderr)
        return []
    leaks = find_leaks(records, model_dir)
    if not leaks:
        return []
    message = (f"LEAKAGE: {len(leaks)} of {len(records)} evaluation reports were in the training data "
               f"of {model_dir} (ids {_id_list(leaks)}); scores on them measure memorisation")
    if not allow_leakage:
        raise UserError(message + ". Evaluate on a held-out fold, or pass --allow_leakage to go on anyway.")
    banner = "!" * 78
    print(f"{banner}\n{message}.\nGoing on because --allow_leakage was given.\n{banner}", file=sys.stderr)
    return leaks
