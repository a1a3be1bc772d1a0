"""Gold ES records in the shape the LongEmotion benchmark's lm-eval task reads.

The benchmark's task (`tasks/longemotion/report_summary.yaml` in github.com/LongEmotion/LongEmotion)
loads `./data/Emotion_Summary.jsonl` with every column declared a string, while the official records
hold `case_description` and `consultation_process` as lists of paragraphs: the `datasets` library then
stops with a cast error. This writes each list as its paragraphs joined by newlines (the text its
prompt template shows the model), one record per line, gold fields included (its judge compares with
them).
"""

from __future__ import annotations

from emotion_summary.core.atomic_io import atomic_write_jsonl
from emotion_summary.core.paths import refuse_overwrite
from emotion_summary.data.records import read_records


def lm_eval_rows(path: str) -> list[dict]:
    rows = []
    for r in read_records(path, require_gold=True):
        rows.append({"id": r.id, "case_description": "\n".join(r.case_description),
                     "consultation_process": "\n".join(r.consultation_process),
                     "experience_and_reflection": r.experience_and_reflection, **r.gold()})
    return rows


def lm_eval_data(input: str, output: str = "LongEmotion/data/Emotion_Summary.jsonl") -> None:
    """Write gold ES records as the LongEmotion benchmark's lm-eval task reads them (lists joined into text).

    Args:
        input: ES records with the five gold fields, e.g. Emotion_Summary_origin_dev.jsonl.
        output: where the task looks for them: data/Emotion_Summary.jsonl inside a LongEmotion checkout.
    """
    refuse_overwrite({"--output": output}, {"--input": input})
    rows = lm_eval_rows(input)
    atomic_write_jsonl(output, rows)
    print(f"wrote {len(rows)} records to {output}")
