"""The leakage guard against near-copies of a training report: homoglyphs, a filler word every 12th
word, suffixes on long words (alone and together) are refused; unrelated reports never are."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re

import pytest

from emotion_summary.data.folds import find_leaks, guard_leakage, save_fingerprints
from emotion_summary.core.errors import UserError
from emotion_summary.data.overlap import NearCopyIndex, near_copy_signature, record_text
from emotion_summary.data.records import Record
from tests.test_overlap import TRAINED, UNSEEN, report

HOMOGLYPHS = str.maketrans({"e": "\u0435", "o": "\u043e", "a": "\u0430", "c": "\u0441", "p": "\u0440"})  # Cyrillic


def homoglyphs(text: str) -> str:
    return text.translate(HOMOGLYPHS)


def filler(text: str) -> str:
    words = text.split(" ")
    return " ".join(w + (" basically" if i % 12 == 11 else "") for i, w in enumerate(words))


def suffixes(text: str) -> str:
    return re.sub(r"\b([A-Za-z]{7,})\b", r"\1ness", text)


def edited(record: Record, edit, rid: int) -> Record:
    return dataclasses.replace(record, id=rid, case_description=tuple(map(edit, record.case_description)),
                               consultation_process=tuple(map(edit, record.consultation_process)),
                               experience_and_reflection=edit(record.experience_and_reflection))


ATTACKS = {"homoglyphs": homoglyphs, "filler every 12th word": filler, "suffixes on long words": suffixes,
           "all three": lambda t: homoglyphs(suffixes(filler(t)))}


@pytest.mark.parametrize("name", ATTACKS)
def test_leakage_guard_refuses_each_near_copy(tmp_path, name):
    save_fingerprints(tmp_path, [TRAINED, report(5, "A short unrelated case.", ("One session.",), "")])
    copy = edited(TRAINED, ATTACKS[name], 21)
    evaluation = [copy, dataclasses.replace(UNSEEN, id=99)]
    assert find_leaks(evaluation, tmp_path) == [21]
    with pytest.raises(UserError, match="LEAKAGE: 1 of 2"):
        guard_leakage(evaluation, tmp_path)


def test_a_version_2_file_still_works_and_says_near_copies_are_not_checked(tmp_path, capsys):
    path = save_fingerprints(tmp_path, [TRAINED])
    data = json.loads(path.read_text(encoding="utf-8"))
    data["version"] = 2
    data.pop("near_copy")
    for row in data["records"]:
        row.pop("near_copy")
    path.write_text(json.dumps(data), encoding="utf-8")
    assert find_leaks([dataclasses.replace(TRAINED, id=7), edited(TRAINED, homoglyphs, 8)], tmp_path) == [7]
    assert "near-copies" in capsys.readouterr().err


def test_no_false_positive_among_the_official_inputs_psyqa_and_the_samples(shared_data):
    """The 150 official inputs against each other, PsyQA and the samples: no near-copy but true copies."""
    from emotion_summary.data.psyqa import convert_items, load_psyqa
    from emotion_summary.data.records import read_records, record_from_dict

    official = read_records(shared_data / "longemotion" / "Emotion_Summary.jsonl")
    samples = read_records(shared_data / "longemotion" / "Emotion_Summary_example.jsonl")
    psyqa = [record_from_dict(d) for d in convert_items(load_psyqa(shared_data / "psyqa" / "PsyQA_example.json"))]
    index = NearCopyIndex()
    for n, r in enumerate(itertools.chain(official, samples, psyqa)):
        index.add(n, near_copy_signature(record_text(r)))
    same_text = {}
    for n, r in enumerate(itertools.chain(official, samples, psyqa)):
        same_text.setdefault(r.fingerprint(), set()).add(n)
    for n, r in enumerate(official):
        found = {m.key for m in index.matches(near_copy_signature(record_text(r)))}
        assert found == same_text[r.fingerprint()], (r.id, found)
