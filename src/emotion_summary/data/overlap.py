"""Text overlap that survives cosmetic edits: the leakage guard's and the synthesis gates' one test.

A text is normalised (NFKC, zero-width characters dropped, punctuation to spaces, whitespace
collapsed, casefolded) and cut into tokens (a Latin word, or one CJK character). Two texts overlap
when they share long token n-grams. Storing every n-gram of every training report would be large, so
each text keeps only its *winnowed* n-gram hashes (Schleimer et al., 2003: the smallest hash of every
window of `WINDOW` consecutive n-grams). Any passage of `NGRAM + WINDOW - 1` tokens or more that two
texts share yields at least one shared winnowed hash, so long shared passages are never missed, and a
3,000-word report keeps about 2/(WINDOW+1) of its n-grams (~460).

Light: stdlib only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Hashable

if TYPE_CHECKING:
    from emotion_summary.data.records import Record

NGRAM = 13  # tokens per n-gram: a 13-word run is rare in unrelated text, common in a copy
WINDOW = 12  # winnowing window: any shared run of >= NGRAM + WINDOW - 1 = 24 tokens is found
HASH_BYTES = 6  # 48-bit n-gram hashes: collisions among a few million are negligible
# Two texts overlap when they share MIN_SHARED winnowed hashes (a passage of ~40 tokens, or a few
# shorter ones), or when the shared hashes are MIN_RATIO of the smaller text's (one text mostly
# inside the other). Measured on the 150 official inputs (~400 hashes each): 131 share none with
# any other; 10 pairs share 1-14, 4 of them 3 or more (retellings of one case, reused paragraphs),
# never more than 4% of either report.
MIN_SHARED = 3
MIN_RATIO = 0.5

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


class _NormalChars(dict):
    """str.translate table, filled on first sight of each character (a report has few distinct ones)."""

    def __missing__(self, code: int) -> str:
        category = unicodedata.category(chr(code))
        if category == "Cf":  # format characters: zero-width space/joiners, soft hyphen, BOM, bidi marks
            value = ""
        else:
            value = " " if category[0] in "PSZC" else chr(code)
        self[code] = value
        return value


_NORMAL_CHARS = _NormalChars()


def normalise(text: str) -> str:
    """NFKC, zero-width characters removed, punctuation and symbols as spaces, whitespace collapsed,
    casefolded: curly and straight quotes, joined or split paragraphs and a dropped final period all
    give the same string."""
    text = unicodedata.normalize("NFKC", text).translate(_NORMAL_CHARS)
    return " ".join(text.split()).casefold()


def tokens(text: str) -> list[str]:
    """Tokens of the normalised text: Latin (or other spaced-script) words and single CJK characters."""
    return _TOKEN.findall(normalise(text))


def text_hash(text: str) -> str:
    """Hash of the normalised text: equal for texts that differ only cosmetically."""
    return hashlib.sha256(" ".join(tokens(text)).encode("utf-8")).hexdigest()[:32]


def record_text(record: "Record") -> str:
    """All of a report's input text, paragraphs one per line (normalisation ignores the joins)."""
    return "\n".join([*record.case_description, *record.consultation_process, record.experience_and_reflection])


_MODULUS = (1 << 61) - 1  # a Mersenne prime: polynomial hashes of n-grams roll in O(1) per token
_BASE = 1_000_003
_MASK = (1 << (8 * HASH_BYTES)) - 1


@lru_cache(maxsize=1 << 18)
def _token_value(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "big") % _MODULUS


def ngram_hashes(toks: list[str], ngram: int = NGRAM) -> list[int]:
    """Hash of every run of `ngram` tokens (a rolling polynomial hash of the tokens' blake2b values),
    cut to HASH_BYTES; one hash of all tokens when there are fewer."""
    values = [_token_value(t) for t in toks]
    n = min(ngram, len(values))
    h = 0
    for v in values[:n]:
        h = (h * _BASE + v) % _MODULUS
    out, top = [h & _MASK], pow(_BASE, n - 1, _MODULUS)
    for i in range(n, len(values)):
        h = ((h - values[i - n] * top) * _BASE + values[i]) % _MODULUS
        out.append(h & _MASK)
    return out


def winnowed_hashes(text: str, ngram: int = NGRAM, window: int = WINDOW) -> frozenset[int]:
    """The winnowed n-gram hashes of `text`; a text shorter than `ngram` tokens is one n-gram."""
    toks = tokens(text)
    if not toks:
        return frozenset()
    hashes = ngram_hashes(toks, ngram)
    if len(hashes) <= window:
        return frozenset([min(hashes)])
    return frozenset(min(hashes[i:i + window]) for i in range(len(hashes) - window + 1))


@dataclass(frozen=True)
class Signature:
    """What two texts are compared by: the normalised hash and the winnowed n-gram hashes."""

    text_hash: str
    ngrams: frozenset[int]

    @classmethod
    def of(cls, text: str, ngram: int = NGRAM, window: int = WINDOW) -> "Signature":
        return cls(text_hash(text), winnowed_hashes(text, ngram, window))

    def ngrams_text(self) -> str:
        """The n-gram hashes as space-separated hex, sorted: compact and stable in a JSON file."""
        return " ".join(f"{h:x}" for h in sorted(self.ngrams))

    @classmethod
    def from_stored(cls, text_hash: str, ngrams_text: str) -> "Signature":
        return cls(text_hash, frozenset(int(h, 16) for h in ngrams_text.split()))


@dataclass(frozen=True)
class Match:
    key: Hashable  # what the matching text was indexed under (an id)
    shared: int  # winnowed n-gram hashes in common
    ratio: float  # shared / the smaller text's count
    identical: bool  # same normalised text

    def describe(self) -> str:
        if self.identical:
            return f"{self.key} (same text after normalisation)"
        return f"{self.key} ({self.shared} shared 13-gram fingerprints, {self.ratio:.0%} of the smaller text)"


def is_overlap(shared: int, ratio: float, min_shared: int | None = MIN_SHARED,
               min_ratio: float = MIN_RATIO) -> bool:
    """`min_shared=None`: only the ratio counts (one text mostly inside the other)."""
    return (min_shared is not None and shared >= min_shared) or (shared > 0 and ratio >= min_ratio)


class OverlapIndex:
    """Signatures indexed by n-gram hash: which indexed texts overlap a new one, without comparing
    it with each."""

    def __init__(self, min_shared: int | None = MIN_SHARED, min_ratio: float = MIN_RATIO):
        self.min_shared, self.min_ratio = min_shared, min_ratio
        self._by_ngram: dict[int, list[Hashable]] = defaultdict(list)
        self._by_text: dict[str, list[Hashable]] = defaultdict(list)
        self._sizes: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._sizes)

    def add(self, key: Hashable, signature: Signature) -> None:
        self._sizes[key] = len(signature.ngrams)
        self._by_text[signature.text_hash].append(key)
        for h in signature.ngrams:
            self._by_ngram[h].append(key)

    def matches(self, signature: Signature) -> list[Match]:
        """Indexed texts that overlap `signature`, most shared first."""
        identical = set(self._by_text.get(signature.text_hash, ()))
        shared = Counter(k for h in signature.ngrams for k in self._by_ngram.get(h, ()))
        out = []
        for key in identical | set(shared):
            n = shared.get(key, 0)
            ratio = n / max(1, min(len(signature.ngrams), self._sizes[key]))
            if key in identical or is_overlap(n, ratio, self.min_shared, self.min_ratio):
                out.append(Match(key, n, ratio, key in identical))
        return sorted(out, key=lambda m: (not m.identical, -m.shared, str(m.key)))

    def first_match(self, signature: Signature) -> Match | None:
        found = self.matches(signature)
        return found[0] if found else None


# ---------------------------------------------------------------- near-copies (the leakage guard)
#
# The n-gram test above is beaten by edits that leave a copy readable: look-alike letters from another
# script (Latin e -> Cyrillic е), a filler word every 12th word (every 13-gram then holds one), or a
# suffix on long words. A near-copy signature folds the first (confusables to Latin), cuts every word to
# its first NEAR_PREFIX characters (the third), and uses short shingles of NEAR_SHINGLE such tokens, so a
# filler breaks only a few (the second). Every shingle whose hash is 0 mod NEAR_SAMPLE is kept (an
# unbiased sample the same in every text, ~1/8 of them), and two texts are near-copies when the shared
# samples are NEAR_MIN_CONTAINMENT of the smaller text's, and at least NEAR_MIN_SHARED.
# Measured on the 150 official inputs (bench/leakage_guard.py, bench/RESULTS.md): containment between
# two distinct reports at most 0.20 (retellings of one case), against PsyQA_example and the samples at
# most 0.10 (identical copies aside), of a copy with all three edits in its original at least 0.72.

NEAR_PREFIX = 5
NEAR_SHINGLE = 4
NEAR_SAMPLE = 8
NEAR_MIN_CONTAINMENT = 0.4
NEAR_MIN_SHARED = 3
NEAR_COPY_PARAMS = {"normalise": "nfkc-nopunct-casefold-confusables", "prefix": NEAR_PREFIX,
                    "shingle": NEAR_SHINGLE, "sample": NEAR_SAMPLE, "hash": "poly61-blake2b"}

# Letters of other scripts that look like Latin ones (Unicode's confusables, the lower-case letters
# that matter after casefolding): Cyrillic, Greek and Armenian.
CONFUSABLES = str.maketrans({
    "а": "a", "б": "6", "в": "b", "г": "r", "е": "e", "ё": "e", "з": "3", "и": "u", "к": "k", "м": "m",
    "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s",
    "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g", "ɩ": "i",
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "σ": "o", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ս": "u", "օ": "o", "ո": "n", "ց": "g", "ք": "f",
})


def near_copy_tokens(text: str) -> list[str]:
    """Tokens folded for near-copy matching: confusables to Latin, each word cut to NEAR_PREFIX."""
    return [t[:NEAR_PREFIX] for t in _TOKEN.findall(normalise(text).translate(CONFUSABLES))]


def near_copy_signature(text: str) -> Signature:
    """The sampled shingle hashes of `text` (and its folded text hash)."""
    toks = near_copy_tokens(text)
    if not toks:
        return Signature(text_hash(text), frozenset())
    kept = frozenset(h for h in ngram_hashes(toks, NEAR_SHINGLE) if h % NEAR_SAMPLE == 0)
    return Signature(hashlib.sha256(" ".join(toks).encode("utf-8")).hexdigest()[:32], kept)


class NearCopyIndex(OverlapIndex):
    """Near-copy signatures: a match shares NEAR_MIN_CONTAINMENT of the smaller text's samples (and at
    least NEAR_MIN_SHARED of them), or has the same folded text."""

    def __init__(self):
        super().__init__(min_shared=None, min_ratio=NEAR_MIN_CONTAINMENT)

    def matches(self, signature: Signature) -> list[Match]:
        return [m for m in super().matches(signature) if m.identical or m.shared >= NEAR_MIN_SHARED]
