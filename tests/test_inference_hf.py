"""The hf backend end to end with the real model wrapper on a tiny random Qwen2 adapter (CPU)."""

import pytest

from emotion_summary.core.atomic_io import read_jsonl_tolerant
from emotion_summary.predicting.predict import infer
from emotion_summary.prompting.replies import side_file_for
from emotion_summary.predicting.submission import check_submission

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    from emotion_summary.training.config import resolve_config
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel

    return Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke")).save(
        tmp_path_factory.mktemp("tiny-adapter"))


def test_hf_backend_writes_a_valid_submission_and_resumes_without_loading(tmp_path, fixtures, tiny_adapter,
                                                                         monkeypatch, capsys):
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel

    inputs = fixtures / "es_eval_gold.jsonl"
    out = tmp_path / "Emotion_Summary_Result.jsonl"
    infer(input=str(inputs), output=str(out), model_path=str(tiny_adapter), backend="hf", batch_size=2,
          max_new_tokens=8)
    assert check_submission(out, inputs).ok
    rows = read_jsonl_tolerant(side_file_for(out))
    assert sorted(r["id"] for r in rows) == [11, 12, 13] and {r["backend"] for r in rows} == {"hf"}
    # A random model writes no JSON: every field comes from the baseline, and the run says so.
    assert "15 fields in 3 reports were missing" in capsys.readouterr().out

    loads = []
    monkeypatch.setattr(Qwen2EmotionSummaryModel, "load", classmethod(lambda cls, *args: loads.append(args)))
    out.unlink()
    infer(input=str(inputs), output=str(out), model_path=str(tiny_adapter), backend="hf", max_new_tokens=8)
    assert loads == [] and check_submission(out, inputs).ok


def test_a_folder_without_a_model_is_a_user_error(tmp_path, fixtures):
    from emotion_summary.core.errors import UserError
    from emotion_summary.prompting.prompt import PromptSpec

    PromptSpec().save(tmp_path)
    with pytest.raises(UserError, match="neither a LoRA adapter"):
        infer(input=str(fixtures / "es_eval_gold.jsonl"), output=str(tmp_path / "o.jsonl"), model_path=str(tmp_path),
              backend="hf")


@pytest.mark.shared
def test_smoke_model_submission_on_the_150_official_inputs_passes_the_checker(tmp_path, shared_data, tiny_adapter):
    inputs = shared_data / "longemotion" / "Emotion_Summary.jsonl"
    out = tmp_path / "Emotion_Summary_Result.jsonl"
    infer(input=str(inputs), output=str(out), model_path=str(tiny_adapter), backend="hf", batch_size=16,
          max_new_tokens=4)
    report = check_submission(out, inputs)
    assert report.ok and report.n_rows == 150, report.render()


def test_openai_backend_trims_prompts_as_the_checkpoint_was_trained(tmp_path, tiny_adapter):
    """With --model_path, the served model gets the prompt the hf backend would build: trimmed to the
    checkpoint's max_seq_len with its tokenizer (cpu-smoke: 1,024 tokens)."""
    import json

    from emotion_summary.data.records import write_records, record_from_dict
    from tests.chat_server import FakeChatServer

    long = record_from_dict({"id": 1, "case_description": ["A client."],
                             "consultation_process": ["The client talked about work. " * 400],
                             "experience_and_reflection": "Reflection."})
    inputs = write_records(tmp_path / "in.jsonl", [long])
    with FakeChatServer(lambda messages: json.dumps({"causes": "x"})) as server:
        infer(input=str(inputs), output=str(tmp_path / "out.jsonl"), model_path=str(tiny_adapter),
              backend="openai", endpoint=server.endpoint, model="served", max_new_tokens=64)
    user = server.requests[0]["messages"][1]["content"]
    assert "tokens trimmed" in user and len(user) < 6000


def test_trimmed_reports_are_one_line_with_the_count_and_the_detail_in_the_raw_replies(tmp_path, tiny_adapter,
                                                                                        capsys):
    from emotion_summary.data.records import record_from_dict, write_records

    long = [record_from_dict({"id": i, "case_description": [f"Client {i}."],
                              "consultation_process": [f"The client talked about work, week {i}. " * (150 + 50 * i)],
                              "experience_and_reflection": "Reflection."}) for i in range(1, 6)]
    inputs = write_records(tmp_path / "in.jsonl", [*long, record_from_dict(
        {"id": 9, "case_description": ["Short."], "consultation_process": ["Short."], "experience_and_reflection": "."})])
    out = tmp_path / "out.jsonl"
    infer(input=str(inputs), output=str(out), model_path=str(tiny_adapter), backend="hf", batch_size=6,
          max_new_tokens=4)
    printed = capsys.readouterr()
    trimmed = {r["id"]: r.get("trimmed_tokens", 0) for r in read_jsonl_tolerant(side_file_for(out))}
    assert sorted(rid for rid, n in trimmed.items() if n) == [1, 2, 3, 4, 5] and trimmed[9] == 0
    said = [line for line in (printed.out + printed.err).splitlines() if "trimmed" in line.replace(str(tmp_path), "")]
    assert said == [f"trimmed 5 of 6 reports in the middle to fit max_seq_len=1024 beside max_new_tokens=4 (up to "
                    f"{max(trimmed.values()):,} tokens from one report); tokens trimmed per report: "
                    f"\"trimmed_tokens\" in {side_file_for(out)}"]


def test_hf_backend_runs_a_plain_base_model_with_the_default_prompt(tmp_path, fixtures, tiny_adapter, capsys):
    """Base vs fine-tuned is one command each on the same inputs: the plain model directory (no
    prompt.json, no train_config.json) is asked with the project's default prompt."""
    from emotion_summary.modeling.architectures import build_tiny_qwen2
    from emotion_summary.prompting.prompt import PromptSpec

    base = build_tiny_qwen2()
    assert not (base / "prompt.json").exists()
    inputs = fixtures / "es_eval_gold.jsonl"
    for name, model_path in [("base", base), ("adapter", tiny_adapter)]:
        out = tmp_path / name / "Emotion_Summary_Result.jsonl"
        infer(input=str(inputs), output=str(out), model_path=str(model_path), backend="hf", max_new_tokens=4)
        assert check_submission(out, inputs).ok
        if name == "base":  # a plain model was trained on none of our reports: no leakage warning
            assert "no data_fingerprints.json" not in capsys.readouterr().err
    assert PromptSpec.load(tiny_adapter) == PromptSpec()  # the same prompt on both sides
