"""Synthetic case reports in the ES input schema, written by a teacher model from seeds.

A seed (a PsyQA question, a line of a topics file, or a built-in presenting problem x client profile)
becomes one request; the reply must be one JSON object with the three input sections, near the
length targets, in the requested language. An unusable reply is re-asked, saying what was wrong, then
rejected to `<output stem>.rejects.jsonl` with the reason. Accepted reports pass two gates before they
are appended: no long passages shared with the official inputs (a teacher may have seen the public
test set), and no near-duplicate of a synthetic report already kept. A rerun sends nothing finished.

Length targets follow the 150 official inputs (`Emotion_Summary.jsonl`), measured by `shape_table`
(words = whitespace-separated; p90 interpolated as in `stats.describe`) with
    python scripts/synthesize_reports.py --dry_run --official data/longemotion/Emotion_Summary.jsonl
    measure                           median   mean    p90   min    max
    case_description paragraphs            1    3.2      9     1     38
    consultation_process paragraphs        7   14.9     43     1     91
    case_description words               129    232    564     5  1,637
    consultation_process words         1,345  1,391  2,327    20  4,300
    experience_and_reflection words      904    926  1,115   379  2,109  (never empty)
    all three                          2,358  2,549  3,491 1,026  5,577
A section passes the length gate when its length lies within the official inputs' 5th-95th percentile
(OFFICIAL_RANGE: numpy's linear interpolation over the same 150 reports) or within the tolerance band
around the target the flags set, whichever is wider: a teacher that roughly follows the instruction
is not re-asked (each re-ask is a paid request).
    measure                           p5   median    p95
    consultation_process paragraphs    1        7     55
    case_description words            16      129    915
    consultation_process words       330    1,345  2,708
    experience_and_reflection words  715      904  1,161
Token estimates use ratios measured with the Qwen2 tokenizer (qwen_tokenizer_offline): 1.26 tokens
per word of the official reports in JSON form, 0.65 tokens per CJK character of PsyQA answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from itertools import product
from pathlib import Path
from typing import Literal

from emotion_summary.core.atomic_io import (
    atomic_write_bytes,
    drop_repeated_ids,
    first_foreign_line,
    read_jsonl_tolerant,
)
from emotion_summary.core.cli import EndpointOptions, number_problem, option_group
from emotion_summary.core.errors import NotReady, UserError
from emotion_summary.core.json_input import load_json
from emotion_summary.core.output_lock import hold_outputs
from emotion_summary.core.paths import missing_file, refuse_overwrite
from emotion_summary.data.overlap import OverlapIndex, Signature, record_text
from emotion_summary.data.records import Record, read_records, record_from_dict
from emotion_summary.data.text import LANGUAGE_NAMES, detect_language
from emotion_summary.prompting.prompt import json_object
from emotion_summary.teacher.ask_loop import Outcome, ResumableOutput, ask, reask_turns, rejects_path
from emotion_summary.teacher.client import ChatClient, EndpointError, public_url, run_pool_with_bar

PROMPT_VERSION = "synth-v1"
SOURCE = "synthetic"
ID_OFFSET = 20_000_000  # LongEmotion ids are small, PsyQA's start at 10,000,000
DEFAULT_OFFICIAL = Path("data/longemotion/Emotion_Summary.jsonl")
TOKENS_PER_WORD = 1.26
TOKENS_PER_CJK = 0.65
ZH_CHARS_PER_WORD = 1.6
# Synthetic reports of one teacher share stock phrases; a near-duplicate is one that shares a fifth of
# the smaller report's n-gram fingerprints. (Against the official inputs any long shared passage counts.)
DUPLICATE_MIN_RATIO = 0.2
MAX_TOKENS = 6000  # a 2,400-word report is ~3,100 tokens
# The official inputs' 5th and 95th percentile per measure (see the module's docstring): always accepted.
OFFICIAL_RANGE = {"sessions": (1, 55), "case_words": (16, 915), "process_words": (330, 2708),
                  "reflection_words": (715, 1161)}

PROBLEMS = (
    "health anxiety after a serious illness", "panic attacks on the way to work", "low mood after a divorce",
    "grief after a parent's sudden death", "exam anxiety and perfectionism", "conflict with a mother-in-law",
    "suspected infidelity and jealousy", "school refusal", "insomnia and work burnout",
    "social anxiety at a new job", "obsessive checking and hand-washing", "anger outbursts at home",
    "postpartum low mood", "loneliness after moving to a new city", "self-harm urges in adolescence",
    "guilt after a workplace accident", "internet gaming taking over daily life", "fear of marriage",
    "caring for a parent with dementia", "body-image worries and restrictive eating",
)
PROFILES = (
    "a 16-year-old high-school student", "a 22-year-old university student", "a 29-year-old nurse",
    "a 34-year-old married office worker", "a 41-year-old self-employed father of two",
    "a 47-year-old teacher", "a 55-year-old factory manager", "a 63-year-old retired accountant",
)

SYSTEM = ("You write realistic, fictional psychological-counselling case reports, as a counsellor writes "
          "them for a casebook. Every person and detail is invented; never reproduce a published case.")
INSTRUCTION = """Write one complete counselling case report. Use this seed only as the starting point; invent all details:
<seed>{seed}</seed>
{variant}
The report has three sections:
- case_description: a list of 1 to 3 paragraphs, about {case_words} {unit} in all: the client's basic information (sex, age, marital status, education, occupation), the presenting problem, its history, and how the client came to counselling.
- consultation_process: a list of about {sessions} paragraphs, one per session or phase, about {process_words} {unit} in all: what was said and done, the methods used (short exchanges between counsellor and client where useful), homework, and the client's changes.
- experience_and_reflection: one text of about {reflection_words} {unit} in which the counsellor reflects in the first person on the case, the methods chosen and what they learned.
Write in {language}. Answer with only one JSON object with exactly these keys: case_description (a list of strings), consultation_process (a list of strings), experience_and_reflection (a string)."""
VARIANT = ("This is report {n} for this seed: choose a different client and a different course of counselling "
           "than the most obvious one.")
RETRY = ("Your report could not be used: {problems}. Write the whole report again, fixing this, as only one JSON "
         "object with exactly these keys: case_description (a list of strings), consultation_process (a list "
         "of strings), experience_and_reflection (a string).")


@dataclass(frozen=True)
class Targets:
    """Length and structure targets; a report is far off when a count is outside
    [target / tolerance, target * tolerance]. Defaults: the official reports' medians."""

    sessions: int = 7
    case_words: int = 130
    process_words: int = 1350
    reflection_words: int = 900
    tolerance: float = 2.5


@dataclass(frozen=True)
class Seed:
    key: str  # hash of the text: the same seed keeps its key when the file is reordered
    text: str
    origin: str  # where it came from: "builtin", "psyqa:<questionID>", "<file>:line <n>"


@dataclass(frozen=True)
class Job:
    seed: Seed
    variant: int  # 0 for a seed's first report, 1 for its second ... (when --n exceeds the seeds)

    @property
    def key(self) -> str:
        return f"{self.seed.key}/{self.variant}"


def _seed(text: str, origin: str) -> Seed:
    text = " ".join(text.split())
    return Seed(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], text, origin)


def builtin_seeds() -> list[Seed]:
    return [_seed(f"{profile.capitalize()} seeks counselling for {problem}.", "builtin")
            for problem, profile in product(PROBLEMS, PROFILES)]


def _psyqa_seeds(path: Path, items) -> list[Seed]:
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON array of PsyQA questions, got {type(items).__name__}")
    seeds = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise UserError(f"{path}: item {n}: field 'question': expected a non-empty string")
        description = item.get("description") if isinstance(item.get("description"), str) else ""
        seeds.append(_seed(f"{item['question']} {description}", f"psyqa:{item.get('questionID', n)}"))
    return seeds


def _jsonl_seed(path: Path, n: int, line: str) -> Seed:
    try:
        value = load_json(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
    if isinstance(value, dict):
        value = value.get("seed", value.get("question"))
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{path}: line {n}: expected a string or an object with a non-empty 'seed' or 'question'")
    return _seed(value, f"{path.name}:line {n}")


def read_seeds(seeds: str) -> list[Seed]:
    """`builtin`, a PsyQA JSON array (.json), JSONL of strings or {"seed": ...} (.jsonl), or a text file
    with one topic per line ('#' lines are comments). Repeated seeds are kept once."""
    if seeds == "builtin":
        return builtin_seeds()
    path = Path(seeds)
    if missing_file(path):  # "no such file", or "is a directory"
        raise UserError(f"{path}: {missing_file(path)}; give a seeds file (or pass --seeds builtin)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if path.suffix == ".json":
        try:
            found = _psyqa_seeds(path, load_json(text))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    elif path.suffix == ".jsonl":
        found = [_jsonl_seed(path, n, line) for n, line in lines]
    else:
        found = [_seed(line, f"{path.name}:line {n}") for n, line in lines if not line.lstrip().startswith("#")]
    first: dict[str, Seed] = {}
    for seed in found:
        first.setdefault(seed.key, seed)
    unique = list(first.values())
    if not unique:
        raise UserError(f"{path}: no seeds in the file")
    return unique


def plan_jobs(seeds: list[Seed], n: int) -> list[Job]:
    """The first `n` jobs: every seed once, then every seed a second time, and so on."""
    return [Job(seeds[i % len(seeds)], i // len(seeds)) for i in range(n)]


def _unit(language: str) -> str:
    return "Chinese characters" if language == "zh" else "words"


def _scaled(targets: Targets, language: str) -> Targets:
    """Targets in the counting unit of `language` (Chinese: characters; ZH_CHARS_PER_WORD is assumed,
    not measured)."""
    if language != "zh":
        return targets
    return replace(targets, case_words=round(targets.case_words * ZH_CHARS_PER_WORD),
                   process_words=round(targets.process_words * ZH_CHARS_PER_WORD),
                   reflection_words=round(targets.reflection_words * ZH_CHARS_PER_WORD))


def length(text: str, language: str) -> int:
    """Words (English) or CJK characters (Chinese)."""
    return len(re.findall(r"[\u4e00-\u9fff]", text)) if language == "zh" else len(text.split())


def messages_for(job: Job, targets: Targets, language: str) -> list[dict]:
    t = _scaled(targets, language)
    user = INSTRUCTION.format(seed=job.seed.text, variant=VARIANT.format(n=job.variant + 1) if job.variant else "",
                              case_words=t.case_words, process_words=t.process_words,
                              reflection_words=t.reflection_words, sessions=t.sessions, unit=_unit(language),
                              language=LANGUAGE_NAMES[language])
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _paragraphs(obj: dict, key: str, problems: list[str], allow_str: bool) -> list[str]:
    value = obj.get(key)
    if allow_str and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{key} is {'missing' if value is None else 'not a list of strings'}")
        return []
    kept = [v.strip() for v in value if v.strip()]
    if not kept:
        problems.append(f"{key} is empty")
    return kept


def accepted_range(measure: str, target: int, tolerance: float, language: str) -> tuple[float, float]:
    """The lengths the gate accepts: the wider of the official 5th-95th percentile and the tolerance
    band around `target` (both already in `language`'s unit)."""
    scale = ZH_CHARS_PER_WORD if language == "zh" and measure != "sessions" else 1
    low, high = (v * scale for v in OFFICIAL_RANGE[measure])
    return min(low, target / tolerance), max(high, target * tolerance)


def _off_range(section: str, measure: str, count: int, target: int, tolerance: float, language: str,
               what: str) -> str | None:
    low, high = accepted_range(measure, target, tolerance, language)
    if low <= count <= high:
        return None
    side = "below" if count < low else "above"
    return (f"{section} has {count} {what}, {side} the accepted {low:,.0f}-{high:,.0f} (the official inputs' "
            f"5th-95th percentile, widened by --{measure} {target} x/÷ --length_tolerance {tolerance:g})")


def check_report(reply: str, targets: Targets, language: str) -> tuple[dict | None, list[str]]:
    """(the three sections, []) for a usable reply, else (None, what is wrong). Other keys are ignored."""
    # a raw line break inside a JSON string is invalid JSON; outside strings it is only white space
    obj = json_object(reply) or json_object(re.sub(r"[\r\n\t]", " ", reply))
    if obj is None:
        return None, ["no JSON object in the reply"]
    problems: list[str] = []
    case = _paragraphs(obj, "case_description", problems, allow_str=True)
    process = _paragraphs(obj, "consultation_process", problems, allow_str=False)
    reflection = obj.get("experience_and_reflection")
    if not isinstance(reflection, str) or not reflection.strip():
        problems.append("experience_and_reflection is " + ("missing" if reflection is None else "empty or not a string"))
        reflection = ""
    if problems:
        return None, problems
    sections = {"case_description": case, "consultation_process": process,
                "experience_and_reflection": reflection.strip()}
    all_text = " ".join([*case, *process, reflection])
    if detect_language(all_text) != language:
        problems.append(f"not written in {LANGUAGE_NAMES[language]}")
    t, unit = _scaled(targets, language), _unit(language)
    checks = [("case_description", "case_words", length(" ".join(case), language), t.case_words, unit),
              ("consultation_process", "process_words", length(" ".join(process), language), t.process_words, unit),
              ("experience_and_reflection", "reflection_words", length(reflection, language), t.reflection_words,
               unit),
              ("consultation_process", "sessions", len(process), t.sessions, "paragraphs")]
    problems += [p for section, measure, count, target, what in checks
                 if (p := _off_range(section, measure, count, target, t.tolerance, language, what))]
    return (None, problems) if problems else (sections, [])


def synthesize_one(client: ChatClient, job: Job, record_id: int, targets: Targets, language: str,
                   max_reasks: int, max_tokens: int, temperature: float) -> Outcome:
    """Ask, check, re-ask up to `max_reasks` times; an EndpointError other than a refusal propagates.
    The outcome's value is the three sections."""
    def validate(reply: str):
        sections, problems = check_report(reply, targets, language)
        return sections, "; ".join(problems)

    return ask(client, job, record_id, messages_for(job, targets, language), validate,
               reask_turns(lambda problems: RETRY.format(problems=problems)), max_reasks, max_tokens, temperature)


# ---------------------------------------------------------------- the run: resume, gates, append


@dataclass
class _Previous:
    """What an earlier run left: job key -> id, and the jobs that need no new request."""

    ids: dict[str, int]
    finished: set[str]
    records: list[Record]


def _previous_run(output: Path, rejects: Path, synth_source: dict | None) -> _Previous:
    """`synth_source` None (a dry run): no check that the file is this teacher's."""
    foreign = first_foreign_line(output)
    if foreign is not None:  # a text file, say: its lines would be skipped here and appended to
        raise UserError(f"{output}: line {foreign}: not a JSON record, so not a file this command wrote; "
                        "refusing to append to it (choose another --output)")
    records = [record_from_dict(row, output, f"line {n}") for n, row in enumerate(read_jsonl_tolerant(output), 1)]
    ids, finished = {}, set()
    for n, r in enumerate(records, 1):
        source = r.synth_source or {}
        if r.source != SOURCE or "job" not in source:
            raise UserError(f"{output}: line {n}: not a report written by this command (source {r.source!r}); "
                            "choose another --output")
        for k in ("teacher", "prompt_version", "language") if synth_source else ():
            if source.get(k) != synth_source[k]:
                raise UserError(f"{output}: line {n}: written with {k} {source.get(k)!r}, this run uses "
                                f"{synth_source[k]!r}; one file holds one teacher's reports: choose another --output")
        ids[source["job"]] = r.id
        finished.add(source["job"])
    for row in read_jsonl_tolerant(rejects):
        if isinstance(row, dict) and isinstance(row.get("job"), str) and isinstance(row.get("id"), int):
            ids.setdefault(row["job"], row["id"])
            if row.get("gate"):  # a usable report dropped by a quality gate: asking again pays for the same
                finished.add(row["job"])
    return _Previous(ids, finished, records)


def _assign_ids(jobs: list[Job], previous: _Previous) -> dict[str, int]:
    ids = dict(previous.ids)
    next_id = max([ID_OFFSET, *ids.values()]) + 1
    for job in jobs:
        if job.key not in ids:
            ids[job.key], next_id = next_id, next_id + 1
    return ids


def official_index(paths: list[Path]) -> tuple[OverlapIndex, list[Record]]:
    index, records = OverlapIndex(), []
    for path in paths:
        for r in read_records(path):
            index.add(f"official id {r.id} ({path.name})", Signature.of(record_text(r)))
            records.append(r)
    return index, records


@dataclass
class _Gates:
    """The quality gates between a usable reply and the output: no long passage shared with the
    official inputs, no near-duplicate of a report already kept."""

    run: ResumableOutput
    official: OverlapIndex
    synthetic: OverlapIndex

    def record(self, outcome: Outcome) -> None:
        job = outcome.item
        where = {"job": job.key, "seed": job.seed.text}
        if outcome.value is None:
            self.run.reject(outcome, **where)
            return
        record = Record(id=outcome.id, case_description=tuple(outcome.value["case_description"]),
                        consultation_process=tuple(outcome.value["consultation_process"]),
                        experience_and_reflection=outcome.value["experience_and_reflection"], source=SOURCE,
                        synth_source={**self.run.provenance, "job": job.key, "seed": job.seed.text,
                                      "seed_origin": job.seed.origin})
        signature = Signature.of(record_text(record))
        if match := self.official.first_match(signature):  # the dropped report is kept to see what it shared
            self.run.reject(outcome, f"shares long passages with {match.describe()}", "official", **where,
                            report=outcome.value)
        elif match := self.synthetic.first_match(signature):
            self.run.reject(outcome, f"near-duplicate of synthetic id {match.describe()}", "duplicate", **where,
                            report=outcome.value)
        else:
            self.run.accept(record.to_dict())
            self.synthetic.add(record.id, signature)


def _official_paths(official: str | None) -> list[Path]:
    if official is None:
        return [DEFAULT_OFFICIAL] if DEFAULT_OFFICIAL.is_file() else []
    return [Path(p.strip()) for p in str(official).split(",") if p.strip()]


# ---------------------------------------------------------------- shape of the reports, and cost

SHAPE = ("case_paragraphs", "sessions", "case_words", "process_words", "reflection_words", "total_words")


def report_shape(record: Record) -> dict[str, int]:
    """Paragraph counts and lengths (words; CJK characters in a Chinese report) of one report."""
    from emotion_summary.data.text import record_language

    language = record_language(record)
    words = [length(" ".join(record.case_description), language),
             length(" ".join(record.consultation_process), language),
             length(record.experience_and_reflection, language)]
    return dict(zip(SHAPE, [len(record.case_description), len(record.consultation_process), *words, sum(words)]))


def shape_table(groups: dict[str, list[Record]]) -> str:
    """A markdown table: each measure of SHAPE, described per group (official, synthetic)."""
    from emotion_summary.stats import describe

    lines = ["| measure | reports | n | mean | median | p90 | min | max |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    shapes = {name: [report_shape(r) for r in records] for name, records in groups.items() if records}
    for measure in SHAPE:
        for name, rows in shapes.items():
            d = describe([row[measure] for row in rows])
            lines.append(f"| {measure} | {name} | {d['count']} | {d['mean']:,.1f} | {d['median']:,.0f} | "
                         f"{d['p90']:,.0f} | {d['min']:,} | {d['max']:,} |")
    return "\n".join(lines)


def shape_histogram_png(groups: dict[str, list[Record]]) -> bytes:
    from emotion_summary.core.plots import png_bytes, pyplot

    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    for ax, measure, label in ((axes[0], "total_words", "words per report"),
                               (axes[1], "sessions", "consultation_process paragraphs per report")):
        values = {name: [report_shape(r)[measure] for r in records] for name, records in groups.items() if records}
        top = max(max(v) for v in values.values())
        bins = range(0, top + max(1, top // 30) + 1, max(1, top // 30))
        for name, v in values.items():
            # weights 1/n: each bar is the share of that group's reports in the bin (density=True would
            # divide by the bin width too, which is not a share)
            ax.hist(v, bins=bins, alpha=0.6, weights=[1 / len(v)] * len(v), label=f"{name} ({len(v)})")
        ax.set(xlabel=label, ylabel="share of reports")
        ax.legend()
    fig.suptitle("Synthetic reports beside the official inputs")
    return png_bytes(fig, dpi=110, bbox_inches="tight")


def estimate_tokens(text: str) -> int:
    cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
    latin = len(re.sub(r"[\u4e00-\u9fff]", " ", text).split())
    return round(latin * TOKENS_PER_WORD + cjk * TOKENS_PER_CJK)


def cost_per_thousand(jobs: list[Job], targets: Targets, language: str, max_reasks: int) -> dict:
    """Requests and tokens (estimated) for 1,000 reports: when every first reply is usable, and when
    every report is re-asked `max_reasks` times (a re-ask carries the first prompt, the reply and the
    complaint)."""
    sample = jobs[:200] or plan_jobs(builtin_seeds(), 1)
    prompt = sum(estimate_tokens(m["content"]) + 8 for j in sample for m in messages_for(j, targets, language)) / len(sample)
    t = _scaled(targets, language)
    per_unit = TOKENS_PER_CJK if language == "zh" else TOKENS_PER_WORD
    completion = (t.case_words + t.process_words + t.reflection_words) * per_unit
    reask = prompt + completion + estimate_tokens(RETRY) + 40
    return {"best": {"requests": 1000, "prompt_tokens": round(1000 * prompt), "completion_tokens": round(1000 * completion)},
            "worst": {"requests": 1000 * (1 + max_reasks), "prompt_tokens": round(1000 * (prompt + max_reasks * reask)),
                      "completion_tokens": round(1000 * (1 + max_reasks) * completion)}}


def _cost_lines(cost: dict, max_reasks: int, todo: int) -> list[str]:
    best, worst = cost["best"], cost["worst"]
    return ["estimated cost per 1,000 reports (tokens estimated from words: 1.26 tokens per English word, "
            "0.65 per CJK character, Qwen2 tokenizer):",
            f"  every first reply usable: {best['requests']:,} requests, {best['prompt_tokens']:,} prompt + "
            f"{best['completion_tokens']:,} completion tokens",
            f"  every report re-asked {max_reasks} times (worst case): {worst['requests']:,} requests, "
            f"{worst['prompt_tokens']:,} prompt + {worst['completion_tokens']:,} completion tokens",
            f"this run: {todo} reports to request (x{todo / 1000:g} of the above)"]


# ---------------------------------------------------------------- entry points


def _synth_source(client: ChatClient | None, language: str, targets: Targets) -> dict:
    return {"teacher": client.model if client else None, "endpoint": public_url(client.endpoint) if client else None,
            "prompt_version": PROMPT_VERSION, "language": language, "targets": vars(targets),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def synthesize_file(seeds: str, n: int, output: str | Path, client: ChatClient | None, language: str = "en",
                    targets: Targets = Targets(), official: list[Path] = (), concurrency: int = 4,
                    max_reasks: int = 2, max_tokens: int = MAX_TOKENS, temperature: float = 0.9,
                    dry_run: bool = False) -> dict:
    """Synthesize into `output` (resumable); `client=None` only with `dry_run`. Returns the counts."""
    output = Path(output)
    inputs = {"--seeds": None if seeds == "builtin" else seeds,
              **{"--official" + (f" #{i + 1}" if i else ""): path for i, path in enumerate(official)}}
    refuse_overwrite({"--output": output}, inputs)
    refuse_overwrite({"--output's rejects": rejects_path(output)}, inputs)  # said once when --output is wrong
    jobs = plan_jobs(read_seeds(seeds), n)
    run = ResumableOutput(output, _synth_source(client, language, targets))
    previous = _previous_run(output, run.rejects, None if dry_run else run.provenance)  # refuses a foreign file
    if not dry_run and drop_repeated_ids(output, lambda row: True):  # two runs appended: keep each id's first
        previous = _previous_run(output, run.rejects, run.provenance)
    if not dry_run:  # only then cut a line torn by a killed run, before appending
        run.repair()
    todo = [j for j in jobs if j.key not in previous.finished]
    official_records = official_index(official)
    print(f"{len(jobs)} reports planned from {len({j.seed.key for j in jobs})} seeds; "
          f"{len(jobs) - len(todo)} finished earlier; {len(todo)} to request")
    print("\n".join(_cost_lines(cost_per_thousand(todo or jobs, targets, language, max_reasks), max_reasks,
                                len(todo))))
    if dry_run:
        if official_records[1]:
            print("official reports (" + ", ".join(map(str, official)) + "):\n"
                  + shape_table({"official": official_records[1]}))
        print("dry run: nothing was sent")
        return {"planned": len(jobs), "todo": len(todo)}
    if not official:
        print(f"warning: no official inputs to check against ({DEFAULT_OFFICIAL} is absent; pass --official): "
              "reports that copy the test set are not caught", file=sys.stderr)
    synthetic = OverlapIndex(min_shared=None, min_ratio=DUPLICATE_MIN_RATIO)
    for r in previous.records:
        synthetic.add(r.id, Signature.of(record_text(r)))
    gates = _Gates(run, official_records[0], synthetic)
    ids = _assign_ids(todo, previous)

    def work(job: Job) -> Outcome:
        return synthesize_one(client, job, ids[job.key], targets, language, max_reasks, max_tokens, temperature)

    try:
        run_pool_with_bar(todo, work, gates.record, concurrency, "synthesizing")
    except EndpointError as e:
        raise EndpointError(f"{e}; {run.accepted} reports were kept before it failed. Rerun the same command to "
                            "resume.", e.status) from None
    finally:
        in_rejects = run.finish()
    return {"kept": run.accepted, "skipped_done": len(previous.finished), "rejected": run.rejected,
            "official_overlap": run.counts.get("official", 0), "duplicates": run.counts.get("duplicate", 0),
            "rejects_file_entries": in_rejects}


def report_shapes(output: Path, official: list[Path]) -> Path | None:
    """Print the length and section-count table of `output` beside the official inputs; write the PNG."""
    groups = {"official": [r for p in official for r in read_records(p)],
              "synthetic": read_records(output) if output.is_file() else []}
    if not groups["synthetic"]:
        return None
    print(shape_table(groups))
    return atomic_write_bytes(output.with_suffix(".shape.png"), shape_histogram_png(groups))


@option_group("teacher")
def synthesize_reports(seeds: str = "builtin", n: int = 100, output: str = "data/synthetic/synthetic_reports.jsonl",
                       teacher: EndpointOptions = EndpointOptions(), language: Literal["en", "zh"] = "en",
                       official: str | None = None, sessions: int = Targets.sessions,
                       case_words: int = Targets.case_words, process_words: int = Targets.process_words,
                       reflection_words: int = Targets.reflection_words, length_tolerance: float = Targets.tolerance,
                       max_reasks: int = 2, temperature: float = 0.9, dry_run: bool = False) -> None:
    """Write synthetic case reports in the ES input schema with a teacher model (resumable).

    Args:
        seeds: `builtin` (presenting problems x client profiles), a PsyQA JSON array (.json), JSONL of
            strings or {"seed": ...} (.jsonl), or a text file with one topic per line.
        n: reports to request: every seed once, then every seed again (a different client), until n.
        output: synthetic ES records (JSONL), appended as they arrive; a rerun skips finished reports.
        language: language of the reports: en or zh.
        official: ES inputs a report must not share long passages with, comma-separated (default
            data/longemotion/Emotion_Summary.jsonl when present).
        sessions: target paragraphs of consultation_process (official median 7).
        case_words: target words of case_description (official median 129).
        process_words: target words of consultation_process (official median 1,345).
        reflection_words: target words of experience_and_reflection (official median 904).
        length_tolerance: a section is also accepted within [target / this, target * this] (the official
            5th-95th percentile always is).
        max_reasks: times to re-ask after an unusable reply before rejecting the report.
        temperature: sampling temperature (varied reports need > 0).
        dry_run: print the plan and the cost estimate per 1,000 reports; send nothing.
    """
    problems = [p for name, value, kind, low in (  # the command line checked the types; these are the ranges
        ("sessions", sessions, int, 1), ("case_words", case_words, int, 1), ("process_words", process_words, int, 1),
        ("reflection_words", reflection_words, int, 1), ("length_tolerance", length_tolerance, float, 1.0),
        ("n", n, int, 1), ("max_reasks", max_reasks, int, 0), ("temperature", temperature, float, 0.0))
        if (p := number_problem(name, value, kind, low))]
    if not dry_run and not (str(teacher.endpoint).strip() and str(teacher.model).strip()):
        problems.append("--endpoint and --model are required (or pass --dry_run for the cost estimate)")
    if problems:
        raise UserError("; ".join(problems))
    targets = Targets(int(sessions), int(case_words), int(process_words), int(reflection_words),
                      float(length_tolerance))
    client = None if dry_run else ChatClient.from_options(teacher)
    official_paths = _official_paths(official)
    with hold_outputs([output, rejects_path(output)]):  # one run appends to these at a time
        counts = synthesize_file(str(seeds), int(n), output, client, language, targets, official_paths,
                                 teacher.concurrency, int(max_reasks), teacher.max_tokens or MAX_TOKENS,
                                 float(temperature), dry_run)
    if dry_run:
        return
    print(f"kept {counts['kept']}, skipped {counts['skipped_done']} finished earlier, rejected {counts['rejected']} "
          f"unusable, dropped {counts['official_overlap']} sharing passages with the official inputs and "
          f"{counts['duplicates']} near-duplicates" + (f" (see {rejects_path(output)})" if counts["rejects_file_entries"] else ""))
    png = report_shapes(Path(output), official_paths)
    if png:
        print(f"wrote {png}")
    if counts["kept"] == 0 and counts["skipped_done"] == 0:
        raise NotReady(f"no report was kept; see {rejects_path(output)}")
