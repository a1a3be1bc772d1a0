"""Label unlabelled ES records with a teacher model behind an OpenAI-compatible endpoint.

Each record is asked with the shared prompt; the reply must parse into five non-empty fields (in the
requested language when it is en or zh), else the teacher is re-asked, saying what was wrong. Labelled
records are appended to the output as they arrive, so a killed run resumes where it stopped; records
that never give a usable reply go to `<output stem>.rejects.jsonl` with the reason, never filled in.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from emotion_summary.atomic_io import (append_jsonl, atomic_write_jsonl, drop_repeated_ids, jsonl_lines,
                                       read_jsonl_tolerant, repair_jsonl_tail)
from emotion_summary.client import ChatClient, EndpointError, is_refusal, public_url, run_pool_with_bar
from emotion_summary.cli import check_numbers
from emotion_summary.errors import UserError
from emotion_summary.json_input import load_json
from emotion_summary.output_lock import hold_outputs
from emotion_summary.paths import refuse_overwrite
from emotion_summary.prompt import NOT_DESCRIBED, Language, PromptSpec, build_prompt, parse_answer
from emotion_summary.records import GOLD_FIELDS, Record, is_blank, read_records, record_from_dict
from emotion_summary.text import LANGUAGE_NAMES, detect_language

RETRY_MESSAGE = ("Your reply could not be used: {reason}. Answer again with only one JSON object with "
                 "exactly these keys: {keys}; every value a non-empty paragraph{language}, or exactly "
                 f'"{NOT_DESCRIBED}" where the report says nothing about it.')
# Added to the student's prompt when a teacher labels: an empty part is said so, never invented.
LABELLING_RULE = (f'\n\nIf the report says nothing about one of the five parts, write exactly "{NOT_DESCRIBED}" '
                  "as its value; never invent facts.")


@dataclass
class Outcome:
    record: Record
    fields: dict[str, str] | None  # None: rejected
    reason: str = ""
    attempts: int = 0
    last_reply: str = ""


def rejects_path(output: str | Path) -> Path:
    return Path(output).with_suffix(".rejects.jsonl")


def reply_problem(reply: str, language: str) -> str | None:
    """Why a teacher reply is unusable, or None when all five fields are there (in `language`)."""
    parsed = parse_answer(reply)
    if len(parsed.missing) == len(GOLD_FIELDS):
        return "no JSON object with the five fields"
    missing = [f for f in GOLD_FIELDS if f in parsed.missing or is_blank(parsed.fields.get(f))]
    if missing:
        return f"missing or empty: {', '.join(missing)}"
    if language in LANGUAGE_NAMES:
        wrong = [k for k, v in parsed.fields.items() if v != NOT_DESCRIBED and detect_language(v) != language]
        if wrong:
            return f"not in {LANGUAGE_NAMES[language]}: {', '.join(wrong)}"
    return None


def _retry_turns(reply: str, reason: str, language: str) -> list[dict]:
    rule = f", written in {LANGUAGE_NAMES[language]}" if language in LANGUAGE_NAMES else ""
    text = RETRY_MESSAGE.format(reason=reason, keys=", ".join(GOLD_FIELDS), language=rule)
    return [{"role": "assistant", "content": reply}, {"role": "user", "content": text}]


def label_one(client: ChatClient, spec: PromptSpec, record: Record, max_retries: int,
              max_tokens: int) -> Outcome:
    """Ask, check, re-ask up to `max_retries` times; an EndpointError other than a refusal propagates."""
    system, user = build_prompt(spec, record).messages
    first = [system, {**user, "content": user["content"] + LABELLING_RULE}]
    messages, reply, reason = first, "", ""
    for attempt in range(1, max_retries + 2):
        try:
            reply = client.chat(messages, max_tokens=max_tokens)
        except EndpointError as e:
            if not is_refusal(e):
                raise
            return Outcome(record, None, f"endpoint refused the request: {e}", attempt)
        reason = reply_problem(reply, spec.language)
        if reason is None:
            return Outcome(record, parse_answer(reply).fields, attempts=attempt)
        messages = first + _retry_turns(reply, reason, spec.language)
    return Outcome(record, None, reason, max_retries + 1, reply)


def done_ids(output: Path, records: Sequence[Record]) -> set[int]:
    """Ids already labelled in `output`. Refuses an output that is not an earlier run's on these inputs
    (another file's records, bare inputs, other reports under the same ids): never appended to."""
    if not output.exists():
        return set()
    inputs = {r.id: r for r in records}
    done = set()
    text = output.read_bytes().decode("utf-8", errors="replace")
    last = text.count("\n") + 1
    for n, line in jsonl_lines(text):
        try:
            row = load_json(line)
        except json.JSONDecodeError:
            if n == last:  # torn by a killed run: cut off before appending
                continue
            row = line
        rec = record_from_dict(row, output, f"line {n}")
        mine = inputs.get(rec.id)
        problem = ("its id is not in the input" if mine is None else
                   "it has no summary fields" if not rec.has_gold else
                   "its report differs from the input's" if rec.inputs() != mine.inputs() else
                   "its summary is neither a teacher's nor the input's"
                   if rec.label_source is None and rec.gold() != mine.gold() else None)
        if problem:
            raise UserError(f"{output}:line {n}: id {rec.id}: {problem}, so this is not the output of an earlier "
                            "run on this input; refusing to append to it (give a new --output)")
        done.add(rec.id)
    return done


def finish_rejects(path: Path, labelled: set[int]) -> int:
    """Keep the latest reason per id, drop ids labelled since; return how many remain."""
    latest = {row["id"]: row for row in read_jsonl_tolerant(path) if isinstance(row, dict) and "id" in row}
    keep = [row for rid, row in latest.items() if rid not in labelled]
    if keep:
        atomic_write_jsonl(path, keep)
    elif path.exists():
        path.unlink()
    return len(keep)


@dataclass
class _Run:
    output: Path
    rejects: Path
    label_source: dict
    labelled: int = 0
    rejected: int = 0

    def record(self, outcome: Outcome) -> None:
        if outcome.fields is not None:
            append_jsonl(self.output, outcome.record.with_gold(outcome.fields, self.label_source).to_dict())
            self.labelled += 1
            return
        append_jsonl(self.rejects, {"id": outcome.record.id, "reason": outcome.reason,
                                    "attempts": outcome.attempts, "last_reply": outcome.last_reply[:2000],
                                    **self.label_source})
        self.rejected += 1


def _label_all(todo: list[Record], work, run: _Run, concurrency: int) -> None:
    run_pool_with_bar(todo, work, run.record, concurrency, "labelling")


def label_file(input: str | Path, output: str | Path, client: ChatClient, language: str = "auto",
               concurrency: int = 4, max_retries: int = 2, max_tokens: int = 1024, limit: int = 0) -> dict:
    """Label `input` into `output` (resumable); returns the counts printed by the CLI."""
    output = Path(output)
    refuse_overwrite({"--output": output}, {"--input": input})
    refuse_overwrite({"--output's rejects": rejects_path(output)}, {"--input": input})  # said once when --output is wrong
    records = read_records(input)
    done = done_ids(output, records)  # both refuse before anything is trimmed or appended
    _check_same_teacher(output, client.model, language)
    drop_repeated_ids(output, lambda row: True)  # every row passed done_ids: keep each id's first
    repair_jsonl_tail(output)
    repair_jsonl_tail(rejects_path(output))
    copied = [r for r in records if r.has_gold and r.id not in done]
    for r in copied:  # labelled inputs pass through, so the output is the whole training set
        append_jsonl(output, r.to_dict())
    todo = [r for r in records if not r.has_gold and r.id not in done]
    todo = todo[:limit] if limit > 0 else todo
    spec = PromptSpec(language=language)
    run = _Run(output, rejects_path(output), {
        "model": client.model, "endpoint": public_url(client.endpoint),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "prompt_version": spec.version,
        "language": language})
    try:
        _label_all(todo, lambda r: label_one(client, spec, r, max_retries, max_tokens), run, concurrency)
    except EndpointError as e:
        raise EndpointError(f"{e}; {run.labelled} records were labelled before it failed. Rerun the "
                            "same command to resume.", e.status) from None
    finally:
        remaining = finish_rejects(run.rejects, _ids_in(output))
    return {"labelled": run.labelled, "skipped_done": len(done & {r.id for r in records}),
            "copied_with_gold": len(copied), "rejected": run.rejected, "rejects_file_entries": remaining,
            "left_for_later": len([r for r in records if not r.has_gold and r.id not in done]) - len(todo)}


def _check_same_teacher(output: Path, model: str, language: str) -> None:
    """A resume must not mix teachers or summary languages in one training file."""
    for row in read_jsonl_tolerant(output):
        source = row.get("label_source") if isinstance(row, dict) else None
        if not isinstance(source, dict):
            continue
        before = {"--model": source.get("model", model), "--language": source.get("language", language)}
        changed = [f"{k} {v} (now {model if k == '--model' else language})"
                   for k, v in before.items() if v != (model if k == "--model" else language)]
        if changed:
            raise UserError(f"{output}: labelled before with {', '.join(changed)}; resume with the same "
                            "options, or write to another --output")


def _ids_in(output: Path) -> set[int]:
    return {row["id"] for row in read_jsonl_tolerant(output) if isinstance(row, dict) and "id" in row}


def label_source_counts(records: Iterable[Record]) -> dict[str, int]:
    """How many records have gold from which source: '<source> (dataset gold)',
    '<source> (teacher: <model>)' or '<source> (unlabelled)'."""
    def key(r: Record) -> str:
        if not r.has_gold:
            return f"{r.source} (unlabelled)"
        if r.label_source:
            return f"{r.source} (teacher: {r.label_source.get('model', '?')})"
        return f"{r.source} (dataset gold)"

    return dict(sorted(Counter(key(r) for r in records).items()))


def label_with_teacher(input: str, output: str, endpoint: str, model: str, language: Language = "auto",
                       concurrency: int = 4, requests_per_minute: float = 0.0,
                       api_key_env: str = "OPENAI_API_KEY", max_retries: int = 2, max_tokens: int = 1024,
                       limit: int = 0, timeout_s: float = 120.0) -> None:
    """Write the five summary fields for unlabelled ES records with a teacher model (resumable).

    Args:
        input: ES records (JSONL or JSON array); records that already have gold are copied through.
        output: labelled records (JSONL), appended as they arrive; a rerun skips ids already in it.
        endpoint: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (vLLM) or a hosted API.
        model: model name the endpoint serves.
        language: language of the summaries: en, zh, or auto (the report's own language).
        concurrency: requests in flight at once.
        requests_per_minute: client-side rate limit; 0 for none.
        api_key_env: environment variable holding the API key (sent as a Bearer token when set).
        max_retries: times to re-ask the teacher after an unusable reply before rejecting the record.
        max_tokens: reply length limit per request.
        limit: label at most this many records in this run; 0 for all.
        timeout_s: seconds to wait for one reply.
    """
    check_numbers({"concurrency": (concurrency, int, 1), "max_retries": (max_retries, int, 0),
                   "requests_per_minute": (requests_per_minute, float, 0), "max_tokens": (max_tokens, int, 1),
                   "limit": (limit, int, 0), "timeout_s": (timeout_s, float, 0, True)})
    client = ChatClient(endpoint, model, api_key_env=api_key_env, timeout_s=timeout_s,
                        requests_per_minute=requests_per_minute)
    with hold_outputs([output, rejects_path(output)]):  # one run appends to these at a time
        counts = label_file(input, output, client, language, concurrency, max_retries, max_tokens, limit)
    print(f"labelled {counts['labelled']}, skipped {counts['skipped_done']} already in {output}, "
          f"copied {counts['copied_with_gold']} that had gold, rejected {counts['rejected']}"
          + (f" (see {rejects_path(output)})" if counts["rejected"] else "")
          + (f", {counts['left_for_later']} left for a later run (--limit)" if counts["left_for_later"] else ""))
    if counts["rejected"] and not counts["labelled"]:
        raise UserError(f"every one of the {counts['rejected']} records sent was rejected (reasons in "
                        f"{rejects_path(output)}): check --model, --language and the endpoint")
