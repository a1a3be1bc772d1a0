import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_summary.prompting.prompt import PromptSpec
from emotion_summary.data.records import GOLD_FIELDS, Record, read_records, record_from_dict
from emotion_summary.stats import length_table, measure, percentile, write_outputs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stats.py"


class CharTokenizer:
    """One token per character: makes the expected numbers easy to compute by hand."""

    eos_token_id = 1

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, return_dict):
        assert tokenize and add_generation_prompt and not return_dict
        return [0] * sum(len(m["content"]) for m in messages)

    def encode(self, text, add_special_tokens):
        return [0] * len(text)


def test_percentile_matches_numpy_linear():
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 0.9) == pytest.approx(91.0)
    assert percentile([7], 0.9) == 7


class MarkerTokenizer:
    """A prompt is as many tokens as the report's `tokens=N` says; an answer is 199 tokens (+ <|im_end|>)."""

    eos_token_id = 1

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, return_dict):
        return [0] * int(re.search(r"tokens=(\d+)", messages[-1]["content"]).group(1))

    def encode(self, text, add_special_tokens):
        return [0] * 199


def marked(rid: int, tokens: int, gold: bool) -> Record:
    fields = {f: "gold text" for f in GOLD_FIELDS} if gold else {}
    return record_from_dict({"id": rid, "case_description": [f"tokens={tokens}"], "consultation_process": ["x"],
                             "experience_and_reflection": "y", **fields})


def test_summary_counts_and_fits_worked_out_by_hand(tmp_path):
    records = [marked(1, 900, True), marked(2, 2000, False), marked(3, 3500, False), marked(4, 5000, True)]
    rows = measure(MarkerTokenizer(), {"a.jsonl": records[:3], "b.jsonl": records[3:]}, PromptSpec())
    summary = length_table(rows, PromptSpec())
    assert summary["files"] == {"a.jsonl": 3, "b.jsonl": 1} and summary["sources"] == {"longemotion": 4}
    everything = summary["groups"]["all"]
    # prompts 900, 2000, 3500, 5000: mean 11400/4; median (2000+3500)/2; p90 at rank 0.9*3 = 2.7:
    # 3500 + 0.7 * (5000 - 3500)
    assert everything["prompt_tokens"] == {"count": 4, "mean": 2850.0, "median": 2750.0, "p90": 4550.0,
                                           "min": 900, "max": 5000}
    # two records with gold: answers 199 + 1 = 200 tokens; prompt + answer 1100 and 5200
    assert everything["answer_tokens"] == {"count": 2, "mean": 200.0, "median": 200.0, "p90": 200.0,
                                           "min": 200, "max": 200}
    assert everything["prompt_plus_answer"] == {"count": 2, "mean": 3150.0, "median": 3150.0, "p90": 4790.0,
                                                "min": 1100, "max": 5200}
    # + 512 new tokens: 1412, 2512, 4012, 5512 -> 3 fit 4K, all fit 8K and up
    assert summary["fits_windows"] == {"4096": 3, "8192": 4, "16384": 4, "32768": 4}
    presets = {p["preset"]: p for p in summary["fits_presets"]}
    # cpu-smoke: 1024 tokens, 96 new: only 900 + 96 fits; neither 1100 nor 5200 trains untrimmed
    assert (presets["cpu-smoke"]["fit_inference"], presets["cpu-smoke"]["fit_training"]) == (1, 0)
    assert (presets["8gb"]["fit_inference"], presets["8gb"]["fit_training"]) == (4, 2)

    paths = write_outputs(summary, tmp_path / "out")
    assert [p.name for p in paths] == ["stats.json", "stats.md", "prompt_tokens_hist.png"]
    assert json.loads(paths[0].read_text(encoding="utf-8"))["sources"] == {"longemotion": 4}
    markdown = paths[1].read_text(encoding="utf-8")
    assert "| 8gb | 8,192 | 512 | 4/4 | 2/2 |" in markdown and "| cpu-smoke | 1,024 | 96 | 1/4 | 0/2 |" in markdown
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mixed_sources_get_their_own_rows(fixtures):
    from emotion_summary.data.psyqa import convert_items, load_psyqa
    from emotion_summary.data.records import record_from_dict

    psyqa = [record_from_dict(d) for d in convert_items(load_psyqa(fixtures / "psyqa_tiny.json"))]
    rows = measure(CharTokenizer(), {"a": read_records(fixtures / "es_tiny.jsonl"), "b": psyqa}, PromptSpec())
    summary = length_table(rows, PromptSpec())
    assert set(summary["groups"]) == {"all", "longemotion", "psyqa"}
    assert summary["groups"]["psyqa"]["records"] == 2


def test_bad_input_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--inputs", str(bad), "--out_dir", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "line 1: field 'case_description': is missing" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.shared
def test_official_inputs_token_lengths(shared_data, tmp_path):
    """Real Qwen2 tokenizer (built offline once, ~1 min, then cached) on the 150 official reports."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--inputs",
                           str(shared_data / "longemotion" / "Emotion_Summary.jsonl"), "--out_dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))
    # measured once with this prompt (es-v1) and the offline-built Qwen2 tokenizer (bench/RESULTS.md, "Token
    # lengths of the official inputs"); a change of either shows up here
    assert summary["groups"]["all"]["prompt_tokens"] == {"count": 150, "mean": 3322.9, "median": 3075.0,
                                                         "p90": 4461.1, "min": 1460, "max": 6960}
    assert summary["fits_windows"] == {"4096": 103, "8192": 150, "16384": 150, "32768": 150}
    assert (tmp_path / "prompt_tokens_hist.png").is_file() and (tmp_path / "stats.md").is_file()
