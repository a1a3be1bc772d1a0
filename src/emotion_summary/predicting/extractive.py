"""A no-model baseline: for each field, the report sentences that mention that field's keywords.

Runs in seconds on a CPU, always gives five non-empty fields, and is the fallback that fills a field
a model left out. Lengths are capped near the gold fields' mean (112-289 characters of English).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from emotion_summary.prompting.prompt import answer_text
from emotion_summary.data.records import GOLD_FIELDS, INPUT_FIELDS, Record
from emotion_summary.data.text import record_language, split_sentences



@dataclass(frozen=True)
class FieldRule:
    en: tuple[str, ...]  # lower-case word prefixes: "depress" matches depressed/depression
    zh: tuple[str, ...]
    prior: dict[str, float]  # how likely each report section speaks of this field
    position: float  # +1: later sentences preferred, -1: earlier ones, 0: no preference
    max_words: int  # English cap; Chinese gets twice as many characters


RULES = {
    "causes": FieldRule(
        en=("because", "due to", "caused", "cause", "trigger", "led to", "lead to", "leading to",
            "result of", "resulted", "stem", "rooted", "root", "origin", "background", "childhood",
            "conflict", "pressure", "stress", "trauma", "divorce", "loss", "death", "died", "bull",
            "expectation", "since"),
        zh=("原因", "由于", "因为", "导致", "引起", "诱发", "起因", "源于", "压力", "冲突", "创伤",
            "童年", "离婚", "去世", "期望", "霸凌"),
        prior={"case_description": 1.0, "consultation_process": 0.6, "experience_and_reflection": 0.9},
        position=-1.0, max_words=30),
    "symptoms": FieldRule(
        en=("symptom", "anxi", "depress", "insomnia", "sleep", "panic", "fear", "afraid", "worr",
            "cry", "tired", "fatigue", "headache", "irritab", "low mood", "nervous", "obsess",
            "avoid", "palpitation", "appetite", "suicid", "sad", "tension", "restless", "discomfort"),
        zh=("症状", "焦虑", "抑郁", "失眠", "睡眠", "恐惧", "害怕", "担心", "紧张", "哭", "烦躁",
            "低落", "头痛", "心慌", "强迫", "回避", "食欲", "疲惫", "不适"),
        prior={"case_description": 1.0, "consultation_process": 0.7, "experience_and_reflection": 0.5},
        position=-1.0, max_words=25),
    "treatment_process": FieldRule(
        en=("counsel", "therap", "session", "consultation", "technique", "intervention", "hypno",
            "cognitive", "behavio", "empath", "listen", "relax", "homework", "narrative", "guided",
            "explor", "exercise", "rapport", "assessment", "method", "approach", "regression"),
        zh=("咨询", "治疗", "干预", "技术", "疗法", "催眠", "认知", "行为", "共情", "倾听", "放松",
            "作业", "叙事", "引导", "探索", "评估", "方法", "会谈"),
        prior={"case_description": 0.2, "consultation_process": 1.0, "experience_and_reflection": 0.8},
        position=0.0, max_words=60),
    "characteristics_of_illness": FieldRule(
        en=("characteri", "feature", "typical", "case of", "type of", "disorder", "condition",
            "chronic", "persistent", "intermittent", "nature", "manifest", "pattern", "diagnos",
            "hypochondri", "personality", "recurr", "tendency"),
        zh=("特点", "特征", "属于", "典型", "性质", "表现为", "障碍", "持续", "反复", "诊断",
            "人格", "模式", "倾向"),
        prior={"case_description": 0.8, "consultation_process": 0.4, "experience_and_reflection": 1.0},
        position=0.0, max_words=30),
    "treatment_effect": FieldRule(
        en=("improv", "better", "reliev", "relief", "alleviat", "reduc", "effect", "outcome",
            "progress", "change", "recover", "calm", "no longer", "able to", "finally", "eventually",
            "success", "resolv", "gain", "accept"),
        zh=("好转", "改善", "缓解", "效果", "变化", "进步", "减轻", "恢复", "不再", "能够", "最终",
            "平静", "明显", "接纳"),
        prior={"case_description": 0.1, "consultation_process": 0.9, "experience_and_reflection": 1.0},
        position=1.0, max_words=50),
}
assert tuple(RULES) == GOLD_FIELDS

@dataclass(frozen=True)
class Sentence:
    text: str
    section: str
    position: float  # 0 = start of the report, 1 = end


def report_sentences(record: Record) -> list[Sentence]:
    texts = [(sec, s) for sec in INPUT_FIELDS for p in _paragraphs(record, sec) for s in split_sentences(p)]
    n = max(len(texts) - 1, 1)
    return [Sentence(s, sec, i / n) for i, (sec, s) in enumerate(texts)]


def _paragraphs(record: Record, section: str) -> list[str]:
    value = getattr(record, section)
    return [value] if isinstance(value, str) else list(value)


def _keyword_pattern(words: tuple[str, ...], latin: bool) -> re.Pattern:
    alternation = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternation})" if latin else alternation, re.I)


_PATTERNS = {f: {"en": _keyword_pattern(r.en, True), "zh": _keyword_pattern(r.zh, False)}
             for f, r in RULES.items()}


def _size(text: str, language: str) -> int:
    return len(text.split()) if language == "en" else len(re.sub(r"\s", "", text))


def _score(sentence: Sentence, field: str, language: str) -> float:
    rule = RULES[field]
    hits = len(_PATTERNS[field][language].findall(sentence.text))
    if hits == 0:
        return 0.0
    # Diminishing returns for hits and for length, so one long keyword-dense paragraph does not win.
    length = _size(sentence.text, language) / (1 if language == "en" else 2)
    pos = 1.0 + 0.3 * rule.position * (sentence.position - 0.5)
    return rule.prior[sentence.section] * pos * math.log1p(hits) / math.sqrt(1 + length / 20)


def _cap(text: str, limit: int, language: str) -> str:
    if _size(text, language) <= limit:
        return text
    if language == "en":
        return " ".join(text.split()[:limit]).rstrip(",;:") + " …"
    return text[:limit] + "…"


def _join(sentences: list[Sentence], limit: int, language: str) -> str:
    picked: list[Sentence] = []
    used = 0
    for s in sentences:
        size = _size(s.text, language)
        if picked and used + size > limit:
            break
        picked.append(s)
        used += size
    picked.sort(key=lambda s: s.position)
    return _cap((" " if language == "en" else "").join(s.text for s in picked), limit, language)


def _fallback(sentences: list[Sentence], field: str) -> list[Sentence]:
    """The first sentences of the section most likely to speak of `field`."""
    prior = RULES[field].prior
    for section in sorted(prior, key=prior.get, reverse=True):
        chosen = [s for s in sentences if s.section == section]
        if chosen:
            return chosen
    return sentences


def extract_fields(record: Record) -> dict[str, str]:
    """Five non-empty fields made of the report's own sentences."""
    sentences = report_sentences(record)
    language = record_language(record)
    used: set[Sentence] = set()
    out = {}
    for field in GOLD_FIELDS:
        limit = RULES[field].max_words * (1 if language == "en" else 2)
        scored = [(_score(s, field, language), s) for s in sentences if s not in used]
        ranked = [s for score, s in sorted(scored, key=lambda p: (-p[0], p[1].position)) if score > 0]
        chosen = ranked or _fallback(sentences, field)
        text = _join(chosen, limit, language)
        used.update(s for s in chosen if s.text in text)
        out[field] = text
    return out


def extractive_generate(records: list[Record]) -> list[str]:
    """The baseline as a generation backend: the same JSON answer a model is trained to write."""
    return [answer_text(extract_fields(r)) for r in records]
