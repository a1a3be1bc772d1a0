"""Sentence splitting and language detection, shared by the data converters, the baseline, the
labeller and the checker (stdlib only: no torch, no tokenizer)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from emotion_summary.data.records import Record

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}  # the languages a report or a summary is written in

_CLOSERS = "”’\"'）)】」』"
# A sentence ends at 。！？!?… or at a Latin full stop before white space or the end (closing quotes may
# come between), and takes its closing quotes and brackets with it.
_SENTENCE_END = re.compile(rf"(?:[。！？!?…]+|\.(?=[{_CLOSERS}]*(?:\s|$)))[{_CLOSERS}]*")


def split_sentences(text: str) -> list[str]:
    """Sentences, each a stripped substring of `text`.

    A line break alone ends nothing: a heading or list label ("Homework:") stays with the sentence
    it introduces; split off, such short keyword-dense lines won the extractive baseline's ranking."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for s in out if s.strip()]


def detect_language(text: str) -> Literal["en", "zh"]:
    """'zh' when CJK characters are more than a quarter of the Latin letters (a Chinese report often
    quotes English scale names and terms); enough to tell the two languages apart."""
    cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
    latin = len(re.findall(r"[A-Za-z]", text))
    return "zh" if cjk > latin / 4 else "en"


def script_language(text: str) -> str | None:
    """'en' or 'zh' as detect_language says, or the lower-case name of the script most letters are in
    when it is neither Latin nor CJK ('cyrillic', 'arabic', ...); None when `text` has no letters."""
    scripts = Counter(_script(ch) for ch in text if ch.isalpha())
    if not scripts:
        return None
    other, n = max(((s, n) for s, n in scripts.items() if s not in ("CJK", "LATIN")), key=lambda sn: sn[1],
                   default=(None, 0))
    if n > sum(scripts.values()) / 2:
        return other.lower()
    return detect_language(text)


def _script(letter: str) -> str:
    name = unicodedata.name(letter, "OTHER")
    return "CJK" if "CJK" in name else "LATIN" if "LATIN" in name else name.split(" ")[0]


def record_language(record: Record) -> Literal["en", "zh"]:
    """The language of the whole report, all sections: what a prediction for it should be written in."""
    return detect_language(" ".join([*record.case_description, *record.consultation_process,
                                     record.experience_and_reflection]))
