import json
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_summary.prompt import PromptSpec
from emotion_summary.records import read_records
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


def test_summary_counts_and_fits(fixtures, tmp_path):
    files = {"tiny": read_records(fixtures / "es_tiny.jsonl"), "gold": read_records(fixtures / "es_tiny_gold.jsonl")}
    rows = measure(CharTokenizer(), files, PromptSpec())
    summary = length_table(rows, PromptSpec())
    assert summary["files"] == {"tiny": 3, "gold": 1}
    assert summary["sources"] == {"longemotion": 4}
    lengths = [r["prompt_tokens"] for r in rows]
    assert summary["groups"]["all"]["prompt_tokens"]["max"] == max(lengths)
    assert summary["groups"]["all"]["with_gold"] == 1 and summary["groups"]["all"]["answer_tokens"]["count"] == 1
    assert rows[3]["answer_tokens"] > len("<|im_end|>")
    smoke = next(p for p in summary["fits_presets"] if p["preset"] == "cpu-smoke")
    limit = 1024 - 96  # cpu-smoke: max_seq_len - max_new_tokens
    assert smoke["fit_inference"] == sum(n <= limit for n in lengths)
    assert summary["fits_windows"]["4096"] == 4  # tiny reports fit everywhere

    paths = write_outputs(summary, tmp_path / "out")
    assert [p.name for p in paths] == ["stats.json", "stats.md", "prompt_tokens_hist.png"]
    assert json.loads(paths[0].read_text(encoding="utf-8"))["sources"] == {"longemotion": 4}
    assert "| 8gb | 8,192 | 512 | 4/4 | 1/1 |" in paths[1].read_text(encoding="utf-8")
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mixed_sources_get_their_own_rows(fixtures):
    from emotion_summary.psyqa import convert_items, load_psyqa
    from emotion_summary.records import record_from_dict

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
    prompt = summary["groups"]["all"]["prompt_tokens"]
    assert prompt["count"] == 150
    assert 2_500 <= prompt["mean"] <= 3_800
    assert prompt["median"] <= prompt["p90"] <= prompt["max"]
    fits = summary["fits_windows"]
    assert fits["4096"] < fits["8192"] <= fits["16384"] == 150
    assert (tmp_path / "prompt_tokens_hist.png").is_file() and (tmp_path / "stats.md").is_file()
