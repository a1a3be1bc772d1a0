"""The LLM judge against a local fake server: scores, tolerant parsing, retries, failures, cache."""

import json

import pytest

from emotion_summary.teacher.client import ChatClient, EndpointError
from emotion_summary.core.errors import UserError
from emotion_summary.scoring.evaluate import evaluate
from emotion_summary.scoring.judge import (judge_messages, judge_predictions, parse_scores, report_text,
                                   judge_totals)
from emotion_summary.data.records import GOLD_FIELDS
from emotion_summary.predicting.submission import write_submission

from tests.chat_server import FakeChatServer, unused_endpoint


def preds_of(records):
    return {r.id: r.gold() for r in records}


def scores_reply(messages):
    return '{"factual_consistency": 5, "completeness": 4, "clarity": 3}'


def client_for(server, **kw):
    return ChatClient(server.endpoint, "judge-model", max_retries=0, **kw)


@pytest.mark.parametrize("reply,want", [
    ('{"factual_consistency": 5, "completeness": 4, "clarity": 3}', (5, 4, 3)),
    ('Sure!\n```json\n{"Factual Consistency": "4/5", "completeness": 4.0, "clarity": 2}\n```', (4, 4, 2)),
    ('{"factual_consistency": 5, "completeness": 4}', None),
    ('{"factual_consistency": 9, "completeness": 4, "clarity": 3}', None),
    ("I think it is good.", None),
])
def test_parse_scores_is_tolerant_but_strict_about_range(reply, want):
    got = parse_scores(reply)
    assert (None if got is None else tuple(got.values())) == want


def test_long_reports_are_capped_in_the_middle(records):
    from emotion_summary.data.records import record_from_dict

    long = record_from_dict({"id": 1, "case_description": ["Start of the case. " + "words " * 400],
                             "consultation_process": ["first session " * 300, "middle " * 2000 + "END."],
                             "experience_and_reflection": "reflection " * 300 + "Last words."})
    full = report_text(long)
    text = report_text(long, max_chars=6000)
    assert len(full) > 20000 and len(text) <= 6000 and "trimmed ...]" in text
    assert text.startswith("[Case description] Start of the case.") and text.endswith("Last words.")
    assert report_text(long, max_chars=100) == full[:100]  # too small for the markers: the head
    user = judge_messages(records[0], "causes", "a prediction", "the reference")[1]["content"]
    assert "the reference" in user and "a prediction" in user and "[Case description]" in user


def test_judge_scores_and_the_rerun_resends_nothing(tmp_path, records):
    cache = tmp_path / "cache.jsonl"
    with FakeChatServer(scores_reply) as server:
        items = judge_predictions(records, preds_of(records), client_for(server), cache, concurrency=4)
        assert len(server.requests) == 15
        again = judge_predictions(records, preds_of(records), client_for(server), cache, concurrency=4)
        assert len(server.requests) == 15
    assert [(i.id, i.field) for i in again] == [(r.id, f) for r in records for f in GOLD_FIELDS]
    summary = judge_totals(items, "judge-model")
    assert summary["mean"] == pytest.approx(4.0) and summary["mean_x20"] == pytest.approx(80.0)
    assert summary["per_criterion"] == {"factual_consistency": 5, "completeness": 4, "clarity": 3}
    assert summary["n_failed"] == 0


def test_a_changed_prediction_is_judged_again(tmp_path, records):
    cache = tmp_path / "cache.jsonl"
    with FakeChatServer(scores_reply) as server:
        judge_predictions(records, preds_of(records), client_for(server), cache)
        changed = preds_of(records)
        changed[12] = {**changed[12], "symptoms": "something else"}
        judge_predictions(records, changed, client_for(server), cache)
        assert len(server.requests) == 16


def test_a_torn_cache_tail_is_cut_before_the_judge_appends(tmp_path, records):
    cache = tmp_path / "cache.jsonl"
    with FakeChatServer(scores_reply) as server:
        judge_predictions(records[:1], preds_of(records), client_for(server), cache)
        with open(cache, "a") as f:
            f.write('{"key": "abc", "scor')  # a judge killed while writing
        judge_predictions(records, preds_of(records), client_for(server), cache)
        assert len(server.requests) == 15
    rows = [json.loads(line) for line in cache.read_text().splitlines()]  # every line whole again
    assert len(rows) == 15


def test_non_json_reply_is_retried_then_recorded_as_a_failure(tmp_path, records):
    def reply(messages):
        user = messages[1]["content"]
        if '("treatment_effect")' in user and "id-12-marker" in user:
            return "The summary is fine."  # never JSON
        if len(messages) == 2 and '("causes")' in user:
            return "Let me think..."  # JSON only after the reminder
        return scores_reply(messages)

    preds = preds_of(records)
    preds[12]["treatment_effect"] += " id-12-marker"
    cache = tmp_path / "cache.jsonl"
    with FakeChatServer(reply) as server:
        items = judge_predictions(records, preds, client_for(server), cache, attempts=3)
        summary = judge_totals(items, "judge-model")
        assert summary["n_failed"] == 1
        assert summary["failures"][0]["id"] == 12 and summary["failures"][0]["field"] == "treatment_effect"
        assert len(server.requests) == 15 + 3 + 2  # 3 causes retried once; the failure asked 3 times
        n = len(server.requests)
        judge_predictions(records, preds, client_for(server), cache, attempts=3)
        assert len(server.requests) == n + 3  # only the failed item is asked again
    assert summary["mean"] == pytest.approx(4.0)


def test_unreachable_judge_is_an_endpoint_error(tmp_path, records):
    client = ChatClient(unused_endpoint(), "judge-model", max_retries=0)
    with pytest.raises(EndpointError, match="cannot reach"):
        judge_predictions(records, preds_of(records), client, tmp_path / "cache.jsonl")


def test_timeout_is_an_endpoint_error(tmp_path, records):
    with FakeChatServer(scores_reply, delay_s=1.0) as server:
        with pytest.raises(EndpointError, match="timed out"):
            judge_predictions(records[:1], preds_of(records), client_for(server, timeout_s=0.2), tmp_path / "c.jsonl",
                              concurrency=1)


def test_evaluate_with_judge_shows_the_leaderboard_figure(tmp_path, gold_file, records):
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, preds_of(records), [r.id for r in records])
    with FakeChatServer(scores_reply) as server:
        evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False, judge=True,
                 endpoint=server.endpoint, model="judge-model", max_retries=0, judge_protocol="source")
    results = json.loads((tmp_path / "res" / "sub.json").read_text())
    assert results["systems"][0]["judge"]["mean_x20"] == pytest.approx(80.0)
    table = (tmp_path / "res" / "sub.md").read_text()
    assert "## LLM judge (1-5" in table and "Source-grounded judge score for sub: 4.000 / 5" in table
    assert (tmp_path / "res" / "judge_cache.jsonl").is_file()


def test_evaluate_with_unreachable_judge_writes_rouge_then_fails(tmp_path, gold_file, records):
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, preds_of(records), [r.id for r in records])
    with pytest.raises(EndpointError, match="resume"):
        evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path), bertscore=False, judge=True,
                 endpoint=unused_endpoint(), model="m", max_retries=0)
    results = json.loads((tmp_path / "sub.json").read_text())
    assert results["systems"][0]["rouge"]["mean"]["rouge-1"] == pytest.approx(1.0)


def test_a_very_long_prediction_is_capped_so_the_judge_can_answer(tmp_path, records):
    def reply(messages):  # an endpoint with a ~32K-character context
        return (400, "maximum context length exceeded") if len(messages[1]["content"]) > 32_000 else \
            scores_reply(messages)

    preds = preds_of(records)
    preds[11]["causes"] = "A runaway generation. " + "again and again " * 20_000 + "The end."
    with FakeChatServer(reply) as server:
        items = judge_predictions(records, preds, client_for(server), tmp_path / "c.jsonl")
    assert judge_totals(items, "judge-model")["n_failed"] == 0
    sent = next(m[1]["content"] for m in (b["messages"] for b in server.requests) if "runaway" in m[1]["content"])
    assert "trimmed ...]" in sent and "The end." in sent


def test_a_refused_item_is_a_recorded_failure_and_the_run_finishes(tmp_path, records):
    def reply(messages):
        return (400, "bad request") if "refuse-me" in messages[1]["content"] else scores_reply(messages)

    preds = preds_of(records)
    preds[13]["symptoms"] += " refuse-me"
    cache = tmp_path / "c.jsonl"
    with FakeChatServer(reply) as server:
        summary = judge_totals(judge_predictions(records, preds, client_for(server), cache), "judge-model")
        assert summary["n_failed"] == 1 and summary["n_refused"] == 1
        assert summary["failures"][0]["id"] == 13 and "HTTP 400" in summary["failures"][0]["error"]
        judge_predictions(records, preds, client_for(server), cache)
        assert len(server.requests) == 16  # the refused item is asked again, nothing else
    assert summary["mean"] == pytest.approx(4.0)


def test_evaluate_fails_when_every_judge_reply_is_unparseable(tmp_path, gold_file, records, capsys):
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, preds_of(records), [r.id for r in records])
    with FakeChatServer(lambda messages: "I like it.") as server:
        with pytest.raises(UserError, match="no usable score for sub: every item failed"):
            evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False,
                     judge=True, endpoint=server.endpoint, model="judge-model", max_retries=0, judge_protocol="source")
    assert "judge sub: 15 of 15 items failed (15 unparseable replies, 0 refused requests)" in capsys.readouterr().err
    assert json.loads((tmp_path / "res" / "sub.json").read_text())["systems"][0]["judge"]["n_failed"] == 15


def test_judge_replies_with_unicode_line_separators_are_cached(tmp_path, records):
    def reply(messages):
        return 'Scores:\u2028{"factual_consistency": 5, "completeness": 4, "clarity": 3}\u2029'

    cache = tmp_path / "c.jsonl"
    with FakeChatServer(reply) as server:
        judge_predictions(records, preds_of(records), client_for(server), cache)
        judge_predictions(records, preds_of(records), client_for(server), cache)
        assert len(server.requests) == 15


def test_evaluate_checks_the_judge_options_before_any_work(tmp_path, gold_file, records):
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, preds_of(records), [r.id for r in records])
    with pytest.raises(UserError, match="--timeout_s: expected a number > 0"):
        evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False, judge=True,
                 endpoint="http://127.0.0.1:1/v1", model="m", timeout_s=-1)
    assert not (tmp_path / "res").exists()


def test_a_password_in_the_judge_endpoint_is_in_no_message_or_file(tmp_path, gold_file, records):
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, preds_of(records), [r.id for r in records])
    endpoint = unused_endpoint().replace("http://", "http://me:s3cret@")
    with pytest.raises(EndpointError) as e:
        evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(tmp_path / "res"), bertscore=False, judge=True,
                 endpoint=endpoint, model="m", max_retries=0)
    assert "s3cret" not in str(e.value) and "me:***@127.0.0.1" in str(e.value)
    assert not [p for p in (tmp_path / "res").iterdir() if "s3cret" in p.read_bytes().decode("utf-8", "replace")]
