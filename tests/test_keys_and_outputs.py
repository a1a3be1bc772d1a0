"""Submission key sets (the challenge's and the benchmark's), run-named default outputs, the fallback
sidecar, and the benchmark runner's sampling settings as inference options (both backends)."""

import json
import os

import pytest

from emotion_summary.core.errors import UserError
from emotion_summary.scoring.evaluate import evaluate
from emotion_summary.predicting.predict import default_output, infer
from emotion_summary.prompting.prompt import answer_text
from emotion_summary.data.records import GOLD_FIELDS, read_records
from emotion_summary.predicting.submission import (BENCHMARK_KEYS, SUBMISSION_KEYS, check_submission, filled_file_for,
                                       read_predictions)

from tests.chat_server import FakeChatServer


def test_benchmark_keys_are_written_checked_and_read(tmp_path, gold_file, capsys):
    out = tmp_path / "bench" / "Emotion_Summary_Result.jsonl"
    infer(input=str(gold_file), output=str(out), backend="extractive", keys="benchmark")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(rows[0]) == {"id", *BENCHMARK_KEYS.values()}
    assert "predicted_causes" in rows[0] and "predicted_characteristics" in rows[0]
    assert "benchmark keys (predicted_causes," in capsys.readouterr().out
    as_competition = check_submission(out, gold_file)  # the checker's default is the challenge's set
    assert not as_competition.ok and as_competition.key_set == "benchmark"
    assert as_competition.errors == [f"{out}: uses the benchmark keys ({', '.join(BENCHMARK_KEYS.values())}); "
                                     f"--keys competition expects {', '.join(SUBMISSION_KEYS.values())}"]
    assert check_submission(out, gold_file, "benchmark").ok
    assert read_predictions(out)[11]["characteristics_of_illness"]  # evaluate reads either set


def test_the_checker_command_takes_keys(tmp_path, gold_file):
    from emotion_summary.predicting.check import check

    out = tmp_path / "Emotion_Summary_Result.jsonl"
    infer(input=str(gold_file), output=str(out), backend="extractive")
    check(str(out), str(gold_file), keys="competition")
    with pytest.raises(SystemExit) as e:
        check(str(out), str(gold_file), keys="benchmark")
    assert e.value.code == 1


def test_default_outputs_are_named_after_the_run_or_model(tmp_path):
    run = tmp_path / "runs" / "24gb"
    (run / "checkpoints" / "step-40").mkdir(parents=True)
    assert default_output("hf", str(run), None) == default_output("openai", None, "x/24gb")
    assert str(default_output("hf", str(run), None)) == os.path.join("submissions", "24gb", "Emotion_Summary_Result.jsonl")
    assert default_output("hf", str(run / "checkpoints" / "step-40"), None).parent.name == "24gb-step-40"
    assert default_output("openai", None, "Qwen/Qwen2-7B-Instruct").parent.name == "Qwen2-7B-Instruct"
    assert default_output("extractive", str(run), None).parent.name == "extractive"


def test_extractive_run_writes_to_its_own_folder_and_marks_every_field_filled(tmp_path, gold_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    infer(input=str(gold_file), backend="extractive")
    out = tmp_path / "submissions" / "extractive" / "Emotion_Summary_Result.jsonl"
    assert out.is_file()
    filled = json.loads(filled_file_for(out).read_text())
    assert filled["backend"] == "extractive" and filled["filled"]["11"] == list(GOLD_FIELDS)


def reply_missing_effect(messages):
    fields = {f: f"{f} text" for f in GOLD_FIELDS if f != "treatment_effect"}
    return answer_text({**fields, "treatment_effect": ""})


def test_openai_backend_sends_the_runners_sampling_and_records_fallback_fields(tmp_path, gold_file):
    out = tmp_path / "served" / "Emotion_Summary_Result.jsonl"
    with FakeChatServer(reply_missing_effect) as server:
        infer(input=str(gold_file), output=str(out), backend="openai", endpoint=server.endpoint, model="m",
              temperature=0.8, top_p=0.9, max_new_tokens=8192)
        assert {(r["temperature"], r["top_p"], r["max_tokens"]) for r in server.requests} == {(0.8, 0.9, 8192)}
        infer(input=str(gold_file), output=str(tmp_path / "greedy.jsonl"), backend="openai",
              endpoint=server.endpoint, model="m")
        greedy = server.requests[-1]
        assert greedy["temperature"] == 0 and "top_p" not in greedy
    filled = json.loads(filled_file_for(out).read_text())
    assert filled["filled"] == {"11": ["treatment_effect"], "12": ["treatment_effect"], "13": ["treatment_effect"]}


@pytest.mark.parametrize("options,message", [({"temperature": -0.1}, "--temperature"),
                                             ({"top_p": 0.0}, "--top_p"), ({"top_p": 1.5}, "--top_p")])
def test_bad_sampling_options_are_user_errors(tmp_path, gold_file, options, message):
    with pytest.raises(UserError, match=message):
        infer(input=str(gold_file), output=str(tmp_path / "o.jsonl"), backend="extractive", **options)
    assert not (tmp_path / "o.jsonl").exists()


def test_evaluate_names_outputs_after_the_prediction_folder(tmp_path, gold_file):
    out = tmp_path / "my-run" / "Emotion_Summary_Result.jsonl"
    infer(input=str(gold_file), output=str(out), backend="extractive", keys="benchmark")
    evaluate(pred=str(out), gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False)
    assert (tmp_path / "res" / "my-run.html").is_file() and (tmp_path / "res" / "my-run.json").is_file()


@pytest.mark.slow
def test_hf_backend_samples_with_the_runners_settings(tmp_path, gold_file):
    from emotion_summary.training.config import resolve_config
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel

    adapter = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke")).save(tmp_path / "adapter")
    from emotion_summary.prompting.encode import fit_report

    model = Qwen2EmotionSummaryModel.load(adapter)
    records = [fit_report(model.tokenizer, model.prompt, r, model.config.max_seq_len, 12)
               for r in read_records(gold_file)[:1]]
    greedy = [model.generate(records, max_new_tokens=12) for _ in range(2)]
    assert greedy[0] == greedy[1]
    import torch

    sampled = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        sampled.append(model.generate(records, max_new_tokens=12, temperature=0.8, top_p=0.9)[0])
    assert len(set(sampled)) > 1  # a random tiny model samples different tokens from different seeds
    infer(input=str(gold_file), output=str(tmp_path / "s.jsonl"), model_path=str(adapter), backend="hf",
          max_new_tokens=12, temperature=0.8, top_p=0.9, seed=5)
    raw = [json.loads(line) for line in (tmp_path / "s.jsonl.raw.jsonl").read_text().splitlines()]
    assert len(raw) == 3
