"""The benchmark's own ES judge protocol, in our words.

Source: the LongEmotion repository (github.com/LongEmotion/LongEmotion): `tasks/longemotion/utils.py`
(`get_report_summary_score`), `prompts/eval_prompt/report_score_prompt.txt`, `evaluations/base.py`
(`score_report_summary`) and `tasks/longemotion/report_summary.yaml`. What it does:

- One request per report, a single user message (no system message), temperature 0 (GPT-4o by
  default). The judge sees the **reference summary** and the model's summary, both written as
  "Causes: ...\\nSymptoms: ...\\nTreatment process: ...\\nCharacteristics of the illness: ...\\n
  Treatment effect: ..." (not the source report).
- It scores each of the five attributes, comparing it with the same attribute of the reference, on
  factual consistency, completeness and clarity, each an integer 1-5, plus a short comment, as one
  JSON object keyed by attribute.
- The report's score is the mean of those 15 integers; the ES score is the mean over reports. A
  reply that cannot be read (or a failed request) scores 0 and still counts in the mean.

Our reading of "cannot be read": the reply must hold all 15 integers in 1-5; anything less scores 0
(the benchmark averages whatever numbers a half-formed reply holds). Replies are cached in a JSONL
file keyed by a hash of the exact request, unreadable ones too (they are the judge's answer at
temperature 0), so a rerun resends nothing already answered.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from emotion_summary.core.atomic_io import append_jsonl, read_jsonl_tolerant, repair_jsonl_tail
from emotion_summary.teacher.ask_loop import ask
from emotion_summary.teacher.client import ChatClient, run_pool
from emotion_summary.scoring.metrics import mean
from emotion_summary.data.records import GOLD_FIELDS, Record

PROTOCOL = "longemotion-es-v1"
DIMENSIONS = ("factual_consistency", "completeness", "clarity")
# The attribute names the benchmark writes before each field of both summaries.
ATTRIBUTE_TITLES = {"causes": "Causes", "symptoms": "Symptoms", "treatment_process": "Treatment process",
                    "characteristics_of_illness": "Characteristics of the illness",
                    "treatment_effect": "Treatment effect"}
REPLY_TOKENS = 4096  # the benchmark's max_tokens for the judge

PROMPT = """You are an experienced evaluator of psychological counselling case summaries. Two summaries of the same counselling case follow: a reference written by a human expert, and a summary produced by an AI model. Both cover five attributes: causes, symptoms, treatment process, characteristics of the illness, and treatment effect.

Reference summary (human expert):
{reference}

AI model summary:
{prediction}

Judge every attribute of the AI model summary on its own, against the same attribute of the reference, on three dimensions:
- factual_consistency: does it agree with the facts of the reference?
- completeness: does it contain the key details of the reference?
- clarity: is it clear and coherent?

Give each dimension an integer score: 5 excellent, 4 good, 3 fair, 2 poor, 1 very poor. Add a comment of one to three sentences per attribute explaining the scores.

Answer with this JSON object only, inside a ```json code block:
```json
{{
  "causes": {{"factual_consistency": X, "completeness": X, "clarity": X, "comment": "..."}},
  "symptoms": {{"factual_consistency": X, "completeness": X, "clarity": X, "comment": "..."}},
  "treatment_process": {{"factual_consistency": X, "completeness": X, "clarity": X, "comment": "..."}},
  "characteristics_of_illness": {{"factual_consistency": X, "completeness": X, "clarity": X, "comment": "..."}},
  "treatment_effect": {{"factual_consistency": X, "completeness": X, "clarity": X, "comment": "..."}}
}}
```"""


def summary_text(fields: Mapping[str, str]) -> str:
    """Five fields as the benchmark shows them to its judge: one "Title: text" line each."""
    return "\n".join(f"{ATTRIBUTE_TITLES[f]}: {fields.get(f, '')}" for f in GOLD_FIELDS)


def judge_messages(reference: Mapping[str, str], prediction: Mapping[str, str]) -> list[dict]:
    return [{"role": "user", "content": PROMPT.format(reference=summary_text(reference),
                                                      prediction=summary_text(prediction))}]


_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def _json_objects(text: str):
    """Every JSON object in `text`: fenced blocks first, then each `{` that starts a whole object."""
    for block in _FENCED.findall(text):
        try:
            yield json.loads(block.strip())
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            yield decoder.raw_decode(text, m.start())[0]
        except json.JSONDecodeError:
            continue


def _key(name) -> str:
    return re.sub(r"[^a-z]+", "_", str(name).lower()).strip("_")


_ATTRIBUTE_OF_KEY = {**{f: f for f in GOLD_FIELDS}, **{_key(t): f for f, t in ATTRIBUTE_TITLES.items()},
                     "characteristics": "characteristics_of_illness", "cause": "causes"}


def _integer(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.0+)?\s*(/\s*5)?\s*", value):
        value = float(value.split("/")[0])
    if isinstance(value, (int, float)) and value == int(value) and 1 <= value <= 5:
        return int(value)
    return None


def parse_reply(text: str) -> dict[str, dict[str, int]] | None:
    """{attribute: {dimension: 1-5}} when the reply holds all 15 integers; None otherwise."""
    for obj in _json_objects(text or ""):
        if not isinstance(obj, dict):
            continue
        attributes = {_ATTRIBUTE_OF_KEY.get(_key(k)): v for k, v in obj.items()}
        scores = {}
        for f in GOLD_FIELDS:
            given = attributes.get(f)
            if not isinstance(given, dict):
                break
            dims = {_key(k): _integer(v) for k, v in given.items()}
            if any(dims.get(d) is None for d in DIMENSIONS):
                break
            scores[f] = {d: dims[d] for d in DIMENSIONS}
        else:
            return scores
    return None


@dataclass
class ReportJudgement:
    id: int
    scores: dict[str, dict[str, int]] | None  # None: unreadable or refused, scores 0
    raw: str
    error: str | None = None
    refused: bool = False

    @property
    def score(self) -> float:
        """The report's ES score: the mean of the 15 integers, 0 when there are none."""
        if not self.scores:
            return 0.0
        return sum(self.scores[f][d] for f in GOLD_FIELDS for d in DIMENSIONS) / 15


def request_key(model: str, messages: list[dict], temperature: float) -> str:
    body = json.dumps([PROTOCOL, model, temperature, messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]


def judge_report(client: ChatClient, rid: int, messages: list[dict], temperature: float) -> ReportJudgement:
    """One request; an unreadable reply or a refused request is a judgement of 0 (other endpoint
    errors propagate: the endpoint, not the report, is wrong)."""
    asked = ask(client, None, rid, messages, lambda raw: (parse_reply(raw), "the reply holds no 15 scores 1-5"),
                reask=lambda reply, problem: [], max_reasks=0, max_tokens=REPLY_TOKENS,
                temperature=temperature)  # the benchmark asks once: an unreadable reply scores 0
    return ReportJudgement(rid, asked.value, asked.last_reply, asked.reason or None, refused=asked.refused)


def judge_reports(gold: Sequence[Record], preds: Mapping[int, Mapping[str, str]], client: ChatClient,
                  cache_path: str | Path, temperature: float = 0.0, concurrency: int = 4,
                  desc: str = "judge") -> list[ReportJudgement]:
    """Judge every report (in `gold`'s order); cached answers are not asked again. Refusals are not
    cached (a fixed endpoint may answer them)."""
    from tqdm import tqdm

    cache_path = Path(cache_path)
    repair_jsonl_tail(cache_path)
    cache = {row["key"]: row for row in read_jsonl_tolerant(cache_path) if isinstance(row, dict) and "key" in row
             and row.get("protocol") == PROTOCOL}
    done, todo = {}, []
    for r in gold:
        messages = judge_messages(r.gold(), preds[r.id])
        key = request_key(client.model, messages, temperature)
        if key in cache:
            raw = cache[key].get("raw", "")
            scores = parse_reply(raw)
            done[r.id] = ReportJudgement(r.id, scores, raw, None if scores else "the reply holds no 15 scores 1-5")
        else:
            todo.append((key, r.id, messages))

    def finish(keyed: tuple[str, ReportJudgement]) -> None:
        key, item = keyed
        if not item.refused:
            append_jsonl(cache_path, {"key": key, "protocol": PROTOCOL, "id": item.id, "model": client.model,
                                      "temperature": temperature, "raw": item.raw})
        done[item.id] = item
        bar.update(1)

    with tqdm(total=len(gold), initial=len(done), desc=desc, unit="report") as bar:
        run_pool(todo, lambda t: (t[0], judge_report(client, t[1], t[2], temperature)), finish, concurrency)
    return [done[r.id] for r in gold]


def judge_summary(items: Sequence[ReportJudgement], model: str, temperature: float) -> dict:
    """The headline (mean of every report's 15-score mean, unreadable = 0), and beside it the means
    per attribute and per dimension over the readable replies."""
    ok = [it for it in items if it.scores]
    per_field = {f: {d: mean((it.scores[f][d] for it in ok), empty=None) for d in DIMENSIONS} for f in GOLD_FIELDS}
    for f in GOLD_FIELDS:
        per_field[f]["mean"] = mean((it.scores[f][d] for it in ok for d in DIMENSIONS), empty=None)
    headline = mean((it.score for it in items), empty=None)
    return {
        "protocol": PROTOCOL, "model": model, "temperature": temperature,
        "n_items": len(items), "n_failed": len(items) - len(ok), "n_refused": sum(it.refused for it in items),
        "mean": headline, "mean_x20": None if headline is None else headline * 20,
        "mean_of_readable": mean((it.score for it in ok), empty=None),
        "per_field": per_field,
        "per_dimension": {d: mean((it.scores[f][d] for it in ok for f in GOLD_FIELDS), empty=None)
                          for d in DIMENSIONS},
        "per_id": {it.id: {"score": it.score, **({f: mean(it.scores[f].values()) for f in GOLD_FIELDS}
                                                 if it.scores else {})} for it in items},
        "failures": [{"id": it.id, "error": it.error, "raw": it.raw[:500]} for it in items if not it.scores],
    }


def failure_line(summary: dict, label: str) -> str | None:
    """One line saying how many reports of `label` scored 0 for want of a readable reply."""
    failed, refused = summary["n_failed"], summary["n_refused"]
    if not failed:
        return None
    return (f"judge {label}: {failed} of {summary['n_items']} reports got no readable scores ({failed - refused} "
            f"unreadable replies, {refused} refused requests); each counts 0 in the ES score, as on the leaderboard")
