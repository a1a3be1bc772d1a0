"""Label unlabelled ES records with a teacher model behind an OpenAI-compatible endpoint.

Each record is asked with the shared prompt; the reply must parse into five non-empty fields (in the
requested language when it is en or zh), else the teacher is re-asked (up to --max_reasks times), saying what was wrong. Labelled
records are appended to the output as they arrive, so a killed run resumes where it stopped; records
that never give a usable reply go to `<output stem>.rejects.jsonl` with the reason, never filled in.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from emotion_summary.core.atomic_io import append_jsonl, drop_repeated_ids, jsonl_lines, read_jsonl_tolerant
from emotion_summary.core.cli import EndpointOptions, check_numbers, option_group
from emotion_summary.core.errors import NotReady, UserError
from emotion_summary.core.json_input import load_json
from emotion_summary.core.output_lock import hold_outputs
from emotion_summary.core.paths import refuse_overwrite
from emotion_summary.data.records import GOLD_FIELDS, Record, is_blank, read_records, record_from_dict
from emotion_summary.data.text import LANGUAGE_NAMES, detect_language
from emotion_summary.prompting.prompt import NOT_DESCRIBED, Language, PromptSpec, build_prompt, parse_answer
from emotion_summary.teacher.ask_loop import Outcome, ResumableOutput, ask, reask_turns, rejects_path
from emotion_summary.teacher.client import ChatClient, EndpointError, public_url, run_pool_with_bar

RETRY_MESSAGE = ("Your reply could not be used: {reason}. Answer again with only one JSON object with "
                 "exactly these keys: {keys}; every value a non-empty paragraph{language}, or exactly "
                 f'"{NOT_DESCRIBED}" where the report says nothing about it.')
# Added to the student's prompt when a teacher labels: an empty part is said so, never invented.
LABELLING_RULE = (f'\n\nIf the report says nothing about one of the five parts, write exactly "{NOT_DESCRIBED}" '
                  "as its value; never invent facts.")
MAX_TOKENS = 1024  # a summary is ~190 tokens; room for a teacher that explains first


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


def _complaint(language: str):
    rule = f", written in {LANGUAGE_NAMES[language]}" if language in LANGUAGE_NAMES else ""
    return lambda reason: RETRY_MESSAGE.format(reason=reason, keys=", ".join(GOLD_FIELDS), language=rule)


def label_one(client: ChatClient, spec: PromptSpec, record: Record, max_reasks: int,
              max_tokens: int = MAX_TOKENS) -> Outcome:
    """Ask, check, re-ask up to `max_reasks` times; an EndpointError other than a refusal propagates.
    The outcome's value is the five fields."""
    system, user = build_prompt(spec, record).messages
    first = [system, {**user, "content": user["content"] + LABELLING_RULE}]

    def validate(reply: str):
        problem = reply_problem(reply, spec.language)
        return (None, problem) if problem else (parse_answer(reply).fields, "")

    return ask(client, record, record.id, first, validate, reask_turns(_complaint(spec.language)), max_reasks,
               max_tokens)


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


def label_file(input: str | Path, output: str | Path, client: ChatClient, language: str = "auto",
               concurrency: int = 4, max_reasks: int = 2, max_tokens: int = MAX_TOKENS, limit: int = 0) -> dict:
    """Label `input` into `output` (resumable); returns the counts printed by the CLI."""
    output = Path(output)
    refuse_overwrite({"--output": output}, {"--input": input})
    refuse_overwrite({"--output's rejects": rejects_path(output)}, {"--input": input})  # said once when --output is wrong
    records = read_records(input)
    done = done_ids(output, records)  # both refuse before anything is trimmed or appended
    _check_same_teacher(output, client.model, language)
    spec = PromptSpec(language=language)
    run = ResumableOutput(output, {
        "model": client.model, "endpoint": public_url(client.endpoint),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "prompt_version": spec.version,
        "language": language})
    drop_repeated_ids(output, lambda row: True)  # two runs appended: keep each id's first
    run.repair()
    copied = [r for r in records if r.has_gold and r.id not in done]
    for r in copied:  # labelled inputs pass through, so the output is the whole training set
        append_jsonl(output, r.to_dict())
    todo = [r for r in records if not r.has_gold and r.id not in done]
    todo = todo[:limit] if limit > 0 else todo

    def record(outcome: Outcome) -> None:
        if outcome.value is None:
            run.reject(outcome)
        else:
            run.accept(outcome.item.with_gold(outcome.value, run.provenance).to_dict())

    try:
        run_pool_with_bar(todo, lambda r: label_one(client, spec, r, max_reasks, max_tokens), record, concurrency,
                          "labelling")
    except EndpointError as e:
        raise EndpointError(f"{e}; {run.accepted} records were labelled before it failed. Rerun the "
                            "same command to resume.", e.status) from None
    finally:
        remaining = run.finish()
    return {"labelled": run.accepted, "skipped_done": len(done & {r.id for r in records}),
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


@option_group("teacher")
def label_with_teacher(input: str, output: str, teacher: EndpointOptions = EndpointOptions(),
                       language: Language = "auto", max_reasks: int = 2, limit: int = 0) -> None:
    """Write the five summary fields for unlabelled ES records with a teacher model (resumable).

    Args:
        input: ES records (JSONL or JSON array); records that already have gold are copied through.
        output: labelled records (JSONL), appended as they arrive; a rerun skips ids already in it.
        language: language of the summaries: en, zh, or auto (the report's own language).
        max_reasks: times to re-ask the teacher after an unusable reply before rejecting the record.
        limit: label at most this many records in this run; 0 for all.
    """
    check_numbers({"max_reasks": (max_reasks, int, 0), "limit": (limit, int, 0)})
    teacher.require("labelling")
    with hold_outputs([output, rejects_path(output)]):  # one run appends to these at a time
        counts = label_file(input, output, ChatClient.from_options(teacher), language, teacher.concurrency,
                            max_reasks, teacher.max_tokens or MAX_TOKENS, limit)
    print(f"labelled {counts['labelled']}, skipped {counts['skipped_done']} already in {output}, "
          f"copied {counts['copied_with_gold']} that had gold, rejected {counts['rejected']}"
          + (f" (see {rejects_path(output)})" if counts["rejected"] else "")
          + (f", {counts['left_for_later']} left for a later run (--limit)" if counts["left_for_later"] else ""))
    if counts["rejected"] and not counts["labelled"]:
        raise NotReady(f"every one of the {counts['rejected']} records sent was rejected (reasons in "
                        f"{rejects_path(output)}): check --model, --language and the endpoint")
