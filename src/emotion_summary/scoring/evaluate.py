"""`eval/evaluate.py`: score one submission (or two, side by side) against gold ES records.

Writes <out_dir>/<name>.json (every number, per id too), <name>.md (tables), <name>.png (per-field
bars) and <name>.html (every report's fields beside the gold, worst first; self-contained), each
atomically. Imports no training code; torch only when BERTScore runs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal, Sequence

from emotion_summary.core.atomic_io import atomic_write_files, json_text
from emotion_summary.core.cli import EndpointOptions, check_numbers, option_group
from emotion_summary.core.errors import NotReady, UserError
from emotion_summary.core.output_lock import hold_outputs
from emotion_summary.core.paths import refuse_overwrite
from emotion_summary.core.text_escape import markdown_code, markdown_text
from emotion_summary.data.records import GOLD_FIELDS, Record, read_records
from emotion_summary.data.text import detect_language
from emotion_summary.predicting.submission import SUBMISSION_FILE, read_filled, read_predictions
from emotion_summary.prompting.prompt import report_sections
from emotion_summary.scoring.metrics import (
    MAX_TOKENS,
    ROUGE_METRICS,
    BertScoreUnavailable,
    bertscore_f1,
    mean,
    rouge_report,
)
from emotion_summary.scoring.report_html import per_id_judge, render_html
from emotion_summary.teacher.client import ChatClient, EndpointError

SHORT = {"causes": "causes", "symptoms": "symptoms", "treatment_process": "process",
         "characteristics_of_illness": "characteristics", "treatment_effect": "effect"}
METRIC_TITLES = {"rouge-1": "ROUGE-1 F1", "rouge-2": "ROUGE-2 F1", "rouge-l": "ROUGE-L F1",
                 "bertscore": "BERTScore F1", "judge": "LLM judge (1-5; mean row: ES score)"}


def read_gold(path: str | Path) -> list[Record]:
    """ES records that carry all five gold fields; an inputs-only file is a clear error."""
    return read_records(path, require_gold=True)


def load_predictions(path: str | Path, gold: Sequence[Record]) -> dict[int, dict[str, str]]:
    preds = read_predictions(path)
    missing = [r.id for r in gold if r.id not in preds]
    if missing:
        raise UserError(f"{path}: no prediction for {len(missing)} of the {len(gold)} gold ids: "
                        f"{missing[:30]}{' ...' if len(missing) > 30 else ''}")
    return preds


def run_name(path: str | Path) -> str:
    """What a prediction file is called: its folder for the fixed submission name (runs write
    <run>/Emotion_Summary_Result.jsonl), else its file stem."""
    p = Path(path)
    return p.parent.resolve().name or p.stem if p.name == SUBMISSION_FILE else p.stem


def labels_for(paths: Sequence[str]) -> list[str]:
    """Short distinct names: run names (run_name), or parent/stem when they clash."""
    stems = [run_name(p) for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    longer = [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths]
    return longer if len(set(longer)) == len(longer) else [f"{chr(65 + i)}:{s}" for i, s in enumerate(stems)]


# ---------------------------------------------------------------- BERTScore over systems


def bertscore_systems(systems: list[dict], gold: Sequence[Record], model: str | None,
                      num_layers: int | None) -> None:
    """Add a "bertscore" section to every system; one model load per gold language."""
    by_lang: dict[str, list[Record]] = {}
    for r in gold:
        by_lang.setdefault(detect_language(" ".join(r.gold().values())), []).append(r)
    per_id: list[dict] = [{} for _ in systems]
    used = []
    for lang, recs in by_lang.items():
        pairs = [(i, r.id, f) for i in range(len(systems)) for r in recs for f in GOLD_FIELDS]
        gold_of = {r.id: r for r in recs}
        result = bertscore_f1([systems[i]["_preds"][rid][f] for i, rid, f in pairs],
                              [getattr(gold_of[rid], f) for _, rid, f in pairs], lang, model, num_layers)
        used.append({"lang": lang, "model": result.model, "num_layers": result.num_layers,
                     "rescaled": result.rescaled, "n_reports": len(recs)})
        for (i, rid, f), v in zip(pairs, result.f1):
            per_id[i].setdefault(rid, {})[f] = v
    for system, scores in zip(systems, per_id):
        per_field = {f: mean(scores[r.id][f] for r in gold) for f in GOLD_FIELDS}
        system["bertscore"] = {"per_field": per_field, "mean": mean(per_field.values()),
                               "models": used, "per_id": scores}


# ---------------------------------------------------------------- rendering


def _cell(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def _metric_rows(system: dict, metric: str) -> dict[str, float | None] | None:
    """{field or 'mean': value} for one metric of one system; None when the metric was not run."""
    if metric in ROUGE_METRICS:
        r = system["rouge"]
        return {**{f: r["per_field"][f][metric] for f in GOLD_FIELDS}, "mean": r["mean"][metric]}
    section = system.get(metric)
    if not section or "per_field" not in section:
        return None
    pf = section["per_field"]
    return {**{f: pf[f]["mean"] if isinstance(pf[f], dict) else pf[f] for f in GOLD_FIELDS},
            "mean": section["mean"]}


def _metrics(results: dict) -> list[str]:
    extra = [m for m in ("bertscore", "judge") if all(_metric_rows(s, m) for s in results["systems"])]
    return [*ROUGE_METRICS, *extra]


def render_markdown(results: dict) -> str:
    systems = results["systems"]
    labels = [markdown_text(s["label"]) for s in systems]  # file names and notes: shown, never run
    lines = [f"# ES evaluation: {' vs '.join(labels)}", "",
             f"- gold: {markdown_code(results['gold'])} ({results['n_reports']} reports)"]
    lines += [f"- {label}: {markdown_code(s['pred'])}" for label, s in zip(labels, systems)]
    lines.append(f"- ROUGE: F1 over jieba tokens, lower-cased, punctuation dropped, each text capped at "
                 f"{results['rouge_max_tokens']} tokens")
    lines += [f"- {markdown_text(note)}" for note in results["notes"]]
    for metric in _metrics(results):
        rows = [_metric_rows(s, metric) for s in systems]
        head = ["field", *labels] + (["Δ (2nd − 1st)"] if len(systems) == 2 else [])
        lines += ["", f"## {METRIC_TITLES[metric]}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for key in [*GOLD_FIELDS, "mean"]:
            values = [r[key] for r in rows]
            cells = [_cell(v) for v in values]
            if len(values) == 2:
                cells.append("–" if None in values else f"{values[1] - values[0]:+.4f}")
            name = f"**{key}**" if key == "mean" else key
            lines.append("| " + " | ".join([name, *cells]) + " |")
    for s in systems:
        lines += _judge_lines(s)
    return "\n".join(lines) + "\n"


def _judge_lines(system: dict) -> list[str]:
    """The judge's headline for one system, and for the benchmark's protocol its means per dimension."""
    judge = system.get("judge")
    if not judge or judge.get("mean") is None:
        return []
    if not judge.get("protocol"):
        return ["", f"Source-grounded judge score for {system['label']}: {judge['mean']:.3f} / 5 "
                    f"({judge['n_failed']} of {judge['n_items']} items failed and are left out, judge {judge['model']})"]
    dims = ", ".join(f"{d.replace('_', ' ')} {_cell(v)}" for d, v in judge["per_dimension"].items())
    return ["", f"**ES score (the benchmark's judge protocol) for {system['label']}: {judge['mean']:.3f} / 5** "
                f"= {judge['mean_x20']:.1f} / 100: the mean of 15 scores (5 attributes x 3 dimensions) per report, "
                f"{judge['n_failed']} of {judge['n_items']} reports unreadable and counted 0; judge {judge['model']} "
                f"at temperature {judge['temperature']:g}.",
            f"Per dimension (readable replies): {dims}."]


def render_chart(results: dict) -> bytes:
    from emotion_summary.core.plots import png_bytes, pyplot

    plt = pyplot()
    metrics = _metrics(results)
    systems = results["systems"]
    keys = [*GOLD_FIELDS, "mean"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    width = 0.8 / len(systems)
    for ax, metric in zip(axes[0], metrics):
        top = 0.0
        for i, s in enumerate(systems):
            rows = _metric_rows(s, metric)
            xs = [k + (i - (len(systems) - 1) / 2) * width for k in range(len(keys))]
            values = [rows[k] or 0.0 for k in keys]
            bars = ax.bar(xs, values, width, label=s["label"])
            ax.bar_label(bars, fmt="%.3f", fontsize=6.5, padding=1, rotation=90 if len(systems) > 1 else 0)
            top = max(top, *values)
        ax.set_title(METRIC_TITLES[metric])
        ax.set_xticks(range(len(keys)), [SHORT.get(k, k) for k in keys], rotation=35, ha="right")
        ax.set_ylim(0, (top or 1.0) * 1.25)  # scaled to the data (ROUGE of 0.1-0.3 on a 0-1 axis is unreadable)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=len(systems),
               fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return png_bytes(fig, dpi=110)


def output_name(labels: Sequence[str]) -> str:
    return re.sub(r"[^\w.-]+", "_", "_vs_".join(labels)).strip("_") or "evaluation"


OUTPUT_SUFFIXES = (".json", ".md", ".png", ".html")


def write_outputs(results: dict, out_dir: str | Path, name: str, gold: Sequence[Record] = ()) -> list[Path]:
    out_dir = Path(out_dir)
    public = {**results, "systems": [{k: v for k, v in s.items() if not k.startswith("_")}
                                     for s in results["systems"]]}
    page = render_html(results, {r.id: r.gold() for r in gold}, {r.id: report_sections(r) for r in gold})
    return atomic_write_files({out_dir / f"{name}.json": json_text(public).encode("utf-8"),
                               out_dir / f"{name}.md": render_markdown(results).encode("utf-8"),
                               out_dir / f"{name}.png": render_chart(results),
                               out_dir / f"{name}.html": page.encode("utf-8")})  # all four or none


# ---------------------------------------------------------------- CLI


def _judge_systems(systems, gold, client: ChatClient, cache, concurrency, protocol, reference, temperature):
    """Add a "judge" section to every system: the benchmark's protocol, or the source-grounded one."""
    if protocol == "longemotion":
        from emotion_summary.scoring.official_judge import judge_reports, judge_summary

        for s in systems:
            items = judge_reports(gold, s["_preds"], client, cache, temperature, concurrency, f"judge {s['label']}")
            s["judge"] = judge_summary(items, client.model, temperature)
        return
    from emotion_summary.scoring.judge import judge_predictions, judge_totals

    for s in systems:
        items = judge_predictions(gold, s["_preds"], client, cache, use_reference=reference,
                                  concurrency=concurrency, desc=f"judge {s['label']}")
        s["judge"] = {**judge_totals(items, client.model), "per_id": per_id_judge(items)}


@option_group("judge_server", without=("max_tokens",))  # each judge protocol fixes its reply length
def evaluate(pred: str, gold: str, compare: str | None = None, out_dir: str = "eval/results",
             name: str | None = None, bertscore: bool = True, bertscore_model: str | None = None,
             bertscore_num_layers: int | None = None, judge: bool = False,
             judge_server: EndpointOptions = EndpointOptions(), judge_cache: str | None = None,
             judge_protocol: Literal["longemotion", "source"] = "longemotion", judge_temperature: float = 0.0,
             judge_reference: bool = True) -> None:
    """Score a submission against gold ES records: ROUGE, optional BERTScore and LLM judge.

    Args:
        pred: submission file (Emotion_Summary_Result.jsonl format).
        gold: ES records with the five gold fields (e.g. Emotion_Summary_example.jsonl).
        compare: a second submission, shown side by side with the first.
        out_dir: where <name>.json, <name>.md, <name>.png and <name>.html are written.
        name: base name of the outputs; default: the run's name (the prediction's folder when the file is
            Emotion_Summary_Result.jsonl, else its stem; "A_vs_B" with --compare).
        bertscore: also compute BERTScore F1 (needs bert-score, torch and the model).
        bertscore_model: hub id or local folder; default roberta-large (English), bert-base-chinese (Chinese).
        bertscore_num_layers: layer to use; default bert_score's choice for a known model, else the last.
        judge: also run the LLM judge (needs --endpoint and --model; the leaderboard's is gpt-4o).
        judge_cache: JSONL cache of judge replies; default <out_dir>/judge_cache.jsonl.
        judge_protocol: longemotion (the benchmark's judge: one request per report comparing the five fields
            with the reference summary; ES score = mean of the 15 scores 1-5, an unreadable reply counts 0) or
            source (one request per field, graded against the source report: catches invented facts).
        judge_temperature: sampling temperature of the judge (the benchmark uses 0).
        judge_reference: source protocol: also show the judge the gold field as a guide.
    """
    paths = [str(pred)] + ([str(compare)] if compare is not None else [])
    name = str(name) if name else output_name(labels_for(paths))
    outputs = {f"--out_dir/{name}{ext}": Path(out_dir) / f"{name}{ext}" for ext in OUTPUT_SUFFIXES}
    cache_file = judge_cache or (str(Path(out_dir) / "judge_cache.jsonl") if judge else None)  # appended to
    refuse_overwrite({**outputs, "--judge_cache": cache_file}, {"--pred": pred, "--gold": gold, "--compare": compare}, dirs={"--out_dir": out_dir})
    check_numbers({"bertscore_num_layers": (bertscore_num_layers, int, 0),
                   "judge_temperature": (judge_temperature, float, 0)})
    use_bertscore, use_judge = bertscore, judge
    client = ChatClient.from_options(judge_server.require("--judge")) if use_judge else None
    gold_records = read_gold(gold)
    golds = {r.id: r.gold() for r in gold_records}
    labels = labels_for(paths)
    systems = [{"label": label, "pred": path, "_preds": load_predictions(path, gold_records)}
               for label, path in zip(labels, paths)]
    for s in systems:  # which fields inference took from the extractive fallback, when it said so
        filled = read_filled(s["pred"])
        if filled is not None:
            s["filled"] = {rid: names for rid, names in filled.items() if str(rid).isdigit() and int(rid) in golds}
    results = {"gold": str(gold), "n_reports": len(gold_records), "ids": list(golds),
               "rouge_max_tokens": MAX_TOKENS, "notes": [], "systems": systems}
    for s in systems:
        s["n_ignored_ids"] = len(set(s["_preds"]) - set(golds))
        s["rouge"] = rouge_report(s["_preds"], golds)
    if use_bertscore:
        try:
            bertscore_systems(systems, gold_records, bertscore_model, bertscore_num_layers)
        except BertScoreUnavailable as e:
            results["notes"].append(f"BERTScore skipped: {e}")
            print(f"WARNING: BERTScore skipped: {e}", file=sys.stderr)
    judge_error = None
    if use_judge:
        cache = judge_cache or str(Path(out_dir) / "judge_cache.jsonl")
        try:
            _judge_systems(systems, gold_records, client, cache, judge_server.concurrency, judge_protocol,
                           judge_reference, judge_temperature)
        except EndpointError as e:
            kept = (f"finished replies are cached in {cache}" if Path(cache).is_file() and Path(cache).stat().st_size
                    else "no reply was finished")
            judge_error = EndpointError(f"judge stopped: {e}; {kept}; run the same command again to resume")
            results["notes"].append(str(judge_error))
    with hold_outputs([Path(out_dir) / name]):  # one run writes these four files at a time
        written = write_outputs(results, out_dir, name, gold_records)
    print(render_markdown(results))
    print("wrote " + ", ".join(map(str, written)))
    if judge_error:
        raise judge_error
    _judge_failures(systems)


def _judge_failures(systems: list[dict]) -> None:
    """Say how many judge items failed; an error when no item of a system got a score."""
    from emotion_summary.scoring import judge, official_judge

    for s in systems:
        failure_line = (official_judge if s.get("judge", {}).get("protocol") else judge).failure_line
        if s.get("judge") and failure_line(s["judge"], s["label"]):
            print(f"WARNING: {failure_line(s['judge'], s['label'])}", file=sys.stderr)
    useless = [s["label"] for s in systems if s.get("judge") and s["judge"]["n_failed"] == s["judge"]["n_items"]]
    if useless:
        raise NotReady(f"the judge gave no usable score for {', '.join(useless)}: every item failed (see "
                        "the failures in the .json); check --model and the endpoint")
