"""An LLM judge in the spirit of the leaderboard's ES rubric (our own wording).

For every report and each of the five fields, the judge model scores the predicted field 1-5 for
factual consistency, completeness and clarity, given the (char-capped) report and, when known, the
reference summary. The leaderboard's ES figure is the mean over all these scores (also shown x20,
i.e. on a 0-100 scale).

Replies are cached in a JSONL file, one line per judged item, keyed by a hash of the exact request
(id, field, judge model, prompt, predicted text, reference): a rerun resends nothing already scored,
and two prediction files can share one cache. A reply that stays non-JSON after the retries is
recorded as a failure (not cached, so a rerun asks again) and left out of the means; so is an item
the endpoint refuses (a 4xx about that request), while other endpoint errors stop the run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from emotion_summary.core.atomic_io import append_jsonl, read_jsonl_tolerant, repair_jsonl_tail
from emotion_summary.teacher.ask_loop import ask, reask_turns
from emotion_summary.teacher.client import ChatClient, run_pool
from emotion_summary.scoring.metrics import mean
from emotion_summary.prompting.prompt import FIELD_DESCRIPTIONS, report_sections, trim_sections
from emotion_summary.data.records import GOLD_FIELDS, Record

CRITERIA = ("factual_consistency", "completeness", "clarity")
JUDGE_VERSION = "es-judge-v1"
MAX_REPORT_CHARS = 24_000  # ~6K tokens of English: the longest official report is ~36K characters
MAX_PREDICTION_CHARS = 4_000  # a gold field is ~40 tokens; a runaway generation must not overflow the judge

JUDGE_SYSTEM = (
    "You grade summaries of psychological counselling reports. You are strict, consistent and brief, "
    "and you reply with a single JSON object only."
)

JUDGE_TEMPLATE = """Below is a counselling report and one part of a summary of it: the part "{field}" ({description}).

Grade that part on three criteria, each an integer from 1 (very poor) to 5 (excellent):
- factual_consistency: every statement is supported by the report; nothing is invented or distorted.
- completeness: the essential points of "{field}" in the report are covered.
- clarity: the text is well organised, precise and easy to read.
{reference_block}
# Report
{report}

# Summary part to grade ("{field}")
{prediction}

Reply with only this JSON object and nothing else:
{{"factual_consistency": <1-5>, "completeness": <1-5>, "clarity": <1-5>}}"""

REFERENCE_BLOCK = """
A reference version of this part, written by an expert, is given as a guide to what matters; the
graded text need not match its wording.

# Reference ("{field}")
{reference}
"""

NOT_JSON_FOLLOW_UP = ('Your reply could not be read. Reply with only the JSON object '
                      '{"factual_consistency": n, "completeness": n, "clarity": n}, each n an integer 1-5.')


def _render(sections: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"[{h}] {t}" for h, t in sections)


def _capped(sections: list[tuple[str, str]], max_chars: int, render) -> str:
    """`render(sections)`, cut in the middle of the longest paragraphs beyond max_chars (trim markers
    count characters, though they say tokens)."""
    over = len(render(sections)) - max_chars
    if over <= 0:
        return render(sections)
    try:
        return render(trim_sections(sections, over, len))
    except ValueError:  # a cap too small for one marker per paragraph: keep the beginning
        return render(sections)[:max_chars]


def report_text(record: Record, max_chars: int = MAX_REPORT_CHARS) -> str:
    """The report as headed paragraphs, capped at max_chars."""
    return _capped(report_sections(record), max_chars, _render)


def prediction_text(prediction: str, max_chars: int = MAX_PREDICTION_CHARS) -> str:
    """The graded text, capped at max_chars like the report (a 40K-character generation is refused)."""
    return _capped([("", prediction.strip() or "(empty)")], max_chars, lambda sections: sections[0][1])


def judge_messages(record: Record, field: str, prediction: str, reference: str | None = None,
                   max_report_chars: int = MAX_REPORT_CHARS) -> list[dict]:
    block = REFERENCE_BLOCK.format(field=field, reference=prediction_text(reference)) if reference else ""
    user = JUDGE_TEMPLATE.format(field=field, description=FIELD_DESCRIPTIONS[field], reference_block=block,
                                 report=report_text(record, max_report_chars),
                                 prediction=prediction_text(prediction))
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_OBJECT = re.compile(r"\{[^{}]*\}", re.S)


def parse_scores(text: str) -> dict[str, int] | None:
    """The three integer scores from a reply (code fences, prose, key spelling, "4/5" tolerated)."""
    for candidate in reversed(_OBJECT.findall(text or "")):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        keyed = {re.sub(r"[^a-z]", "_", str(k).strip().lower()): v for k, v in obj.items()}
        scores = {c: _score_value(keyed.get(c)) for c in CRITERIA}
        if all(v is not None for v in scores.values()):
            return scores
    return None


def _score_value(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        m = re.match(r"\s*(\d+(?:\.\d+)?)", value)
        value = float(m.group(1)) if m else None
    if isinstance(value, (int, float)) and 1 <= value <= 5:
        return int(round(value))
    return None


@dataclass
class JudgeItem:
    id: int
    field: str
    scores: dict[str, int] | None
    raw: str
    error: str | None = None
    refused: bool = False  # the endpoint refused the request (a 4xx about it), rather than a bad reply


def request_key(model: str, messages: list[dict]) -> str:
    body = json.dumps([JUDGE_VERSION, model, messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]


def judge_one(client: ChatClient, rid: int, field: str, messages: list[dict], attempts: int = 3) -> JudgeItem:
    """Ask; on a non-JSON reply, ask again with a reminder; after `attempts`, a recorded failure. So is
    a refusal of this one request; other endpoint errors propagate."""
    asked = ask(client, None, rid, messages, lambda raw: (parse_scores(raw), ""),
                reask_turns(lambda problem: NOT_JSON_FOLLOW_UP), max_reasks=attempts - 1, max_tokens=200)
    if asked.value is None and not asked.refused:
        return JudgeItem(rid, field, None, asked.last_reply, f"no JSON scores after {attempts} tries")
    return JudgeItem(rid, field, asked.value, asked.last_reply, asked.reason or None, refused=asked.refused)


def _cached(cache_path: Path) -> dict[str, dict]:
    return {row["key"]: row for row in read_jsonl_tolerant(cache_path)
            if isinstance(row, dict) and "key" in row and isinstance(row.get("scores"), dict)}


def judge_predictions(records: Sequence[Record], preds: Mapping[int, Mapping[str, str]], client: ChatClient,
                      cache_path: str | Path, use_reference: bool = True, concurrency: int = 4,
                      max_report_chars: int = MAX_REPORT_CHARS, attempts: int = 3,
                      desc: str = "judge") -> list[JudgeItem]:
    """Judge every (record, field); cached items are not sent again. Endpoint errors abort the run
    (the cache keeps what finished); non-JSON replies become failures."""
    from tqdm import tqdm

    cache_path = Path(cache_path)
    repair_jsonl_tail(cache_path)
    items, todo = _split_cached(records, preds, client.model, _cached(cache_path), use_reference,
                                max_report_chars)

    def finish(keyed: tuple[str, JudgeItem]) -> None:
        key, item = keyed
        if item.scores:
            append_jsonl(cache_path, {"key": key, "id": item.id, "field": item.field, "model": client.model,
                                      "version": JUDGE_VERSION, "scores": item.scores, "raw": item.raw})
        items.append(item)
        bar.update(1)

    with tqdm(total=len(items) + len(todo), initial=len(items), desc=desc, unit="item") as bar:
        run_pool(todo, lambda t: (t[0], judge_one(client, *t[1:], attempts)), finish, concurrency)
    order = {(r.id, f): i for i, (r, f) in enumerate((r, f) for r in records for f in GOLD_FIELDS)}
    return sorted(items, key=lambda it: order[(it.id, it.field)])


def _split_cached(records, preds, model: str, cache: dict[str, dict], use_reference: bool,
                  max_report_chars: int) -> tuple[list[JudgeItem], list[tuple]]:
    """The items the cache already scores, and (key, id, field, messages) for those still to ask."""
    items, todo = [], []
    for r in records:
        for f in GOLD_FIELDS:
            reference = getattr(r, f) if use_reference else None
            messages = judge_messages(r, f, preds[r.id][f], reference, max_report_chars)
            key = request_key(model, messages)
            if key in cache:
                items.append(JudgeItem(r.id, f, cache[key]["scores"], cache[key].get("raw", "")))
            else:
                todo.append((key, r.id, f, messages))
    return items, todo


def judge_totals(items: Sequence[JudgeItem], model: str) -> dict:
    """Means per field and criterion, the overall mean (the leaderboard's ES figure) and x20."""
    ok = [it for it in items if it.scores]
    per_field = {}
    for f in GOLD_FIELDS:
        mine = [it.scores for it in ok if it.field == f]
        per_field[f] = {c: mean((s[c] for s in mine), empty=None) for c in CRITERIA}
        per_field[f]["mean"] = mean((s[c] for s in mine for c in CRITERIA), empty=None)
    overall = mean((it.scores[c] for it in ok for c in CRITERIA), empty=None)
    return {
        "model": model, "version": JUDGE_VERSION, "n_items": len(items), "n_failed": len(items) - len(ok),
        "n_refused": sum(it.refused for it in items),
        "per_field": per_field,
        "per_criterion": {c: mean((it.scores[c] for it in ok), empty=None) for c in CRITERIA},
        "mean": overall, "mean_x20": None if overall is None else overall * 20,
        "failures": [{"id": it.id, "field": it.field, "error": it.error, "raw": it.raw[:500]}
                     for it in items if not it.scores],
    }


def failure_line(summary: dict, label: str) -> str | None:
    """One line saying how many items of `label` failed and why (None when none did)."""
    failed, refused = summary["n_failed"], summary["n_refused"]
    if not failed:
        return None
    return (f"judge {label}: {failed} of {summary['n_items']} items failed ({failed - refused} unparseable "
            f"replies, {refused} refused requests); they are left out of the means")
