"""The benchmark's judge protocol against a loopback fake endpoint: what is sent, how a reply is read,
and the ES score (mean of 15 integers per report; an unreadable reply counts 0)."""

import json

import pytest

from emotion_summary.teacher.client import ChatClient
from emotion_summary.core.errors import UserError
from emotion_summary.scoring.evaluate import evaluate
from emotion_summary.scoring.official_judge import judge_reports, judge_summary, parse_reply
from emotion_summary.data.records import GOLD_FIELDS
from emotion_summary.predicting.submission import write_submission

from tests.chat_server import FakeChatServer


def full_reply(score_of=lambda field, dim: 4, fenced=True) -> str:
    body = json.dumps({f: {"factual_consistency": score_of(f, "factual_consistency"),
                           "completeness": score_of(f, "completeness"), "clarity": score_of(f, "clarity"),
                           "comment": "fine"} for f in GOLD_FIELDS}, indent=2)
    return f"Here is my evaluation.\n```json\n{body}\n```" if fenced else body


def client_for(server):
    return ChatClient(server.endpoint, "judge-model", max_retries=0)


def test_a_reply_is_read_only_with_all_15_scores():
    assert parse_reply(full_reply())["treatment_effect"] == {"factual_consistency": 4, "completeness": 4, "clarity": 4}
    titled = full_reply(fenced=False).replace('"treatment_process"', '"Treatment process"')
    assert parse_reply(titled)["treatment_process"]["clarity"] == 4
    assert parse_reply(full_reply(lambda f, d: "5")) is not None  # numbers as strings
    assert parse_reply(full_reply(lambda f, d: 6 if f == "causes" else 4)) is None  # out of range
    one_missing = json.loads(full_reply(fenced=False))
    del one_missing["symptoms"]
    assert parse_reply(json.dumps(one_missing)) is None
    assert parse_reply("The summary is good overall.") is None


def test_the_judge_sees_reference_and_prediction_and_scores_as_the_benchmark(tmp_path, records):
    preds = {r.id: {**r.gold(), "causes": f"predicted cause {r.id}"} for r in records}

    def reply(messages):
        text = messages[0]["content"]
        return "no idea" if "predicted cause 13" in text else full_reply(lambda f, d: 5 if d == "clarity" else 3)

    with FakeChatServer(reply) as server:
        items = judge_reports(records, preds, client_for(server), tmp_path / "cache.jsonl", concurrency=1)
        sent = server.requests
        assert len(sent) == len(records)  # one request per report, not per field
        first = sent[0]
        assert [m["role"] for m in first["messages"]] == ["user"] and first["temperature"] == 0
        text = first["messages"][0]["content"]
        assert f"Causes: {records[0].causes}" in text and "Causes: predicted cause 11" in text
        assert records[0].consultation_process[0] not in text  # the source report is not shown
        judge_reports(records, preds, client_for(server), tmp_path / "cache.jsonl")
        assert len(server.requests) == len(records)  # the rerun resends nothing, unreadable replies included
    summary = judge_summary(items, "judge-model", 0.0)
    per_report = (3 * 5 + 3 * 5 + 5 * 5) / 15
    assert summary["mean"] == pytest.approx(per_report * 2 / 3)  # report 13 counts 0
    assert summary["mean_of_readable"] == pytest.approx(per_report)
    assert summary["n_failed"] == 1 and summary["failures"][0]["id"] == 13
    assert summary["per_dimension"] == {"factual_consistency": 3, "completeness": 3, "clarity": 5}
    assert summary["per_field"]["causes"]["mean"] == pytest.approx(per_report)


def test_a_refused_report_counts_zero_and_is_asked_again_next_time(tmp_path, records):
    preds = {r.id: r.gold() for r in records}
    preds[12]["symptoms"] += " refuse-me"

    def reply(messages):
        return (400, "context too long") if "refuse-me" in messages[0]["content"] else full_reply()

    with FakeChatServer(reply) as server:
        items = judge_reports(records, preds, client_for(server), tmp_path / "c.jsonl")
        judge_reports(records, preds, client_for(server), tmp_path / "c.jsonl")
        assert len(server.requests) == len(records) + 1
    summary = judge_summary(items, "judge-model", 0.0)
    assert summary["n_refused"] == 1 and summary["mean"] == pytest.approx(4.0 * 2 / 3)


def test_evaluate_reports_the_es_score_with_attributes_and_dimensions(tmp_path, gold_file, records):
    sub = tmp_path / "run-a" / "Emotion_Summary_Result.jsonl"
    write_submission(sub, {r.id: r.gold() for r in records}, [r.id for r in records])
    with FakeChatServer(lambda messages: full_reply()) as server:
        evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False, judge=True,
                 endpoint=server.endpoint, model="judge-model", max_retries=0, judge_temperature=0.5)
        assert {r["temperature"] for r in server.requests} == {0.5}
    results = json.loads((tmp_path / "res" / "run-a.json").read_text())
    judge = results["systems"][0]["judge"]
    assert judge["mean"] == pytest.approx(4.0) and judge["mean_x20"] == pytest.approx(80.0)
    assert judge["per_dimension"]["clarity"] == pytest.approx(4.0)
    table = (tmp_path / "res" / "run-a.md").read_text()
    assert "ES score (the benchmark's judge protocol) for run-a: 4.000 / 5" in table
    assert "Per dimension (readable replies): factual consistency 4.0000" in table


def test_every_reply_unreadable_is_an_error_after_the_outputs(tmp_path, gold_file, records, capsys):
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, {r.id: r.gold() for r in records}, [r.id for r in records])
    with FakeChatServer(lambda messages: "I like it.") as server:
        with pytest.raises(UserError, match="no usable score"):
            evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False,
                     judge=True, endpoint=server.endpoint, model="judge-model", max_retries=0)
    assert "3 of 3 reports got no readable scores" in capsys.readouterr().err
    assert json.loads((tmp_path / "res" / "sub.json").read_text())["systems"][0]["judge"]["mean"] == 0.0
