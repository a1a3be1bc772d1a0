"""Tracebacks and traps: an unreadable --config, ROUGE on hostile text, a broken BERTScore folder,
plan_memory's ranges, install_torch's table reading, a bad model or LoRA target before the run dir."""

from __future__ import annotations

import json
import os
import re

import pytest

from emotion_summary.scoring import metrics
from emotion_summary.core.cli import Option, Usage, parse_command_line


# ---------------------------------------------------------------- --config that cannot be read


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_a_config_without_read_permission_is_one_problem(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("n: 2\n")
    config.chmod(0)
    with pytest.raises(Usage) as e:
        parse_command_line([Option("n", int, 1)], ["--config", str(config)], config_file=True)
    assert e.value.problems == [f"--config: {config}: cannot be read (Permission denied)"]


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs /proc")
def test_a_config_that_is_an_unreadable_device_is_one_problem():
    with pytest.raises(Usage) as e:
        parse_command_line([Option("n", int, 1)], ["--config", "/proc/self/mem"], config_file=True)
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith("--config: /proc/self/mem: cannot be read")


# ---------------------------------------------------------------- ROUGE caps the text before jieba


@pytest.mark.parametrize("text", ["焦" * 80_000, "a" * 2_000_000], ids=["repeated-cjk", "latin-without-spaces"])
def test_rouge_caps_the_text_before_jieba_cuts_it(monkeypatch, text):
    """jieba's time grows with the square of an unbroken run: it must never see a long one."""
    import jieba

    seen = []
    cut = jieba.cut
    monkeypatch.setattr(jieba, "cut", lambda s, *a, **k: (seen.append(s), cut(s, *a, **k))[1])
    metrics.tokenize("warm up")
    seen.clear()
    scores = metrics.rouge_scores(text, "焦虑 and anxiety")
    assert set(scores) == set(metrics.ROUGE_METRICS)
    assert seen and max(map(len, seen)) <= metrics.CHARS_PER_TOKEN * metrics.MAX_TOKENS + 200
    assert max(len(run) for s in seen for run in re.findall(r"\w+", s)) <= metrics.WORD_RUN


def test_capping_changes_no_score_of_ordinary_text():
    text = "The client felt anxious about exams; 来访者对考试感到焦虑，晚上睡不着。" * 20
    assert metrics.tokenize(text, None)[: metrics.MAX_TOKENS] == metrics.tokenize(text)


# ---------------------------------------------------------------- BERTScore folder with a broken config


def test_a_broken_bertscore_folder_still_reports_rouge(tmp_path, gold_file):
    from emotion_summary.scoring.evaluate import evaluate
    from emotion_summary.data.records import read_records
    from emotion_summary.predicting.submission import write_submission

    pytest.importorskip("bert_score")
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text("{broken")
    records = read_records(gold_file)
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, {r.id: r.gold() for r in records}, [r.id for r in records])
    evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), name="r",
             bertscore_model=str(model))
    results = json.loads((tmp_path / "res" / "r.json").read_text())
    assert results["systems"][0]["rouge"]["mean"]["rouge-1"] == pytest.approx(1.0)
    assert any("BERTScore skipped" in n and "config.json" in n for n in results["notes"])


# ---------------------------------------------------------------- install_torch reads nvidia-smi safely

SMI = __import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "nvidia_smi"


def test_mig_rows_are_not_gpus():
    from emotion_summary.install_torch import parse_nvidia_smi

    smi = parse_nvidia_smi((SMI / "mig_a100_driver_550_cuda_12.4.txt").read_text())
    assert [(g.name, g.memory_mib) for g in smi.gpus] == [("NVIDIA A100-SXM4-40GB", 40960)]


def test_a_driver_line_without_gpu_rows_is_an_error_not_the_cpu_wheel():
    from emotion_summary.core.errors import UserError
    from emotion_summary.install_torch import choose_wheel, parse_nvidia_smi

    table = (SMI / "driver_580_cuda_13.0.txt").read_text()
    mangled = "\n".join(line for line in table.splitlines() if "A100" not in line)  # a row we cannot read
    smi = parse_nvidia_smi(mangled)
    with pytest.raises(UserError, match="Driver Version 580.95.05 but no GPU row"):
        choose_wheel(smi, "linux", "2.13.0")


@pytest.mark.parametrize("line", ["|   0  " + "x " * 30_000, "9" * 60_000 + "MiB", "|   0  " + "a" * 60_000])
def test_a_huge_line_is_read_in_linear_time(line):
    """Each regex sees at most one table line's worth: the 60,000-character line is cut, never matched whole."""
    from emotion_summary.install_torch import MAX_LINE, parse_nvidia_smi

    table = (SMI / "driver_580_cuda_13.0.txt").read_text().replace("| N/A   31C", line + "\n| N/A   31C", 1)
    assert MAX_LINE <= 1000
    assert [g.name for g in parse_nvidia_smi(table).gpus] == ["NVIDIA A100-SXM4-80GB"]


# ---------------------------------------------------------------- plan_memory checks before simulating


@pytest.mark.parametrize("args, message", [
    (["--layers", "-3"], "--layers: expected an integer >= 1, got -3"),
    (["--lora_dropout", "5"], "--lora_dropout: expected a number in [0, 1), got 5.0"),
    (["--max_new_tokens", "-1", "--generate", "true"], "--max_new_tokens: expected an integer >= 1, got -1"),
    (["--vram_gb", "0"], "--vram_gb: expected a number > 0, got 0.0"),
    (["--seq_lens", "1024,-5"], "--seq_lens: expected lengths >= 1, got -5"),
    (["--batch_size", "1000000"], "more than the card's 12.9 GB, so it cannot fit"),
    (["--batch_size", "1000000", "--find_max", "true"], "256,000,000 tokens in one micro-batch"),
])
def test_plan_memory_refuses_bad_numbers_before_simulating(args, message, capsys):
    from emotion_summary.commands import plan_memory

    with pytest.raises(SystemExit) as stop:
        plan_memory(args)
    assert stop.value.code == 2
    out = capsys.readouterr()
    assert [message in line for line in out.err.splitlines()] == [True] and "simulated" not in out.out


def test_plan_memory_without_a_batch_size_checks_the_presets_own_batch():
    """No --batch_size means the preset's: the size check uses it instead of failing on None."""
    from emotion_summary.gpusim.plan_options import plan_problems

    base = {"preset": "24gb", "arch": "qwen2-7b", "seq_len": None, "batch_size": None, "find_max": False}
    assert plan_problems(base) == []  # 24gb trains 2 x 32,768 tokens on 24 GB
    too_long = plan_problems({**base, "seq_len": 64_000_000})
    assert len(too_long) == 1 and "128,000,000 tokens in one micro-batch" in too_long[0]  # x the preset's batch 2


def test_plan_memory_checks_json_before_simulating(tmp_path, capsys):
    from emotion_summary.commands import plan_memory

    with pytest.raises(SystemExit) as stop:
        plan_memory(["--json", str(tmp_path)])
    assert stop.value.code == 2
    out = capsys.readouterr()
    assert out.err.strip() == f"error: --json {tmp_path}: is a directory; give a file name" and not out.out


# ---------------------------------------------------------------- model and LoRA targets before the run dir


@pytest.mark.parametrize("options, message", [
    ({"lora_target": ["q_proj", "not_a_module"]}, "lora_target: not_a_module is not a linear module of tiny; choose from"),
    ({"model_name_or_path": "./no/such/model"}, "model_name_or_path ./no/such/model: no such directory"),
    ({"model_name_or_path": "bad name!"}, "neither a directory nor a hub name"),
])
def test_a_bad_model_or_lora_target_is_refused_before_the_run_dir_exists(tmp_path, options, message):
    from emotion_summary.core.errors import UserError
    from emotion_summary.training.command import train

    run_dir = tmp_path / "run"
    with pytest.raises(UserError, match=re.escape(message)):
        train(preset="cpu-smoke", output_dir=str(run_dir), max_steps=1, **options)
    assert not run_dir.exists()


def test_a_model_folder_without_config_is_refused(tmp_path):
    from emotion_summary.modeling.model_check import model_problems

    (tmp_path / "m").mkdir()
    assert model_problems(str(tmp_path / "m"), "all-linear") == [
        f"model_name_or_path {tmp_path / 'm'}: no config.json in this directory; give a model directory"]


# ---------------------------------------------------------------- messages that say what is true


def test_nan_infinity_and_numbers_from_a_model_are_no_summary_text():
    from emotion_summary.prompting.prompt import parse_answer
    from emotion_summary.data.records import GOLD_FIELDS

    values = ["NaN", "Infinity", "-Infinity", "5", "true"]
    reply = "{" + ", ".join(f'"{f}": {v}' for f, v in zip(GOLD_FIELDS, values)) + "}"
    parsed = parse_answer(reply)
    assert parsed.missing == list(GOLD_FIELDS) and set(parsed.fields.values()) == {""}


def test_a_directory_given_as_a_file_is_called_a_directory(tmp_path):
    from emotion_summary.core.errors import UserError
    from emotion_summary.data.psyqa import load_psyqa
    from emotion_summary.teacher.synthesize import read_seeds

    with pytest.raises(UserError, match="is a directory"):
        load_psyqa(tmp_path)
    with pytest.raises(UserError, match="is a directory"):
        read_seeds(str(tmp_path))


def test_a_judge_that_never_answered_does_not_claim_a_cache(tmp_path, gold_file):
    from emotion_summary.teacher.client import EndpointError
    from emotion_summary.scoring.evaluate import evaluate
    from emotion_summary.data.records import read_records
    from emotion_summary.predicting.submission import write_submission
    from tests.chat_server import unused_endpoint

    records = read_records(gold_file)
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, {r.id: r.gold() for r in records}, [r.id for r in records])
    with pytest.raises(EndpointError) as e:
        evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False, judge=True,
                 endpoint=unused_endpoint(), model="judge", max_retries=0, timeout_s=5)
    assert "no reply was finished" in str(e.value) and "cached in" not in str(e.value)
    assert not (tmp_path / "res" / "judge_cache.jsonl").exists()
