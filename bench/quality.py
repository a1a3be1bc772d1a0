"""Does fine-tuning help? Held-out quality of the real small model (SmolLM2-135M-Instruct) on one fold
of a labelled ES file, against its own zero-shot replies and two extractive floors.

The labelled dev file is the leaderboard's test set, so the model trains on the other folds only and
predicts the held-out fold (the leakage guard checks the run before anything is predicted). Systems:
  lead              every field = the report's first sentences
  extractive        the project's keyword-scored extractive baseline (the inference fallback)
  zero-shot         the base model with the project's prompt
  zero-shot-prefix  the same, with the answer's JSON opening written into the prompt (answer_prefix)
  fine-tuned@N      the LoRA run after N optimizer steps (one row per --curve step)
Per system: ROUGE-1/2/L F1 per field and mean, replies parsed as JSON, share of fields from the model
(the rest are the extractive fallback), distinct fields per report, held-out answer loss, seconds.

  python bench/quality.py --data ../shared/data/longemotion/Emotion_Summary_origin_dev.jsonl \\
      --folds 5 --fold 0 --heldout 8 --max_seq_len 1024 --steps 16 --curve 8,16
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

from _common import append_rows, host_info, markdown_table

from emotion_summary.core.cli import comma_list, run
from emotion_summary.core.errors import UserError

SYSTEMS = ("lead", "extractive", "zero-shot", "zero-shot-prefix", "fine-tuned")
LEAD_SENTENCES = 3


def lead_fields(record) -> dict[str, str]:
    """The lead baseline: every field is the report's first sentences."""
    from emotion_summary.predicting.extractive import report_sentences
    from emotion_summary.data.records import GOLD_FIELDS

    lead = " ".join(s.text for s in report_sentences(record)[:LEAD_SENTENCES])
    return dict.fromkeys(GOLD_FIELDS, lead)


def distinct_share(fields: dict[str, str]) -> float:
    """Distinct non-empty field texts over the five fields (1.0: no field repeats another)."""
    texts = [t.strip() for t in fields.values()]
    return len({t for t in texts if t}) / len(texts)


def score(system: str, held, fields: dict[int, dict], seconds: float, raws: dict[int, str] | None = None,
          assembled=None, **extra) -> dict:
    from emotion_summary.scoring.metrics import mean, rouge_report

    report = rouge_report(fields, {r.id: r.gold() for r in held}, progress=False)
    row = {"system": system, "rouge_mean": report["mean"], "rouge_per_field": report["per_field"],
           "distinct_fields": round(mean(distinct_share(f) for f in fields.values()), 3),
           "seconds": round(seconds, 1), **extra}
    if assembled is not None:
        n = len(held)
        row["json_parsed"] = f"{n - len(assembled.not_json)}/{n}"
        row["json_rate"] = (n - len(assembled.not_json)) / n
        row["fields_from_model"] = assembled.fields_from_model / (5 * n)
    return row


def model_rows(name: str, wrapper, held, max_new_tokens: int, raw_dir: Path, **extra) -> dict:
    """Generate for the held-out reports, keep the raw replies, parse and score them."""
    from emotion_summary.predicting.predict import assemble

    started = time.monotonic()
    from emotion_summary.prompting.encode import fit_report

    prompts = [fit_report(wrapper.tokenizer, wrapper.prompt, r, wrapper.config.max_seq_len, max_new_tokens)
               for r in held]  # as inference fits them
    replies = wrapper.generate(prompts, max_new_tokens=max_new_tokens)
    seconds = time.monotonic() - started
    raws = {r.id: text for r, text in zip(held, replies)}
    append_rows(raw_dir / f"{name}.raw.jsonl", [{"id": i, "raw": t} for i, t in raws.items()])
    result = assemble(held, raws)
    dtype = str(next(wrapper.model.parameters()).dtype).removeprefix("torch.")
    return score(name, held, result.fields, seconds, assembled=result, compute_dtype=dtype, **extra)


def zero_shot(model: str, held, max_seq_len: int, max_new_tokens: int, raw_dir: Path, prefix: bool,
              repetition_penalty: float) -> dict:
    from emotion_summary.modeling.gguf_models import resolve_base_model
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
    from emotion_summary.prompting.prompt import JSON_ANSWER_PREFIX

    wrapper = Qwen2EmotionSummaryModel.load(resolve_base_model(model))
    wrapper.config = replace(wrapper.config, max_seq_len=max_seq_len, repetition_penalty=repetition_penalty)
    wrapper.prompt = replace(wrapper.prompt, answer_prefix=JSON_ANSWER_PREFIX if prefix else "")
    name = ("zero-shot-prefix" if prefix else "zero-shot") + (f"-rp{repetition_penalty:g}" if repetition_penalty != 1 else "")
    return model_rows(name, wrapper, held, max_new_tokens, raw_dir,
                      repetition_penalty=repetition_penalty)


def fine_tuned(model: str, train_file: Path, held_file: Path, held, work: Path, steps: int, curve: list[int],
               max_seq_len: int, max_new_tokens: int, learning_rate: float, answer_prefix: str,
               repetition_penalty: float, compute_dtype: str = "auto") -> list[dict]:
    """Train on the training folds (validation loss on the held-out reports), then predict the held-out
    reports with the checkpoint of each curve step. A finished run in `work` is reused (no training)."""
    from math import gcd

    from emotion_summary.data.folds import guard_leakage
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
    from emotion_summary.training.command import prepare_run

    every = 0
    for step in curve:
        every = gcd(every, step)
    run_dir = work / "run"
    summary = work / "training.json"
    if not summary.is_file():
        trainer = prepare_run(preset="cpu", model_name_or_path=model, train_data=[str(train_file)],
                              eval_data=[str(held_file)], folds=0, max_steps=steps, max_seq_len=max_seq_len,
                              max_new_tokens=max_new_tokens, learning_rate=learning_rate, save_every=every,
                              eval_every=every, answer_prefix=answer_prefix, output_dir=str(run_dir),
                              compute_dtype=compute_dtype)
        loss_before = trainer.validation_loss()  # LoRA starts as the identity: the base model's loss
        started = time.monotonic()
        trainer.run()
        summary.write_text(json.dumps({"loss_before": loss_before, "train_seconds": time.monotonic() - started}))
    trained = json.loads(summary.read_text())
    loss_before, train_seconds = trained["loss_before"], trained["train_seconds"]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    val = {row["step"]: row["val_loss"] for row in log if "val_loss" in row}
    rows = []
    for step in curve:
        path = run_dir if step == steps else run_dir / "checkpoints" / f"step-{step}"
        if not path.is_dir():
            print(f"no checkpoint for step {step} (only the last two are kept); skipped")
            continue
        guard_leakage(held, path)  # never predict a report the run trained on
        wrapper = Qwen2EmotionSummaryModel.load(path)
        wrapper.config = replace(wrapper.config, repetition_penalty=repetition_penalty)
        name = f"fine-tuned@{step}" + (f"-rp{repetition_penalty:g}" if repetition_penalty != 1 else "")
        rows.append(model_rows(name, wrapper, held, max_new_tokens, work,
                               steps=step, answer_prefix=answer_prefix, repetition_penalty=repetition_penalty, train_seconds=round(train_seconds, 1),
                               answer_loss_before=round(loss_before, 4), answer_loss_after=round(val.get(step, float("nan")), 4),
                               train_loss_last=round(next(r["loss"] for r in log if r["step"] == step), 4)))
    return rows


def quality(
    data: str,
    folds: int = 5,
    fold: int = 0,
    heldout: int = 8,
    model: str = "smollm2-135m",
    max_seq_len: int = 1024,
    max_new_tokens: int = 320,
    steps: int = 16,
    curve: str = "8,16",
    learning_rate: float = 1e-3,
    answer_prefix: str = "json",
    repetition_penalty: float = 1.0,
    compute_dtype: str = "auto",
    systems: str = ",".join(SYSTEMS),
    work_dir: str = "bench/results/quality-work",
    out: str = "bench/results/quality.jsonl",
) -> None:
    """Held-out ROUGE, JSON rate and answer loss of the real small model, zero-shot and fine-tuned.

    Args:
        data: labelled ES file (all five gold fields), e.g. Emotion_Summary_origin_dev.jsonl.
        folds: folds of `data` (by id, as scripts/write_fold.py splits them).
        fold: the held-out fold; the model trains on the others.
        heldout: predict the first this many reports of the held-out fold (0: all of it).
        model: base model: smollm2-135m or a .gguf file or an HF directory.
        max_seq_len: tokens per example in training and generation (reports are trimmed in the middle).
        max_new_tokens: generation budget per report.
        steps: optimizer steps of the fine-tuning run (batch 1).
        curve: comma-separated steps at which the held-out reports are predicted (the last one = steps).
        learning_rate: peak learning rate.
        answer_prefix: none or json: the fine-tuned run's --answer_prefix.
        repetition_penalty: generation's penalty on the reply's own tokens (1: off), every model row.
        compute_dtype: the fine-tuned run's --compute_dtype (auto: bf16 on CPUs with AVX512-BF16 or AMX).
        systems: comma-separated subset of lead, extractive, zero-shot, zero-shot-prefix, fine-tuned.
        work_dir: run directory, fold files and raw replies; a finished run there is reused (same
            settings), so other decoding settings can be scored without training again.
        out: append one JSON line per system here.
    """
    from emotion_summary.predicting.extractive import extract_fields
    from emotion_summary.data.folds import split_folds
    from emotion_summary.data.records import read_records, write_records

    chosen, points = comma_list(systems, "systems"), comma_list(curve, "curve", int)
    if unknown := [s for s in chosen if s not in SYSTEMS]:
        raise UserError(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if not points or points[-1] != steps or points != sorted(points):
        raise UserError(f"--curve: ascending steps ending with --steps {steps}, got {curve}")
    train, held = split_folds(read_records(data, require_gold=True), folds, fold)
    held = held[:heldout] if heldout else held
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_file, held_file = write_records(work / "train_folds.jsonl", train), write_records(work / "heldout.jsonl", held)
    common = {"bench": "quality", "data": data, "folds": folds, "fold": fold, "n_train": len(train),
              "n_heldout": len(held), "heldout_ids": [r.id for r in held], "model": model,
              "max_seq_len": max_seq_len, "max_new_tokens": max_new_tokens, "learning_rate": learning_rate,
              "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
              "decoding": "greedy; stops once all five fields have a closed value", **host_info()}
    rows = []

    def emit(row: dict) -> None:
        rows.append({**common, **row})
        append_rows(out, rows[-1:])
        print(f"{row['system']}: mean ROUGE-1 F1 {row['rouge_mean']['rouge-1']:.4f}, "
              f"JSON {row.get('json_parsed', '-')}, {row['seconds']} s", flush=True)

    if "lead" in chosen:
        started = time.monotonic()
        emit(score("lead", held, {r.id: lead_fields(r) for r in held}, time.monotonic() - started))
    if "extractive" in chosen:
        started = time.monotonic()
        emit(score("extractive", held, {r.id: extract_fields(r) for r in held}, time.monotonic() - started))
    for prefix, name in ((False, "zero-shot"), (True, "zero-shot-prefix")):
        if name in chosen:
            emit(zero_shot(model, held, max_seq_len, max_new_tokens, work, prefix, repetition_penalty))
    if "fine-tuned" in chosen:
        for row in fine_tuned(model, train_file, held_file, held, work, steps, points, max_seq_len,
                              max_new_tokens, learning_rate, answer_prefix, repetition_penalty, compute_dtype):
            emit(row)
    print(report(rows))


def report(rows: list[dict]) -> str:
    from emotion_summary.data.records import GOLD_FIELDS

    header = ["system", "R-1", "R-2", "R-L", *[f"R-1 {f}" for f in GOLD_FIELDS], "JSON parsed", "fields from model",
              "distinct fields", "answer loss before -> after", "seconds"]
    table = []
    for r in rows:
        loss = (f"{r['answer_loss_before']:.3f} -> {r['answer_loss_after']:.3f}" if "answer_loss_before" in r else "-")
        share = f"{r['fields_from_model']:.0%}" if "fields_from_model" in r else "-"
        table.append([r["system"], *(f"{r['rouge_mean'][m]:.4f}" for m in ("rouge-1", "rouge-2", "rouge-l")),
                      *(f"{r['rouge_per_field'][f]['rouge-1']:.3f}" for f in GOLD_FIELDS),
                      r.get("json_parsed", "-"), share, r["distinct_fields"], loss,
                      r["seconds"] if "train_seconds" not in r else f"{r['seconds']} (+{r['train_seconds']} training)"])
    return markdown_table(header, table)


if __name__ == "__main__":
    run(quality)
