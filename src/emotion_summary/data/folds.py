"""Deterministic k-fold splits by id, and the guard that keeps training reports out of evaluation.

`save_fingerprints` records the inputs a model was trained on (`data_fingerprints.json` in the run
directory); `guard_leakage` refuses to evaluate a model on reports whose inputs it has seen, also
when the copy was edited cosmetically or lost a part (`overlap`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from emotion_summary.core.atomic_io import atomic_write_json
from emotion_summary.core.errors import UserError
from emotion_summary.core.json_input import load_json
from emotion_summary.data.overlap import (
    HASH_BYTES,
    NEAR_COPY_PARAMS,
    NGRAM,
    WINDOW,
    NearCopyIndex,
    OverlapIndex,
    Signature,
    near_copy_signature,
    record_text,
)
from emotion_summary.data.records import Record, check_unique_ids

FINGERPRINTS_FILE = "data_fingerprints.json"
# Stored with the hashes: a file written with other settings cannot be compared with these.
OVERLAP_PARAMS = {"normalise": "nfkc-nopunct-casefold", "hash": "poly61-blake2b", "ngram": NGRAM, "window": WINDOW,
                  "hash_bytes": HASH_BYTES}
# An evaluation report leaks when it and a training report share at least half of the smaller one's
# n-gram hashes. Passages shared by distinct official reports stay far below (4% at most).
LEAK_MIN_RATIO = 0.5


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
    from emotion_summary.core.paths import refuse_overwrite
    from emotion_summary.data.records import read_records, write_records

    stem = f"{Path(input).stem}.fold{fold}of{folds}"
    targets = {part: Path(out_dir) / f"{stem}-{part}.jsonl" for part in ("train", "heldout")}
    refuse_overwrite({f"--out_dir ({part})": path for part, path in targets.items()}, {"--input": input},
                     dirs={"--out_dir": out_dir})
    train, heldout = split_folds(read_records(input), folds, fold)
    paths = (write_records(targets["train"], train), write_records(targets["heldout"], heldout))
    print(f"{len(train)} training and {len(heldout)} held-out records: {paths[0]}, {paths[1]}")
    return str(paths[0]), str(paths[1])


def save_fingerprints(run_dir: str | Path, records: Sequence[Record]) -> Path:
    """Write run_dir/data_fingerprints.json: what the model in this run was trained on.

    Version 2 adds to each row (id, source, the version-1 `fingerprint`) the normalised text hash and
    the winnowed n-gram hashes of `overlap`, so copies with cosmetic edits or a part left out are found.
    Version 3 adds the near-copy samples (`near_copy`), so copies with look-alike letters, filler words
    or suffixes are found too.
    """
    rows = []
    for r in records:
        text = record_text(r)
        signature = Signature.of(text)
        rows.append({"id": r.id, "source": r.source, "fingerprint": r.fingerprint(),
                     "text_hash": signature.text_hash, "ngrams": signature.ngrams_text(),
                     "near_copy": near_copy_signature(text).ngrams_text()})
    return atomic_write_json(Path(run_dir) / FINGERPRINTS_FILE,
                             {"version": 3, "overlap": OVERLAP_PARAMS, "near_copy": NEAR_COPY_PARAMS, "records": rows})


def fingerprints_path(run_or_model_dir: str | Path) -> Path | None:
    """The directory's own file, else its run directory's (a checkpoint is run/checkpoints/step-N)."""
    d = Path(run_or_model_dir)
    for candidate in (d / FINGERPRINTS_FILE, d.parent / FINGERPRINTS_FILE, d.parent.parent / FINGERPRINTS_FILE):
        if candidate.is_file():
            return candidate
    return None


@dataclass
class TrainingFingerprints:
    """A loaded fingerprints file: exact version-1 hashes, and (version 2) an overlap index."""

    exact: set[str]
    index: OverlapIndex | None  # None for a version-1 file: only exact copies can be found
    near: NearCopyIndex | None = None  # None before version 3: near-copies are not found

    def leaked(self, record: Record) -> bool:
        if record.fingerprint() in self.exact:
            return True
        text = record_text(record)
        if self.index is not None and self.index.first_match(Signature.of(text)) is not None:
            return True
        return self.near is not None and self.near.first_match(near_copy_signature(text)) is not None


def load_fingerprints(path: Path) -> TrainingFingerprints:
    try:
        data = load_json(path.read_text(encoding="utf-8"))
        rows = data["records"]
        exact = {row["fingerprint"] for row in rows}
        if data.get("version", 1) < 2:
            return TrainingFingerprints(exact, None)
        if data.get("overlap") != OVERLAP_PARAMS:
            raise UserError(f"{path}: written with overlap settings {data.get('overlap')}, this version "
                            f"uses {OVERLAP_PARAMS}; retrain, or evaluate with the version that wrote it")
        index = OverlapIndex(min_shared=None, min_ratio=LEAK_MIN_RATIO)
        for n, row in enumerate(rows):
            index.add(n, Signature.from_stored(row["text_hash"], row["ngrams"]))
        near = None
        if data.get("near_copy") == NEAR_COPY_PARAMS:  # else an older file: the ratio test alone
            near = NearCopyIndex()
            for n, row in enumerate(rows):
                near.add(n, Signature.from_stored(f"near-{n}", row["near_copy"]))
        return TrainingFingerprints(exact, index, near)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: not a valid {FINGERPRINTS_FILE} ({type(e).__name__}: {e})") from None


def find_leaks(records: Sequence[Record], run_or_model_dir: str | Path) -> list[int]:
    """Ids of `records` whose inputs were in the model's training data ([] when no file is found):
    the same text after normalisation, or at least half of one inside the other (a version-1 file:
    exact copies only, with a warning)."""
    path = fingerprints_path(run_or_model_dir)
    if path is None:
        return []
    seen = load_fingerprints(path)
    if seen.index is None:
        print(f"warning: {path} is a version-1 file: only exact copies of training reports can be "
              "found (retrain to also find edited copies)", file=sys.stderr)
    elif seen.near is None:
        print(f"warning: {path} was written by an older version: near-copies of training reports (look-alike "
              "letters, filler words, suffixes) are not checked (retrain to check them)", file=sys.stderr)
    return sorted(r.id for r in records if seen.leaked(r))


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
