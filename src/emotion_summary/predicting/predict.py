"""Write a leaderboard submission with one of three backends, resumably.

Every raw reply is appended to `<output>.raw.jsonl` (replies.py) as soon as it exists, keyed on a hash
of the exact request, so a killed or failed run is resumed by running the same command again: a report
is never generated (or paid for) twice for the same request. A field the model left out is filled with
the extractive baseline's text for that field and counted as a warning; no id is dropped. A report the
endpoint refuses (a 4xx other than 429, e.g. longer than the served context) is recorded with an empty
reply and its error; when most reports are refused the endpoint is wrong, the run stops and keeps none
of its refusals, so a rerun against the fixed endpoint sends them again.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from emotion_summary.core.atomic_io import atomic_write_json
from emotion_summary.core.cli import EndpointOptions, check_numbers, number_problem, option_group
from emotion_summary.core.errors import NotReady, UserError
from emotion_summary.core.output_lock import hold_outputs
from emotion_summary.core.paths import refuse_overwrite
from emotion_summary.data.folds import guard_leakage
from emotion_summary.data.records import GOLD_FIELDS, Record, read_records
from emotion_summary.modeling.identity import ModelInfo, describe_model
from emotion_summary.predicting.backends import (
    BACKENDS,
    Backend,
    FittedPrompts,
    extractive_backend,
    hf_backend,
    openai_backend,
)
from emotion_summary.predicting.extractive import extract_fields
from emotion_summary.predicting.submission import (
    SUBMISSION_FILE,
    KeySet,
    check_submission,
    filled_file_for,
    write_submission,
)
from emotion_summary.prompting.prompt import Language, PromptSpec, parse_answer
from emotion_summary.prompting.replies import Replies, ReplyStore, request_key, side_file_for
from emotion_summary.teacher.client import ChatClient, EndpointError, is_refusal, run_pool

SUBMISSIONS_DIR = Path("submissions")


def default_output(backend: str, model_path: str | None, model: str | None) -> Path:
    """submissions/<run or model>/Emotion_Summary_Result.jsonl, so runs of different models never
    overwrite each other: the --model_path folder (<run>-<step> for a checkpoint), the served --model,
    or "extractive"."""
    if backend == "extractive" or not (model_path or model):
        name = backend
    elif model_path:
        path = Path(model_path).resolve()
        name = f"{path.parent.parent.name}-{path.name}" if path.parent.name == "checkpoints" else path.name
    else:
        name = str(model).rstrip("/").split("/")[-1]
    return SUBMISSIONS_DIR / (re.sub(r"[^\w.+-]+", "_", name).strip("._") or backend) / SUBMISSION_FILE
# The endpoint, not the reports, is wrong when it refuses most of the first reports it is sent.
REFUSALS_JUDGED_AFTER = 8


class MostlyRefused(EndpointError):
    """The endpoint refused most reports of this run: nothing it refused is kept."""


def report_chars(record: Record) -> int:
    return sum(map(len, record.case_description + record.consultation_process)) + len(
        record.experience_and_reflection)


def _batches(records: list[Record], size: int) -> list[list[Record]]:
    return [records[i: i + size] for i in range(0, len(records), max(size, 1))]


def predict(records: Sequence[Record], backend: Backend, side_file: str | Path) -> Replies:
    """Raw text per id: saved replies to the very same request, else from the backend.

    Records are sorted by length so batches pad little; with `concurrency` > 1 batches run in a thread
    pool. Each batch's replies are appended to the side file (from this thread only) as it finishes;
    refusals only when the run ends without most reports refused.
    """
    from tqdm import tqdm

    store = ReplyStore(side_file)
    store.repair()
    keys = {r.id: request_key(backend.request(r)) for r in records}
    done, stale = store.load(keys)
    if done or stale:
        print(f"reused {len(done)} saved replies from {store.path}"
              + (f"; {stale} saved for another request (model, prompt, max_new_tokens or report) are not"
                 " reused" if stale else ""))
    todo = sorted((r for r in records if r.id not in done), key=report_chars)
    trimmed = backend.prompts.trimmed() if backend.prompts else {}
    sent, refusals = 0, []

    def finish(batch: list[Record], raws: list[str], error: str | None) -> None:
        nonlocal sent
        if len(raws) != len(batch):
            raise RuntimeError(f"backend {backend.name} returned {len(raws)} texts for {len(batch)} reports")
        sent += len(batch)
        for record, raw in zip(batch, raws):
            if error:
                refusals.append((record.id, error))
            else:
                store.append(record.id, keys[record.id], backend.name, raw, trimmed_tokens=trimmed.get(record.id, 0))
                done.add(record.id, raw)
        bar.update(len(batch))
        if sent >= min(REFUSALS_JUDGED_AFTER, len(todo)) and 2 * len(refusals) > sent:
            raise MostlyRefused(f"the endpoint refused {len(refusals)} of the {sent} reports sent so far; "
                                f"first error: {refusals[0][1][:300]}. Is --endpoint/--model right and the "
                                "server's context long enough? None of the refusals is kept: fix the endpoint "
                                "and run the same command again", 400)

    with tqdm(total=len(records), initial=len(records) - len(todo), desc=backend.name, unit="report") as bar:
        try:
            run_pool(_batches(todo, backend.batch_size), lambda b: _generate(backend, b),
                     lambda out: finish(*out), backend.concurrency)
        except MostlyRefused:
            raise
        except EndpointError as e:
            raise EndpointError(f"{e}. {len(done)}/{len(records)} reports are saved in {store.path}; "
                                "run the same command again to resume", e.status) from None
    for rid, error in refusals:  # final: asking again would get the same 4xx
        store.append(rid, keys[rid], backend.name, "", error, trimmed.get(rid, 0))
        done.add(rid, "", error)
    return done


def _generate(backend: Backend, batch: list[Record]) -> tuple[list[Record], list[str], str | None]:
    """(batch, raw texts, None), or empty texts and the error when the endpoint refuses the batch (the
    openai backend sends one report a batch)."""
    try:
        return batch, backend.generate(batch), None
    except EndpointError as e:
        if not is_refusal(e):
            raise
        return batch, [""] * len(batch), str(e)


@dataclass
class Assembled:
    fields: dict[int, dict[str, str]]
    filled: dict[int, list[str]] = field(default_factory=dict)  # id -> fields taken from the baseline
    not_json: list[int] = field(default_factory=list)  # ids whose reply had no parseable JSON object
    refused: dict[int, str] = field(default_factory=dict)  # id -> the endpoint's error

    def usable(self) -> int:
        """How many reports got at least one field from the model (not refused, not all baseline)."""
        return sum(rid not in self.refused and len(self.filled.get(rid, ())) < len(GOLD_FIELDS)
                   for rid in self.fields)

    @property
    def fields_from_model(self) -> int:
        return sum(len(f) for f in self.fields.values()) - self.fields_from_fallback

    @property
    def fields_from_fallback(self) -> int:
        return sum(len(names) for names in self.filled.values())

    def provenance(self) -> str:
        """One line: where the submission's fields came from."""
        total = sum(len(f) for f in self.fields.values())
        replies = len(self.fields) - len(self.refused)
        return (f"fields: {self.fields_from_model} of {total} from the model, {self.fields_from_fallback} from "
                f"the extractive fallback; {replies - len(self.not_json)} of {replies} replies parsed as JSON")


def assemble(records: Sequence[Record], raws: dict[int, str], refused: dict[int, str] | None = None) -> Assembled:
    """Parse every raw text; fill missing fields from the extractive baseline."""
    out = Assembled({}, refused=dict(refused or {}))
    for record in records:
        parsed = parse_answer(raws[record.id])
        fields = dict(parsed.fields)
        if parsed.missing:
            baseline = extract_fields(record)
            fields.update({k: baseline[k] for k in parsed.missing})
            out.filled[record.id] = parsed.missing
        if not parsed.parsed_json and record.id not in out.refused:
            out.not_json.append(record.id)
        out.fields[record.id] = fields
    return out


def make_backend(backend: str, model_path: str | None = None, endpoint: str | None = None, model: str | None = None,
                 max_new_tokens: int | None = None, language: Language | None = None,
                 quantization: str | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 timeout_s: float = 300.0, max_retries: int = 4) -> Backend:
    """One backend as `infer` builds it, for callers that summarise report by report (the demo page).
    The hf model loads on the first report and stays loaded."""
    _check_options(backend, model_path, endpoint, model, {"max_new_tokens": max_new_tokens})
    server = EndpointOptions(endpoint=endpoint or "", model=model or "", concurrency=1, timeout_s=timeout_s,
                             max_retries=max_retries)  # checks the ranges
    info = describe_model(model_path, language) if model_path and backend != "extractive" else None
    max_new_tokens = max_new_tokens or (info.max_new_tokens if info else 512)
    return _make_backend(backend, info, language, server, max_new_tokens, None, quantization, temperature, top_p)


def summarise(records: Sequence[Record], chosen: Backend) -> Assembled:
    """The five fields of each report from `chosen` (no side file, nothing saved); fields the model left
    out come from the extractive baseline and are listed in `filled`. A refusal is an EndpointError."""
    raws: dict[int, str] = {}
    for batch in _batches(list(records), chosen.batch_size):
        raws.update(zip((r.id for r in batch), chosen.generate(batch)))
    return assemble(records, raws)


# ---------------------------------------------------------------- CLI


def _check_options(backend: str, model_path: str | None, endpoint: str | None, model: str | None,
                   numbers: dict[str, float | None]) -> None:
    problems = [problem for name, value in numbers.items()
                if value is not None and (problem := number_problem(name, value, int, 1))]
    if backend not in BACKENDS:
        problems.append(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "hf" and not (model_path and Path(model_path).is_dir()):
        problems.append(f"--backend hf needs --model_path: an adapter, a merged model or a plain model "
                        f"directory such as Qwen2-7B-Instruct (got {model_path!r})")
    if backend == "openai" and not (endpoint and model):
        problems.append("--backend openai needs --endpoint URL and --model NAME (the served model)")
    if problems:
        raise UserError("\n".join(problems))


def _make_backend(backend: str, info: ModelInfo | None, language: str | None, server: EndpointOptions,
                  max_new_tokens, batch_size, quantization, temperature=0.0, top_p=1.0, seed=0) -> Backend:
    if backend == "extractive":
        return extractive_backend()
    if backend == "hf":
        return hf_backend(info, max_new_tokens, batch_size or info.batch_size, quantization, temperature, top_p, seed)
    spec = info.spec if info else PromptSpec(**({"language": language} if language else {}))
    return openai_backend(ChatClient.from_options(server), spec, max_new_tokens, server.concurrency, info,
                          temperature, top_p)


@option_group("server", without=("max_tokens",))  # --max_new_tokens is the budget of every backend
def infer(input: str, output: str | None = None, model_path: str | None = None,
          backend: Literal["hf", "openai", "extractive"] = "hf", batch_size: int | None = None,
          max_new_tokens: int | None = None, server: EndpointOptions = EndpointOptions(),
          allow_leakage: bool = False, language: Language | None = None,
          quantization: Literal["nf4", "none"] | None = None, keys: KeySet = "competition",
          temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> None:
    """Write a leaderboard submission (Emotion_Summary_Result.jsonl) for an ES inputs file.

    Args:
        input: ES records file (JSONL or JSON array), e.g. Emotion_Summary.jsonl.
        output: submission file to write; default submissions/<run or model>/Emotion_Summary_Result.jsonl (the
            --model_path folder, the served --model, or extractive). Raw replies go to <output>.raw.jsonl (resume
            state); which fields came from the extractive fallback to <output>.filled.json.
        model_path: an adapter or merged model written by this project (its prompt.json and config are
            used), a plain model directory such as Qwen2-7B-Instruct (the default prompt), smollm2-135m or
            a .gguf file (dequantised once into the cache); needed for hf.
        backend: hf (local model), openai (an OpenAI-compatible server) or extractive (no model).
        batch_size: reports per generate call (hf); default: from the checkpoint's max_seq_len.
        max_new_tokens: generation budget per report; default: the checkpoint's (512 without one).
        allow_leakage: predict even reports that the model's training data contains.
        language: auto, en or zh: overrides the prompt's answer language.
        quantization: nf4 or none (hf); default: the adapter's training quantization, none otherwise.
        keys: competition (the CloudCom 2025 challenge: predicted_cause, predicted_illness_Characteristics, ...)
            or benchmark (LongEmotion's result files: predicted_causes, predicted_characteristics, ...).
        temperature: 0 decodes greedily; above 0 samples (the benchmark's runner: 0.8, with --top_p 0.9 and
            --max_new_tokens 8192).
        top_p: nucleus sampling mass when --temperature > 0 (the benchmark's runner: 0.9).
        seed: random seed of sampling (hf).
    """
    if model_path and backend != "extractive":
        from emotion_summary.modeling.gguf_models import resolve_base_model

        model_path = resolve_base_model(model_path)  # smollm2-135m or a .gguf file: its cached HF directory
    _check_options(backend, model_path, server.endpoint, server.model,
                   {"batch_size": batch_size, "max_new_tokens": max_new_tokens})
    check_numbers({"temperature": (temperature, float, 0), "top_p": (top_p, float, 0, True)})
    if top_p > 1:
        raise UserError(f"--top_p: expected a number in (0, 1], got {top_p!r}")
    output = str(output or default_output(backend, model_path, server.model))
    side = side_file_for(output)
    refuse_overwrite({"--output": output}, {"--input": input})
    refuse_overwrite({"--output's raw replies": side}, {"--input": input})  # beside --output: fine if it is
    refuse_overwrite({"--output's fallback sidecar": filled_file_for(output)}, {"--input": input})
    for name, path in (("--output", output), ("--output's raw replies", side)):
        if model_path and Path(path).is_file() and Path(model_path).resolve() in Path(path).resolve().parents:
            raise UserError(f"{name} {path}: is a file of --model_path {model_path} (its prompt.json, config or "
                            "weights would be overwritten); write the submission elsewhere")
    with hold_outputs([output, side]):  # one run writes a submission and its replies at a time
        records = read_records(input)
        info = describe_model(model_path, language) if model_path and backend != "extractive" else None
        if info is not None and info.kind != "plain":  # a plain model was trained on none of our reports
            guard_leakage(records, model_path, allow_leakage)
        max_new_tokens = max_new_tokens or (info.max_new_tokens if info else 512)
        started = time.monotonic()
        chosen = _make_backend(backend, info, language, server, max_new_tokens, batch_size, quantization, temperature,
                               top_p, seed)
        try:
            raws = predict(records, chosen, side)
        except KeyboardInterrupt:  # cli.call prints this and exits 130
            raise KeyboardInterrupt(f"interrupted: finished replies are saved in {side}; run the same command "
                                    "again to resume") from None
        result = assemble(records, raws, raws.refused)
        write_submission(output, result.fields, [r.id for r in records], keys)
        write_filled(output, result, backend)
        print(f"wrote {len(records)} rows to {output} in {time.monotonic() - started:.1f} s "
              f"(backend {backend}; raw replies in {side})")
        print(result.provenance())
        _print_warnings(result, side)
        if chosen.prompts and (trimmed := chosen.prompts.trimmed()):
            print(trimmed_summary(trimmed, len(records), chosen.prompts, side))
        # an endpoint that answers everything with garbage is broken; a random cpu-smoke model is expected to
        if backend == "openai" and records and not result.usable():
            raise NotReady(f"no usable reply: every one of the {len(records)} replies was refused or held none of "
                           f"the five fields, so {output} is the extractive baseline throughout; not ready to "
                           f"submit (see {side})")
        report = check_submission(output, input, keys)
        print(report.render())
        if not report.ok:
            raise NotReady(f"{output} failed the submission check ({len(report.errors)} errors above)")


def write_filled(output: str | Path, result: Assembled, backend: str) -> Path:
    """<output>.filled.json: the fields each report took from the extractive fallback (all five for an
    extractive run), so a report page can mark them."""

    filled = {rid: list(GOLD_FIELDS) for rid in result.fields} if backend == "extractive" else result.filled
    return atomic_write_json(filled_file_for(output), {
        "backend": backend, "filled": {str(rid): names for rid, names in filled.items() if names},
        "not_json": result.not_json, "refused": sorted(result.refused)})


def trimmed_summary(trimmed: dict[int, int], n_reports: int, prompts: FittedPrompts, side: Path) -> str:
    """One line for every report trimmed to fit the model's window; the per-report counts are in the
    raw-reply file."""
    return (f"trimmed {len(trimmed)} of {n_reports} reports in the middle to fit max_seq_len={prompts.max_seq_len} "
            f"beside max_new_tokens={prompts.max_new_tokens} (up to {max(trimmed.values()):,} tokens from one "
            f"report); tokens trimmed per report: \"trimmed_tokens\" in {side}")


def _print_warnings(result: Assembled, side: Path) -> None:
    if result.refused:
        first = next(iter(result.refused.values()))
        print(f"WARNING: the endpoint refused {len(result.refused)} reports (ids {sorted(result.refused)[:20]}); "
              f"they are all extractive baseline. First error: {first[:300]}. Too long for the served "
              f"context? To ask again, remove their lines from {side} and rerun.")
    if result.not_json:
        print(f"WARNING: {len(result.not_json)} replies had no parseable JSON object (ids "
              f"{result.not_json[:20]}); their fields were read key by key where possible")
    if result.filled:
        n_fields = sum(map(len, result.filled.values()))
        by_field: dict[str, int] = {}
        for names in result.filled.values():
            for name in names:
                by_field[name] = by_field.get(name, 0) + 1
        print(f"WARNING: {n_fields} fields in {len(result.filled)} reports were missing or empty in the "
              f"model's answer and were filled from the extractive baseline ({by_field}; ids "
              f"{sorted(result.filled)[:20]})")
