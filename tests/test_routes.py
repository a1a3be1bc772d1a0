"""The README's route 1 (zero-shot through --backend openai) runs as written, against a fake
OpenAI-compatible server on 127.0.0.1: the project's prompt goes out, a checked submission and
scores come back."""

import json
import re
import shutil
import subprocess
from pathlib import Path

from emotion_summary.prompt import PromptSpec, build_prompt
from emotion_summary.records import read_records
from emotion_summary.submission import check_submission
from tests.chat_server import FakeChatServer
from tests.user_shell import python_wrapper_dir, user_env

ROOT = Path(__file__).resolve().parents[1]
README_ENDPOINT = "http://127.0.0.1:8000/v1"


def readme_block(heading: str) -> str:
    """The first ```bash block after `heading` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(heading + "\n")
    match = re.compile(r"```bash\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def summary_reply(messages: list[dict]) -> str:
    chinese = re.search(r"[\u4e00-\u9fff]{20}", messages[-1]["content"])
    text = "压力和失眠。" if chinese else "Stress at work and poor sleep."
    return json.dumps({f: text for f in ("causes", "symptoms", "treatment_process",
                                         "characteristics_of_illness", "treatment_effect")},
                      ensure_ascii=False)


def user_checkout(tmp_path: Path, fixtures: Path) -> Path:
    """A folder laid out like a clone after download_data.py: scripts, eval and data/longemotion."""
    home = tmp_path / "clone"
    (home / "eval").mkdir(parents=True)
    (home / "scripts").symlink_to(ROOT / "scripts")
    (home / "eval" / "evaluate.py").symlink_to(ROOT / "eval" / "evaluate.py")  # results stay in tmp
    data = home / "data" / "longemotion"
    data.mkdir(parents=True)
    shutil.copy(fixtures / "es_tiny.jsonl", data / "Emotion_Summary.jsonl")
    shutil.copy(fixtures / "es_eval_gold.jsonl", data / "Emotion_Summary_example.jsonl")
    python_wrapper_dir(tmp_path / "bin")  # the README says `python`
    return home


def test_zero_shot_route_runs_as_written_against_a_loopback_server(tmp_path, fixtures):
    block = readme_block("### Route 1: zero-shot (no training)")
    assert block.count(README_ENDPOINT) == 2 and "--backend openai" in block
    commands = [line for line in block.splitlines() if not line.startswith("#")]
    zh = [line for line in readme_block("#### 路线 1：零样本（不训练）").splitlines() if not line.startswith("#")]
    assert zh == commands  # both languages give the same commands
    home = user_checkout(tmp_path, fixtures)
    env = user_env(tmp_path / "bin")
    with FakeChatServer(summary_reply) as server:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace(README_ENDPOINT, server.endpoint)],
                              cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    gold = read_records(home / "data" / "longemotion" / "Emotion_Summary_example.jsonl")
    inputs = read_records(home / "data" / "longemotion" / "Emotion_Summary.jsonl")
    assert len(server.requests) == len(gold) + len(inputs)  # one request per report, no retries
    assert {r["model"] for r in server.requests} == {"Qwen/Qwen2-7B-Instruct"}
    sent = [r["messages"] for r in server.requests]  # in any order: requests run concurrently
    assert all(build_prompt(PromptSpec(), r).messages in sent for r in gold + inputs)  # the project's prompt
    for folder, records in (("zero-shot-gold", gold), ("zero-shot", inputs)):
        report = check_submission(home / "submissions" / folder / "Emotion_Summary_Result.jsonl")
        assert report.ok and sorted(report.rows) == sorted(r.id for r in records)
    scores = json.loads((home / "eval" / "results" / "zero-shot-gold.json").read_text())
    assert scores["n_reports"] == len(gold) and 0 < scores["systems"][0]["rouge"]["mean"]["rouge-1"] < 1
    page = (home / "eval" / "results" / "zero-shot-gold.html").read_text(encoding="utf-8")
    assert all(f'data-id="{r.id}"' in page for r in gold)
