"""A fake teacher for synthesis tests: writes reports of the requested shape from the seed, and labels
them (one FakeChatServer answers both kinds of request)."""

from __future__ import annotations

import json
import random
import re

from emotion_summary.data.records import GOLD_FIELDS
from emotion_summary.teacher.synthesize import SYSTEM, Targets

SMALL = Targets(sessions=3, case_words=40, process_words=120, reflection_words=50)
_WORDS = ("client", "mother", "work", "sleep", "worry", "school", "night", "talk", "change", "breath", "fear",
          "family", "week", "letter", "anger", "calm", "walk", "phone", "tears", "plan", "garden", "train",
          "doctor", "exam", "friend", "home", "silence", "habit", "morning", "trust")


def prose(seed: str, n_words: int) -> str:
    """`n_words` of sentences that differ for every seed (no long n-gram shared between two seeds)."""
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    return " ".join(w + ("." if i % 12 == 11 else "") for i, w in enumerate(words)).capitalize() + "."


def report_for(seed: str, targets: Targets = SMALL) -> dict:
    per_session = targets.process_words // targets.sessions
    return {"case_description": [prose(seed + "/case", targets.case_words)],
            "consultation_process": [prose(f"{seed}/s{i}", per_session) for i in range(targets.sessions)],
            "experience_and_reflection": prose(seed + "/reflection", targets.reflection_words),
            "notes": "an extra key, ignored"}


def seed_of(messages: list[dict]) -> str:
    return re.search(r"<seed>(.*?)</seed>", messages[1]["content"], re.S).group(1)


def variant_of(messages: list[dict]) -> int:
    found = re.search(r"This is report (\d+) for this seed", messages[1]["content"])
    return int(found.group(1)) if found else 1


def label_reply(messages: list[dict]) -> str:
    return json.dumps({f: f"The client's {f.replace('_', ' ')}, as the report tells it." for f in GOLD_FIELDS})


def teacher(messages: list[dict], special: dict | None = None) -> str | tuple[int, str]:
    """Synthesis requests get `special[seed](messages)` when the seed has one, else a good report;
    labelling requests get five English fields."""
    if messages[0]["content"] != SYSTEM:
        return label_reply(messages)
    seed = seed_of(messages)
    if special and seed in special:
        return special[seed](messages)
    return "```json\n" + json.dumps(report_for(f"{seed}#{variant_of(messages)}")) + "\n```"
