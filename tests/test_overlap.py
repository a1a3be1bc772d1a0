"""Normalisation, n-gram overlap, and the leakage guard against edited copies of training reports."""

import dataclasses
import json

import pytest

from emotion_summary.core.errors import UserError
from emotion_summary.data.folds import FINGERPRINTS_FILE, find_leaks, guard_leakage, save_fingerprints
from emotion_summary.data.overlap import (NGRAM, WINDOW, OverlapIndex, Signature, normalise, record_text, tokens,
                                     winnowed_hashes)
from emotion_summary.data.records import Record

CASE = ("Visitor, female, 29 years old, single, a nurse in a city hospital. She came because she has "
        "slept badly for three months and cries after night shifts without knowing why.")
SESSIONS = (
    "In the first session she described the ward where a young patient died during her shift. She said "
    "she \"should have noticed earlier\" and that she replays the evening whenever she closes her eyes.",
    "In the second session we worked on her thoughts about blame. She wrote down what she knew at the "
    "time and what she learned later, and she noticed that the two lists were not the same.",
    "In the third session she reported sleeping five hours on most nights. She had talked with her head "
    "nurse and asked for two weeks of day shifts, which were granted without any argument.",
)
REFLECTION = ("Looking back, the turning point was separating hindsight from foresight. I let her guilt "
              "stand long enough to be heard before questioning it; rushing that step would have cost "
              "her trust. The case reminded me how often carers treat their own grief as a failure.")
OTHER_CASE = ("Visitor, male, 41 years old, married, a bus driver. His wife asked him to come because "
              "he shouts at their children and then withdraws to the garage for whole evenings.")
OTHER_SESSIONS = ("We mapped the evenings hour by hour and found that the shouting follows the drive home "
                  "through heavy traffic, when he has not eaten since noon and the house is loud.",)
OTHER_REFLECTION = ("His anger was tiredness and hunger before it was anything else; simple routines did "
                    "more than insight. I would ask about the body's state earlier next time.")


def report(i: int, case=CASE, sessions=SESSIONS, reflection=REFLECTION) -> Record:
    return Record(id=i, case_description=(case,), consultation_process=tuple(sessions),
                  experience_and_reflection=reflection)


TRAINED = report(1)
UNSEEN = report(2, OTHER_CASE, OTHER_SESSIONS, OTHER_REFLECTION)

EVASIONS = {
    "paragraphs joined": report(11, sessions=(" ".join(SESSIONS),)),
    "final period dropped": report(12, reflection=REFLECTION.rstrip(".")),
    "empty reflection": report(13, reflection=""),
    "curly quotes": report(14, sessions=tuple(s.replace('"', "\u201c", 1).replace('"', "\u201d", 1)
                                              .replace("'", "\u2019") for s in SESSIONS),
                           reflection=REFLECTION.replace("'", "\u2019")),
    "zero-width space": report(15, case=CASE.replace("nurse", "nur\u200bse").replace("slept", "\u200bslept")),
    "re-cased and re-spaced": report(16, case=CASE.upper().replace(" ", "  \n")),
    "one session left out": report(17, sessions=SESSIONS[:2]),
}


def test_normalise_folds_cosmetic_differences():
    assert normalise("\u201cShe\u2019s  fine,\u201d he said.\u200b\n") == normalise('"She\'s fine," he said') \
        == "she s fine he said"
    assert normalise("ｆｕｌｌ\uff0cwidth") == "full width"  # NFKC: full-width letters and comma
    assert tokens("她说：我很好。OK") == ["她", "说", "我", "很", "好", "ok"]


def test_winnowing_finds_every_long_shared_passage():
    passage = " ".join(f"w{i}" for i in range(NGRAM + WINDOW - 1))
    for pad in range(0, 40, 7):
        a = " ".join(f"a{i}" for i in range(pad)) + " " + passage + " " + " ".join(f"x{i}" for i in range(50))
        b = " ".join(f"b{i}" for i in range(90)) + " " + passage
        assert winnowed_hashes(a) & winnowed_hashes(b)
    assert winnowed_hashes("") == frozenset()
    assert len(winnowed_hashes("short text")) == 1


@pytest.mark.parametrize("name", EVASIONS)
def test_each_evasion_is_still_an_overlap(name):
    index = OverlapIndex(min_shared=None, min_ratio=0.5)
    index.add(TRAINED.id, Signature.of(record_text(TRAINED)))
    match = index.first_match(Signature.of(record_text(EVASIONS[name])))
    assert match is not None and match.key == 1
    assert index.first_match(Signature.of(record_text(UNSEEN))) is None


def test_identical_after_normalisation_is_reported_as_such():
    index = OverlapIndex()
    index.add("a", Signature.of(record_text(TRAINED)))
    for name in ("paragraphs joined", "final period dropped", "curly quotes", "zero-width space"):
        assert index.first_match(Signature.of(record_text(EVASIONS[name]))).identical, name


def test_one_shared_passage_is_an_overlap_only_for_the_passage_rule():
    borrowed = report(3, OTHER_CASE, (OTHER_SESSIONS[0] + " " + SESSIONS[1],), OTHER_REFLECTION)
    passages = OverlapIndex(min_shared=1)
    passages.add(1, Signature.of(record_text(TRAINED)))
    assert passages.first_match(Signature.of(record_text(borrowed))) is not None
    mostly = OverlapIndex(min_shared=None, min_ratio=0.5)
    mostly.add(1, Signature.of(record_text(TRAINED)))
    assert mostly.first_match(Signature.of(record_text(borrowed))) is None


@pytest.mark.parametrize("name", EVASIONS)
def test_leakage_guard_refuses_each_evasion(tmp_path, name):
    save_fingerprints(tmp_path, [TRAINED, report(5, "A short unrelated case.", ("One session.",), "")])
    evaluation = [EVASIONS[name], dataclasses.replace(UNSEEN, id=99)]
    assert find_leaks(evaluation, tmp_path) == [EVASIONS[name].id]
    with pytest.raises(UserError, match="LEAKAGE: 1 of 2"):
        guard_leakage(evaluation, tmp_path)


def test_version_1_file_still_reads_and_finds_exact_copies(tmp_path, capsys):
    rows = [{"id": 1, "source": "longemotion", "fingerprint": TRAINED.fingerprint()}]
    (tmp_path / FINGERPRINTS_FILE).write_text(json.dumps({"version": 1, "records": rows}), encoding="utf-8")
    assert find_leaks([dataclasses.replace(TRAINED, id=7), EVASIONS["empty reflection"]], tmp_path) == [7]
    assert "version-1 file" in capsys.readouterr().err


def test_version_3_file_keeps_the_version_1_fields_and_its_settings(tmp_path):
    data = json.loads(save_fingerprints(tmp_path, [TRAINED]).read_text(encoding="utf-8"))
    assert data["version"] == 3 and data["overlap"]["ngram"] == NGRAM
    row = data["records"][0]
    assert row["fingerprint"] == TRAINED.fingerprint() and row["id"] == 1 and row["ngrams"]
    data["overlap"]["ngram"] = 8
    (tmp_path / FINGERPRINTS_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match="overlap settings"):
        find_leaks([TRAINED], tmp_path)


def test_official_inputs_do_not_leak_into_each_other(shared_data):
    from emotion_summary.data.folds import LEAK_MIN_RATIO
    from emotion_summary.data.records import read_records

    official = read_records(shared_data / "longemotion" / "Emotion_Summary.jsonl")
    index = OverlapIndex(min_shared=None, min_ratio=LEAK_MIN_RATIO)
    signatures = {r.id: Signature.of(record_text(r)) for r in official}
    for rid, signature in signatures.items():
        index.add(rid, signature)
    assert all([m.key for m in index.matches(s)] == [rid] for rid, s in signatures.items())


def test_overlap_and_synthesis_import_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, emotion_summary.data.overlap, emotion_summary.teacher.synthesize, emotion_summary.data.folds\n"
            "print([m for m in ('torch', 'transformers', 'peft', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
