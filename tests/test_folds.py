import json
import random

import pytest

from emotion_summary.core.errors import UserError
from emotion_summary.data.folds import (FINGERPRINTS_FILE, find_leaks, fold_of, guard_leakage, save_fingerprints,
                                   split_folds)
from emotion_summary.data.records import Record


def rec(i: int, text: str | None = None, source: str = "longemotion") -> Record:
    return Record(id=i, case_description=(f"case {i}",), consultation_process=(text or f"process {i}",),
                  experience_and_reflection="", source=source)


def test_every_record_heldout_exactly_once_and_balanced():
    records = [rec(i) for i in range(1, 12)]
    heldouts = []
    for k in range(5):
        train, heldout = split_folds(records, folds=5, fold=k)
        assert {r.id for r in train} | {r.id for r in heldout} == set(range(1, 12))
        assert not {r.id for r in train} & {r.id for r in heldout}
        heldouts.append(sorted(r.id for r in heldout))
    assert sorted(i for h in heldouts for i in h) == list(range(1, 12))
    assert sorted(len(h) for h in heldouts) == [2, 2, 2, 2, 3]


def test_assignment_is_pinned_and_independent_of_order():
    records = [rec(i) for i in (1, 2, 3, 4, 5, 6)]
    # pinned: a change here silently moves reports between train and heldout in saved experiments
    assert fold_of(records, folds=3, seed=0) == {1: 2, 2: 2, 3: 1, 4: 0, 5: 1, 6: 0}
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    assert fold_of(shuffled, folds=3, seed=0) == fold_of(records, folds=3, seed=0)
    assert fold_of(records, folds=3, seed=1) != fold_of(records, folds=3, seed=0)
    train, heldout = split_folds(shuffled, folds=3, fold=0)
    assert [r.id for r in heldout] == [r.id for r in shuffled if r.id in (4, 6)]  # input order kept


@pytest.mark.parametrize("folds, fold, match", [(1, 0, "at least 2"), (5, 5, "fold must be in 0..4"),
                                                (9, 0, "need at least 9 records")])
def test_bad_fold_arguments(folds, fold, match):
    with pytest.raises(UserError, match=match):
        split_folds([rec(i) for i in range(4)], folds=folds, fold=fold)


def test_duplicate_ids_rejected():
    with pytest.raises(UserError, match=r"records: duplicate id 1 \(first at record 1\)"):
        split_folds([rec(1), rec(1), rec(2)], folds=2)


def test_fingerprints_file_and_leaks(tmp_path):
    train = [rec(1, "He slept badly."), rec(2, source="psyqa")]
    path = save_fingerprints(tmp_path, train)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [(r["id"], r["source"]) for r in data["records"]] == [(1, "longemotion"), (2, "psyqa")]
    # same inputs under another id, re-spaced and re-cased: still a leak; an unseen report is not
    evaluation = [Record(id=50, case_description=("CASE 1",), consultation_process=("he  slept\nbadly.",),
                         experience_and_reflection=""), rec(3)]
    assert find_leaks(evaluation, tmp_path) == [50]
    assert find_leaks([rec(3)], tmp_path) == []


def test_checkpoint_dir_uses_the_run_dir_file(tmp_path):
    save_fingerprints(tmp_path, [rec(1)])
    checkpoint = tmp_path / "checkpoint-50"
    checkpoint.mkdir()
    assert find_leaks([rec(1), rec(2)], checkpoint) == [1]


def test_guard_refuses_unless_allowed(tmp_path, capsys):
    save_fingerprints(tmp_path, [rec(4), rec(9)])
    records = [rec(i) for i in range(1, 11)]
    with pytest.raises(UserError, match=r"LEAKAGE: 2 of 10 .*ids 4, 9.*--allow_leakage"):
        guard_leakage(records, tmp_path, allow_leakage=False)
    assert guard_leakage(records, tmp_path, allow_leakage=True) == [4, 9]
    err = capsys.readouterr().err
    assert "LEAKAGE: 2 of 10" in err and "!!!!" in err
    assert guard_leakage([rec(1)], tmp_path) == []


def test_guard_without_file_warns(tmp_path, capsys):
    assert guard_leakage([rec(1)], tmp_path / "model") == []
    assert f"no {FINGERPRINTS_FILE}" in capsys.readouterr().err


def test_corrupt_fingerprints_file(tmp_path):
    (tmp_path / FINGERPRINTS_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=FINGERPRINTS_FILE):
        find_leaks([rec(1)], tmp_path)
