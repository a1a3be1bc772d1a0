"""Inference: backends as plain callables, resume from the side file, tolerant parsing, the openai
backend against a local fake server, and the extractive run on the official inputs."""

import _thread
import dataclasses
import json
import sys
import threading
import time
import types

import pytest

from emotion_summary.core.atomic_io import read_jsonl_tolerant
from emotion_summary.core.errors import UserError
from emotion_summary.teacher.client import EndpointError, run_pool
from emotion_summary.predicting.backends import Backend
from emotion_summary.predicting.predict import assemble, infer, predict
from emotion_summary.prompting.replies import side_file_for
from emotion_summary.prompting.prompt import PromptSpec, answer_text
from emotion_summary.data.records import GOLD_FIELDS
from emotion_summary.predicting.submission import SUBMISSION_KEYS, check_submission, read_predictions

from tests.chat_server import FakeChatServer, unused_endpoint


def fields_for(rid: int) -> dict[str, str]:
    return {f: f"{f} of report {rid}" for f in GOLD_FIELDS}


class FakeGenerator:
    """Stands in for Qwen2EmotionSummaryModel.generate: records every batch it is given."""

    def __init__(self):
        self.batches = []

    def __call__(self, batch):
        self.batches.append([r.id for r in batch])
        return [answer_text(fields_for(r.id)) for r in batch]


def fake_backend(generate, name="hf", model="m", batch_size=1, concurrency=1) -> Backend:
    return Backend(name, generate, lambda r: {"model": model, "report": r.inputs()}, batch_size, concurrency)


def test_predict_appends_every_raw_text_and_resume_redoes_nothing(tmp_path, records, capsys):
    side = tmp_path / "out.jsonl.raw.jsonl"
    gen = FakeGenerator()
    raws = predict(records[:2], fake_backend(gen), side)
    assert sorted(raws) == [11, 12]
    assert [r["backend"] for r in read_jsonl_tolerant(side)] == ["hf", "hf"]
    gen2 = FakeGenerator()
    raws = predict(records, fake_backend(gen2, batch_size=4), side)
    assert gen2.batches == [[13]]  # only the unfinished id
    assert sorted(raws) == [11, 12, 13]
    assert "reused 2 saved replies" in capsys.readouterr().out


def test_predict_sorts_by_length_and_survives_a_torn_last_line(tmp_path, records):
    side = tmp_path / "raw.jsonl"
    predict(records[:1], fake_backend(FakeGenerator()), side)
    side.write_text(side.read_text() + '{"id": 12, "ra')
    gen = FakeGenerator()
    predict(records, fake_backend(gen, batch_size=8), side)
    lengths = {r.id: len(json.dumps(r.inputs(), ensure_ascii=False)) for r in records}
    assert gen.batches == [sorted([12, 13], key=lambda i: lengths[i])]
    assert [json.loads(line)["id"] for line in side.read_text().splitlines()] == [11, *gen.batches[0]]


def test_replies_to_another_request_or_report_are_not_reused(tmp_path, records, capsys):
    side = tmp_path / "raw.jsonl"
    predict(records, fake_backend(FakeGenerator(), model="adapter-v1"), side)
    gen = FakeGenerator()
    predict(records, fake_backend(gen, model="adapter-v2", batch_size=8), side)
    assert len(gen.batches[0]) == 3
    edited = [dataclasses.replace(records[0], experience_and_reflection="A different report."), *records[1:]]
    gen = FakeGenerator()
    predict(edited, fake_backend(gen, model="adapter-v1", batch_size=8), side)
    assert gen.batches == [[11]]
    assert "reused 2 saved replies" in capsys.readouterr().out


# ---------------------------------------------------------------- run_pool: stopping early


class PoolWork:
    """Work for run_pool: item 2 fails with `stop` (called, if it is a function); the others sleep briefly."""

    def __init__(self, stop):
        self.stop, self.called, self.results, self.threads = stop, [], [], set()

    def __call__(self, item):
        self.called.append(item)
        if item == 2:
            if isinstance(self.stop, BaseException):
                raise self.stop
            self.stop()
        time.sleep(0.05)
        return item

    def on_result(self, item):
        self.threads.add(threading.get_ident())
        self.results.append(item)


@pytest.mark.parametrize("stop", [RuntimeError("HTTP 503"), KeyboardInterrupt()])
def test_run_pool_stops_sending_on_the_first_error_and_keeps_what_finished(stop):
    work = PoolWork(stop)
    with pytest.raises(type(stop)):
        run_pool(range(10), work, work.on_result, concurrency=2)
    assert len(work.called) <= 4  # 0 and 1, then 2 (fails) and 3 (in flight); never 10
    assert sorted(work.results) == sorted(set(work.called) - {2})
    assert work.threads == {threading.get_ident()}  # results are handed over in the calling thread


def test_ctrl_c_in_the_calling_thread_drains_the_requests_in_flight(ctrl_c_raises):
    work = PoolWork(_thread.interrupt_main)  # as if Ctrl-C were pressed while item 2 is in flight
    with pytest.raises(KeyboardInterrupt):
        run_pool(range(10), work, work.on_result, concurrency=2)
    assert len(work.called) <= 4 and 2 in work.results  # paid-for answers are kept, no new ones asked
    assert sorted(work.results) == sorted(work.called)


def test_predict_interrupted_keeps_finished_batches_and_sends_no_more(tmp_path, records):
    many = [dataclasses.replace(records[0], id=i) for i in range(10)]
    sent = []

    def generate(batch):
        sent.append(batch[0].id)
        if len(sent) == 3:
            raise KeyboardInterrupt
        time.sleep(0.05)
        return [answer_text(fields_for(r.id)) for r in batch]

    side = tmp_path / "raw.jsonl"
    with pytest.raises(KeyboardInterrupt):
        predict(many, fake_backend(generate, "openai", concurrency=2), side)
    assert len(sent) <= 4
    assert len(read_jsonl_tolerant(side)) == len(sent) - 1


def test_missing_fields_are_filled_from_the_baseline_and_counted(records):
    raws = {11: answer_text(fields_for(11)),
            12: '{"causes": "divorce", "symptoms": ""}',  # two given (one empty), three absent
            13: "I cannot answer that."}  # no JSON at all
    out = assemble(records, raws)
    assert out.fields[11] == fields_for(11)
    assert out.filled == {12: ["symptoms", "treatment_process", "characteristics_of_illness",
                               "treatment_effect"], 13: list(GOLD_FIELDS)}
    assert out.not_json == [13]
    assert all(v.strip() for fields in out.fields.values() for v in fields.values())  # no id dropped
    assert (out.fields_from_model, out.fields_from_fallback) == (6, 9)
    assert out.provenance() == ("fields: 6 of 15 from the model, 9 from the extractive fallback; "
                                "2 of 3 replies parsed as JSON")


def test_infer_writes_a_valid_submission_in_input_order_and_reports_fills(tmp_path, gold_file, capsys):
    out = tmp_path / "sub" / "Emotion_Summary_Result.jsonl"
    infer(input=str(gold_file), output=str(out), backend="extractive")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [11, 12, 13]
    assert all(set(r) == {"id", *SUBMISSION_KEYS.values()} for r in rows)
    assert check_submission(out, gold_file).ok
    assert side_file_for(out).is_file()
    assert "ready to submit" in capsys.readouterr().out


def fake_model_module(generate_log: list):
    """A stand-in for emotion_summary.modeling.summary_model with the wrapper's contract (load, and generate
    of prompts fitted by encode.fit_report); it reads the report and answer language off each prompt."""
    from pathlib import Path

    from emotion_summary.data.records import read_records
    from emotion_summary.prompting.prompt import LANGUAGE_RULES

    reports = read_records(Path(__file__).parent / "fixtures" / "es_eval_gold.jsonl")

    def report_id(prompt) -> int:
        return next(r.id for r in reports if r.case_description[0] in prompt.messages[-1]["content"])

    def language(prompt) -> str:
        return "zh" if any(LANGUAGE_RULES["zh"] in m["content"] for m in prompt.messages) else "en"

    class FakeWrapper:
        @classmethod
        def load(cls, model_path, quantization=None):
            return cls()

        def generate(self, prompts, max_new_tokens, batch_size):
            ids = [report_id(p) for p in prompts]
            generate_log.append((language(prompts[0]), max_new_tokens, ids))
            return [answer_text(fields_for(rid)) if rid != 12 else '{"causes": "x"' for rid in ids]

    return types.SimpleNamespace(Qwen2EmotionSummaryModel=FakeWrapper)


@pytest.fixture(scope="module")
def qwen2_tokenizer_files(tmp_path_factory):
    from emotion_summary.modeling.tokenizer import qwen2_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    qwen2_tokenizer().save_pretrained(str(out))
    return out


def make_checkpoint(directory, tokenizer_files, spec: PromptSpec | None = None, **config):
    """The files the trainer writes into an adapter directory, without weights worth loading."""
    import shutil

    from emotion_summary.training.config import resolve_config

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny"}))
    (directory / "adapter_model.safetensors").write_bytes(b"v1")
    resolve_config("cpu-smoke", **config).save(directory)
    (spec or PromptSpec()).save(directory)
    for f in tokenizer_files.iterdir():
        shutil.copy(f, directory / f.name)
    return directory


@pytest.fixture
def checkpoint(tmp_path, qwen2_tokenizer_files):
    return make_checkpoint(tmp_path / "run", qwen2_tokenizer_files)


def test_hf_backend_wiring_with_a_fake_wrapper(tmp_path, gold_file, checkpoint, monkeypatch, capsys):
    log = []
    monkeypatch.setitem(sys.modules, "emotion_summary.modeling.summary_model", fake_model_module(log))
    out = tmp_path / "sub.jsonl"
    infer(input=str(gold_file), output=str(out), model_path=str(checkpoint), backend="hf", batch_size=2,
          max_new_tokens=64, language="en")
    assert [entry[:2] for entry in log] == [("en", 64), ("en", 64)]
    assert sorted(i for entry in log for i in entry[2]) == [11, 12, 13]
    preds = read_predictions(out)
    assert preds[11] == fields_for(11)
    assert preds[12]["causes"] == "x"  # cut-off JSON read key by key; the rest from the baseline
    assert "4 fields in 1 reports were missing" in capsys.readouterr().out
    log.clear()
    infer(input=str(gold_file), output=str(out), model_path=str(checkpoint), backend="hf", max_new_tokens=64,
          language="en")
    assert log == []  # resumed: nothing generated, no model call
    assert "reused 3 saved replies" in capsys.readouterr().out
    infer(input=str(gold_file), output=str(out), model_path=str(checkpoint), backend="hf", max_new_tokens=64,
          language="zh")
    assert [entry[0] for entry in log] == ["zh"]  # another answer language: generated again


def test_hf_backend_takes_max_new_tokens_and_batch_size_from_the_checkpoint(tmp_path, gold_file, checkpoint,
                                                                          monkeypatch, capsys):
    """cpu-smoke: max_new_tokens 96, training micro-batch 2; inference batches by max_seq_len (1,024
    tokens: up to 8 reports a call), not by the training micro-batch."""
    log = []
    monkeypatch.setitem(sys.modules, "emotion_summary.modeling.summary_model", fake_model_module(log))
    out = tmp_path / "sub.jsonl"
    infer(input=str(gold_file), output=str(out), model_path=str(checkpoint), backend="hf")
    assert [(n, len(ids)) for _, n, ids in log] == [(96, 3)]
    log.clear()
    infer(input=str(gold_file), output=str(out), model_path=str(checkpoint), backend="hf", max_new_tokens=95)
    assert [(n, len(ids)) for _, n, ids in log] == [(95, 3)]  # another budget: asked again, not reused


def test_leakage_guard_is_called(tmp_path, gold_file, checkpoint, monkeypatch):
    calls = []

    def guard(records, model_path, allow_leakage):
        calls.append((len(records), model_path, allow_leakage))
        raise UserError("LEAKAGE: refused")

    monkeypatch.setattr("emotion_summary.predicting.predict.guard_leakage", guard)
    with pytest.raises(UserError, match="LEAKAGE"):
        infer(input=str(gold_file), output=str(tmp_path / "o.jsonl"), model_path=str(checkpoint),
              backend="hf", allow_leakage=False)
    assert calls == [(3, str(checkpoint), False)]
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_options_are_user_errors(tmp_path, gold_file):
    with pytest.raises(UserError, match="--model_path"):
        infer(input=str(gold_file), backend="hf")
    with pytest.raises(UserError, match="no-such-dir"):
        infer(input=str(gold_file), backend="hf", model_path=str(tmp_path / "no-such-dir"))
    with pytest.raises(UserError, match="--endpoint"):
        infer(input=str(gold_file), backend="openai")
    with pytest.raises(UserError, match="--backend"):
        infer(input=str(gold_file), backend="vllm")


# ---------------------------------------------------------------- openai backend, local server


def openai_reply(messages):
    assert messages[0]["role"] == "system" and "# Report" in messages[1]["content"]
    return "```json\n" + answer_text(fields_for(0)) + "\n```"


def test_openai_backend_and_resume_resends_nothing(tmp_path, gold_file):
    out = tmp_path / "sub.jsonl"
    with FakeChatServer(openai_reply) as server:
        infer(input=str(gold_file), output=str(out), backend="openai", endpoint=server.endpoint,
              model="es-qwen2", concurrency=3)
        assert len(server.requests) == 3
        assert {r["model"] for r in server.requests} == {"es-qwen2"}
        out.unlink()
        infer(input=str(gold_file), output=str(out), backend="openai", endpoint=server.endpoint,
              model="es-qwen2", concurrency=3)
        assert len(server.requests) == 3  # resumed from the side file
    assert read_predictions(out)[12] == fields_for(0)


def test_openai_backend_uses_prompt_json_of_model_path(tmp_path, gold_file, checkpoint):
    PromptSpec(system="CUSTOM SYSTEM", language="zh").save(checkpoint)
    with FakeChatServer(openai_reply) as server:
        infer(input=str(gold_file), output=str(tmp_path / "o.jsonl"), backend="openai", model_path=str(checkpoint),
              endpoint=server.endpoint, model="m", concurrency=1)
    first = server.requests[0]["messages"]
    assert first[0]["content"] == "CUSTOM SYSTEM" and "请用中文" in first[1]["content"]


def test_unreachable_endpoint_is_a_clear_error_and_writes_nothing(tmp_path, gold_file):
    out = tmp_path / "sub.jsonl"
    with pytest.raises(EndpointError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1/chat/completions.*resume"):
        infer(input=str(gold_file), output=str(out), backend="openai", endpoint=unused_endpoint(), model="m",
              max_retries=0)
    assert not out.exists()


def test_timeout_keeps_finished_reports_for_the_rerun(tmp_path, gold_file):
    out = tmp_path / "sub.jsonl"
    with FakeChatServer(openai_reply, delay_s=1.0) as server:
        with pytest.raises(EndpointError, match="timed out"):
            infer(input=str(gold_file), output=str(out), backend="openai", endpoint=server.endpoint, model="m",
                  timeout_s=0.2, max_retries=0, concurrency=1)
    assert not out.exists()
    assert read_jsonl_tolerant(side_file_for(out)) == []


def refusing_reply(status: int):
    """Like openai_reply, but report 12 (Omar) gets `status`, as a report too long for the context would."""
    def reply(messages):
        return (status, "maximum context length exceeded") if "Omar" in messages[1]["content"] else \
            openai_reply(messages)
    return reply


def test_a_refused_report_is_recorded_and_filled_from_the_baseline(tmp_path, gold_file, capsys):
    out = tmp_path / "sub.jsonl"
    args = dict(input=str(gold_file), output=str(out), backend="openai", model="m", max_retries=0, concurrency=2)
    with FakeChatServer(refusing_reply(400)) as server:
        infer(endpoint=server.endpoint, **args)
        assert len(server.requests) == 3
        row = [r for r in read_jsonl_tolerant(side_file_for(out)) if r["id"] == 12][0]
        assert row["raw"] == "" and "HTTP 400" in row["error"]
        said = capsys.readouterr().out
        assert "endpoint refused 1 reports (ids [12])" in said and "maximum context length" in said
        assert "5 fields in 1 reports were missing" in said and "no parseable JSON" not in said
        assert "ready to submit" in said
        infer(endpoint=server.endpoint, **args)
        assert len(server.requests) == 3  # the refusal is final: a rerun does not stop at it again
        assert "endpoint refused 1 reports (ids [12])" in capsys.readouterr().out
    assert read_predictions(out)[11] == fields_for(0)


@pytest.mark.parametrize("status", [401, 404, 429, 503])
def test_an_endpoint_wide_error_stops_the_run_for_a_resume(tmp_path, gold_file, status):
    out = tmp_path / "sub.jsonl"
    with FakeChatServer(refusing_reply(status)) as server:
        with pytest.raises(EndpointError, match=f"HTTP {status}.*resume"):
            infer(input=str(gold_file), output=str(out), backend="openai", endpoint=server.endpoint, model="m",
                  max_retries=0, concurrency=1)
    assert not out.exists()
    assert all(r["raw"] and "error" not in r for r in read_jsonl_tolerant(side_file_for(out)))


@pytest.mark.shared
def test_extractive_submission_on_the_official_inputs_passes_the_checker(tmp_path, shared_data):
    inputs = shared_data / "longemotion" / "Emotion_Summary.jsonl"
    out = tmp_path / "Emotion_Summary_Result.jsonl"
    infer(input=str(inputs), output=str(out), backend="extractive")
    report = check_submission(out, inputs)
    assert report.ok and not report.warnings, report.render()
    assert report.n_rows == 150


def test_a_retrained_model_in_the_same_directory_is_not_reused(tmp_path, gold_file, checkpoint, monkeypatch):
    log = []
    monkeypatch.setitem(sys.modules, "emotion_summary.modeling.summary_model", fake_model_module(log))
    args = dict(input=str(gold_file), output=str(tmp_path / "o.jsonl"), model_path=str(checkpoint), backend="hf")
    infer(**args)
    infer(**args)
    assert len(log) == 1  # one batch of three; the second run reused them
    (checkpoint / "adapter_model.safetensors").write_bytes(b"v2, retrained")
    infer(**args)
    assert len(log) == 2
