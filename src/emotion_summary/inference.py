"""Write a leaderboard submission with one of three backends, resumably.

Every backend is a plain callable `generate(records) -> raw texts`; they share the prompt (the
checkpoint's prompt.json) and the parser (prompt.parse_answer). Each raw text is appended to
`<output>.raw.jsonl` as soon as it exists, so a killed or failed run is resumed by running the same
command again: finished ids are never generated (or paid for) twice. A field the model left out is
filled with the extractive baseline's text for that field and counted as a warning; no id is dropped.
A report the endpoint refuses (a 4xx other than 429, e.g. longer than the served context) is recorded
with an empty reply and its error, so it is all baseline and a rerun does not stop at it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from emotion_summary.atomic_io import append_jsonl, read_jsonl_tolerant, repair_jsonl_tail
from emotion_summary.errors import UserError
from emotion_summary.client import ChatClient, EndpointError, is_refusal, run_pool
from emotion_summary.extractive import extract_fields, extractive_generate
from emotion_summary.folds import guard_leakage
from emotion_summary.prompt import LANGUAGES, PromptSpec, build_prompt, parse_answer
from emotion_summary.records import Record, read_records
from emotion_summary.submission import SUBMISSION_FILE, check_submission, write_submission

GenerateFn = Callable[[list[Record]], list[str]]
BACKENDS = ("hf", "openai", "extractive")
DEFAULT_OUTPUT = str(Path("submissions") / SUBMISSION_FILE)


def side_file_for(output: str | Path) -> Path:
    return Path(f"{output}.raw.jsonl")


def report_chars(record: Record) -> int:
    return sum(map(len, record.case_description + record.consultation_process)) + len(
        record.experience_and_reflection)


class Raws(dict):
    """Raw text per id; `refused` holds the endpoint's error for the ids it refused (their text is "")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refused: dict[int, str] = {}

    def add(self, rid: int, raw: str, error: str | None = None) -> None:
        self[rid] = raw
        if error:
            self.refused[rid] = error
        else:
            self.refused.pop(rid, None)


def load_finished(side_file: Path, backend: str, model: str, records: Sequence[Record]) -> Raws:
    """Raw texts already generated for these very reports by this backend and model (last one wins).

    Rows of another backend or model (a retrained adapter written to the same default output) or of
    another report under the same id are not reused.
    """
    fingerprints = {r.id: r.fingerprint() for r in records}
    done, foreign = Raws(), 0
    for row in read_jsonl_tolerant(side_file):
        rid, raw = row.get("id"), row.get("raw")
        if rid not in fingerprints or not isinstance(raw, str):
            continue
        if (row.get("backend"), row.get("model"), row.get("fingerprint")) == (backend, model, fingerprints[rid]):
            done.add(rid, raw, row.get("error"))
        else:
            foreign += 1
    if foreign:
        print(f"note: {side_file}: {foreign} earlier raw generations are for another backend, model or report "
              "text and are not reused")
    return done


def _batches(records: list[Record], size: int) -> list[list[Record]]:
    return [records[i: i + size] for i in range(0, len(records), max(size, 1))]


def predict(records: Sequence[Record], generate_fn: GenerateFn, side_file: str | Path, backend: str,
            model: str = "", batch_size: int = 1, concurrency: int = 1) -> Raws:
    """Raw text per id: from the side file where finished, else from `generate_fn`.

    Records are sorted by length so batches pad little; with `concurrency` > 1 batches run in a thread
    pool. Each batch's results are appended to the side file (from this thread only) as it finishes.
    """
    from tqdm import tqdm

    side_file = Path(side_file)
    repair_jsonl_tail(side_file)
    done = load_finished(side_file, backend, model, records)
    todo = sorted((r for r in records if r.id not in done), key=report_chars)

    def finish(batch: list[Record], raws: list[str], error: str | None) -> None:
        if len(raws) != len(batch):
            raise RuntimeError(f"backend {backend} returned {len(raws)} texts for {len(batch)} reports")
        for record, raw in zip(batch, raws):
            row = {"id": record.id, "raw": raw, "backend": backend, "model": model,
                   "fingerprint": record.fingerprint()}
            append_jsonl(side_file, {**row, "error": error} if error else row)
            done.add(record.id, raw, error)
        bar.update(len(batch))

    with tqdm(total=len(records), initial=len(records) - len(todo), desc=backend, unit="report") as bar:
        try:
            run_pool(_batches(todo, batch_size), lambda b: _generate(generate_fn, b), lambda out: finish(*out),
                     concurrency)
        except EndpointError as e:
            raise EndpointError(f"{e}. {len(done)}/{len(records)} reports are saved in {side_file}; "
                                "run the same command again to resume", e.status) from None
    return done


def _generate(generate_fn: GenerateFn, batch: list[Record]) -> tuple[list[Record], list[str], str | None]:
    """(batch, raw texts, None), or empty texts and the error when the endpoint refuses the batch (the
    openai backend sends one report a batch): asking again would get the same 4xx."""
    try:
        return batch, generate_fn(batch), None
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


# ---------------------------------------------------------------- backends


def hf_backend(model_path: str, max_new_tokens: int, language: str | None) -> GenerateFn:
    try:  # torch is imported only here: the other backends and the checker stay light
        from emotion_summary.model import Qwen2EmotionSummaryModel
    except ModuleNotFoundError as e:
        raise UserError(f"the hf backend needs torch/transformers (pip install -e .[train]): {e}") from None
    model = Qwen2EmotionSummaryModel.load(model_path)  # a ModelError is a UserError already
    if language:
        model.prompt = dataclasses.replace(model.prompt, language=language)
    return lambda batch: model.generate(batch, max_new_tokens=max_new_tokens, batch_size=len(batch))


def openai_backend(client: ChatClient, spec: PromptSpec, max_new_tokens: int,
                   trim: PromptBudget | None = None) -> GenerateFn:
    def messages(record: Record) -> list[dict]:
        if trim is None:
            return build_prompt(spec, record).messages
        return build_prompt(spec, record, trim.max_prompt_tokens, trim.count_tokens).messages

    return lambda batch: [client.chat(messages(r), max_tokens=max_new_tokens) for r in batch]


@dataclass
class PromptBudget:
    max_prompt_tokens: int
    count_tokens: Callable[[str], int]


def prompt_budget(model_path: str | None, max_new_tokens: int) -> PromptBudget | None:
    """With a checkpoint directory, trim reports as the model was trained to see them (its tokenizer
    and max_seq_len), so the served model gets the same prompts the hf backend would build."""
    if not model_path or not (Path(model_path) / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    from emotion_summary.config import TrainConfig
    from emotion_summary.encode import TEMPLATE_MARGIN, token_counter

    cfg = TrainConfig.load(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return PromptBudget(cfg.max_seq_len - max_new_tokens - TEMPLATE_MARGIN, token_counter(tokenizer))


def load_spec(model_path: str | None, language: str | None) -> PromptSpec:
    spec = PromptSpec.load(model_path) if model_path else PromptSpec()
    return dataclasses.replace(spec, language=language) if language else spec


# ---------------------------------------------------------------- CLI


def _check_options(backend: str, model_path: str | None, endpoint: str | None, model: str | None,
                   language: str | None) -> None:
    if backend not in BACKENDS:
        raise UserError(f"--backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "hf" and not (model_path and Path(model_path).is_dir()):
        raise UserError(f"--backend hf needs --model_path, an adapter or merged model directory "
                        f"(got {model_path!r})")
    if backend == "openai" and not (endpoint and model):
        raise UserError("--backend openai needs --endpoint URL and --model NAME (the served model)")
    if language not in (None, *LANGUAGES):
        raise UserError(f"--language: expected auto, en or zh, got {language!r}")


def _lazy(factory: Callable[[], GenerateFn]) -> GenerateFn:
    lock, made = threading.Lock(), []

    def generate(batch: list[Record]) -> list[str]:
        with lock:
            if not made:
                made.append(factory())
        return made[0](batch)

    return generate


def _make_backend(backend, model_path, endpoint, model, language, max_new_tokens, timeout_s,
                  max_retries) -> GenerateFn:
    if backend == "extractive":
        return extractive_generate
    if backend == "hf":
        return hf_backend(model_path, max_new_tokens, language)
    client = ChatClient(endpoint, model, timeout_s=timeout_s, max_retries=max_retries)
    return openai_backend(client, load_spec(model_path, language), max_new_tokens,
                          prompt_budget(model_path, max_new_tokens))


def _weights_stamp(model_path: Path) -> str:
    """Changes when the weights are rewritten (a retrained run in the same directory)."""
    files = sorted(model_path.glob("*.safetensors")) + sorted(model_path.glob("*.bin"))
    stat = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:12]


def _model_id(backend: str, model_path: str | None, model: str | None, language: str | None) -> str:
    """What produced a raw text, so a rerun with another model or answer language does not reuse it."""
    if backend == "extractive":
        return "extractive"
    path = Path(model_path).resolve() if model_path else None
    made_by = f"{path}#{_weights_stamp(path)}" if backend == "hf" else f"{model}@{path or ''}"
    return f"{made_by}|{language}" if language else made_by


def infer(input: str, output: str = DEFAULT_OUTPUT, model_path: str | None = None, backend: str = "hf",
          batch_size: int = 4, max_new_tokens: int = 512, endpoint: str | None = None,
          model: str | None = None, concurrency: int = 8, allow_leakage: bool = False,
          language: str | None = None, timeout_s: float = 300.0, max_retries: int = 4) -> None:
    """Write a leaderboard submission (Emotion_Summary_Result.jsonl) for an ES inputs file.

    Args:
        input: ES records file (JSONL or JSON array), e.g. Emotion_Summary.jsonl.
        output: submission file to write; raw generations go to <output>.raw.jsonl (resume state).
        model_path: adapter or merged model directory holding prompt.json (needed for hf).
        backend: hf (local model), openai (an OpenAI-compatible server) or extractive (no model).
        batch_size: reports per generate call (hf).
        max_new_tokens: generation budget per report.
        endpoint: base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (openai).
        model: model name the server serves (openai).
        concurrency: requests in flight at once (openai).
        allow_leakage: predict even reports that the model's training data contains.
        language: auto, en or zh: overrides the prompt's answer language.
        timeout_s: per-request timeout in seconds (openai).
        max_retries: retries per request on connection errors, timeouts, 429 and 5xx (openai).
    """
    _check_options(backend, model_path, endpoint, model, language)
    records = read_records(input)
    if model_path:
        guard_leakage(records, model_path, allow_leakage)
    started = time.monotonic()
    # Lazy: a finished run resumed for its final file never loads the model.
    generate = _lazy(lambda: _make_backend(backend, model_path, endpoint, model, language,
                                           int(max_new_tokens), float(timeout_s), int(max_retries)))
    side = side_file_for(output)
    batch = {"hf": int(batch_size), "openai": 1, "extractive": 64}[backend]
    raws = predict(records, generate, side, backend, _model_id(backend, model_path, model, language),
                   batch_size=batch, concurrency=int(concurrency) if backend == "openai" else 1)
    result = assemble(records, raws, raws.refused)
    write_submission(output, result.fields, [r.id for r in records])
    print(f"wrote {len(records)} rows to {output} in {time.monotonic() - started:.1f} s "
          f"(backend {backend}; raw generations in {side})")
    _print_warnings(result, side)
    print(check_submission(output, input).render())


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
