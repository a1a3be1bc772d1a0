"""How well the leakage guard's near-copy test separates copies from distinct reports (CPU, seconds).

On the 150 official inputs (`Emotion_Summary.jsonl`): the containment of sampled shingles between every
two distinct reports, and between each report and PsyQA_example plus the samples (identical texts
aside: those are true copies); and, for each edit an evader would make to a copied report (look-alike
Cyrillic letters, a filler word every 12th word, a suffix on every word of 7+ letters, all three), the
lowest containment of an edited copy in its original, and how many copies the guard refuses.

    python bench/leakage_guard.py --data ../shared/data --out bench/results/leakage_guard.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

from _common import append_rows, host_info, markdown_table

from emotion_summary.data.overlap import NEAR_COPY_PARAMS, NEAR_MIN_CONTAINMENT, NearCopyIndex, near_copy_signature, record_text
from emotion_summary.data.psyqa import convert_items, load_psyqa
from emotion_summary.data.records import read_records, record_from_dict

CYRILLIC = str.maketrans({"e": "\u0435", "o": "\u043e", "a": "\u0430", "c": "\u0441", "p": "\u0440"})
EDITS = {
    "homoglyphs": lambda t: t.translate(CYRILLIC),
    "filler every 12th word": lambda t: " ".join(w + (" basically" if i % 12 == 11 else "")
                                                 for i, w in enumerate(t.split(" "))),
    "suffix on long words": lambda t: re.sub(r"\b([A-Za-z]{7,})\b", r"\1ness", t),
}
EDITS["all three"] = lambda t: EDITS["homoglyphs"](EDITS["suffix on long words"](EDITS["filler every 12th word"](t)))


def containment(a: frozenset, b: frozenset) -> float:
    return len(a & b) / max(1, min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = Path(args.data)
    official = read_records(data / "longemotion" / "Emotion_Summary.jsonl")
    others = read_records(data / "longemotion" / "Emotion_Summary_example.jsonl") + [
        record_from_dict(d) for d in convert_items(load_psyqa(data / "psyqa" / "PsyQA_example.json"))]
    sig = {id(r): near_copy_signature(record_text(r)).ngrams for r in official + others}
    distinct = [containment(sig[id(a)], sig[id(b)]) for a, b in itertools.combinations(official, 2)
                if a.fingerprint() != b.fingerprint()]
    cross = [containment(sig[id(a)], sig[id(b)]) for a in official for b in others if a.fingerprint() != b.fingerprint()]
    index = NearCopyIndex()
    for r in others:
        index.add(r.fingerprint(), near_copy_signature(record_text(r)))
    false_positives = sum(1 for r in official if any(m.key != r.fingerprint()
                                                     for m in index.matches(near_copy_signature(record_text(r)))))
    rows = [{"measure": "distinct official pairs", "pairs": len(distinct), "max_containment": round(max(distinct), 3),
             "flagged": sum(c >= NEAR_MIN_CONTAINMENT for c in distinct)},
            {"measure": "official vs PsyQA_example + samples", "pairs": len(cross),
             "max_containment": round(max(cross), 3), "flagged": false_positives}]
    for name, edit in EDITS.items():
        scores = []
        for r in official:
            edited = "\n".join(map(edit, record_text(r).split("\n")))
            scores.append(containment(near_copy_signature(edited).ngrams, sig[id(r)]))
        rows.append({"measure": f"edited copy: {name}", "pairs": len(scores), "min_containment": round(min(scores), 3),
                     "flagged": sum(s >= NEAR_MIN_CONTAINMENT for s in scores)})
    host = host_info()
    append_rows(args.out, [{"bench": "leakage_guard", **row, "params": NEAR_COPY_PARAMS,
                            "threshold": NEAR_MIN_CONTAINMENT, **host} for row in rows])
    print(markdown_table(["measure", "pairs", "containment (max / min)", f"flagged (>= {NEAR_MIN_CONTAINMENT})"],
                         [[r["measure"], r["pairs"], r.get("max_containment", r.get("min_containment")), r["flagged"]]
                          for r in rows]))


if __name__ == "__main__":
    main()
