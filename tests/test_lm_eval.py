"""Scoring a served model with the benchmark's own lm-eval task (`longemotion_report_summary`).

The data converter always runs. The lm-eval run needs lm-eval (with its `api` extra), the `openai`
package (the task's judge uses it) and a checkout of github.com/LongEmotion/LongEmotion named by
$LONGEMOTION_DIR (its task files are not ours to ship); it runs against a loopback fake endpoint that
plays both the served model and the judge."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_summary.data.lm_eval_data import lm_eval_data
from emotion_summary.data.records import GOLD_FIELDS, read_records

from tests.chat_server import FakeChatServer

TASK = "longemotion_report_summary"


def test_records_are_flattened_for_the_task_with_their_gold(tmp_path, gold_file):
    out = tmp_path / "LongEmotion" / "data" / "Emotion_Summary.jsonl"
    lm_eval_data(str(gold_file), str(out))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    first = read_records(gold_file)[0]
    assert rows[0]["case_description"] == "\n".join(first.case_description)
    assert all(isinstance(v, (int, str)) for row in rows for v in row.values())  # the task declares strings
    assert {f: rows[0][f] for f in GOLD_FIELDS} == first.gold()


def test_inputs_without_gold_are_refused(tmp_path, fixtures):
    from emotion_summary.core.errors import UserError

    with pytest.raises(UserError, match="causes"):
        lm_eval_data(str(fixtures / "es_tiny.jsonl"), str(tmp_path / "o.jsonl"))


def judge_or_model(messages):
    text = messages[-1]["content"]
    if "Ground Truth" in text:  # the benchmark's judge prompt
        scores = {f: {"factual_consistency": 4, "completeness": 3, "clarity": 5, "comment": "ok"} for f in GOLD_FIELDS}
        return "```json\n" + json.dumps(scores) + "\n```"
    return "```json\n" + json.dumps({f: f"the {f}" for f in GOLD_FIELDS}) + "\n```"


def longemotion_checkout() -> Path:
    missing = [m for m in ("lm_eval", "tenacity", "openai") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install 'lm-eval[api]' openai)")
    where = os.environ.get("LONGEMOTION_DIR")
    if not where or not (Path(where) / "tasks" / "longemotion" / "report_summary.yaml").is_file():
        pytest.skip("set LONGEMOTION_DIR to a checkout of github.com/LongEmotion/LongEmotion")
    return Path(where)


def test_the_benchmarks_lm_eval_task_scores_a_served_model(tmp_path, gold_file):
    checkout = longemotion_checkout()
    work = tmp_path / "LongEmotion"
    for part in ("tasks", "prompts"):
        shutil.copytree(checkout / part, work / part)
    lm_eval_data(str(gold_file), str(work / "data" / "Emotion_Summary.jsonl"))
    lm_eval = Path(sys.executable).with_name("lm_eval")
    with FakeChatServer(judge_or_model) as server:
        env = {**os.environ, "OPENAI_API_KEY": "local", "OPENAI_BASE_URL": server.endpoint, "EVALUATOR_MODEL": "judge",
               "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [str(lm_eval), "--model", "local-chat-completions", "--model_args",
             f"model=es-model,base_url={server.endpoint}/chat/completions,num_concurrent=1,tokenized_requests=False",
             "--tasks", TASK, "--include_path", "./tasks", "--apply_chat_template", "--output_path", "out"],
            cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        generations = [r for r in server.requests if r["model"] == "es-model"]
        judged = [r for r in server.requests if r["model"] == "judge"]
    assert len(generations) == len(judged) == 3
    assert {(r.get("temperature"), r.get("top_p")) for r in generations} == {(0.8, 0.9)}  # the task's sampling
    assert {r["temperature"] for r in judged} == {0}
    assert "Could not parse generations" not in proc.stderr
    results = json.loads(next((work / "out").rglob("results_*.json")).read_text())
    assert results["results"][TASK]["score,json_extract"] == pytest.approx((4 + 3 + 5) / 3)
