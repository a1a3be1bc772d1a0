"""The one ask -> validate -> re-ask loop and its output writer, used by labelling and synthesis."""

import json

import pytest

from emotion_summary.teacher.ask_loop import ResumableOutput, ask, reask_turns, rejects_path, request_key
from emotion_summary.teacher.client import ChatClient, EndpointError
from emotion_summary.teacher.label import label_file
from emotion_summary.data.records import GOLD_FIELDS, Record, read_records, write_records
from tests.chat_server import FakeChatServer

EN = {f: f"The {f.replace('_', ' ')} of this client." for f in GOLD_FIELDS}


def client(server, **kw) -> ChatClient:
    return ChatClient(server.endpoint, "teacher", **{"max_retries": 0, "backoff_s": 0.0, "timeout_s": 10, **kw})


def number_or_problem(reply: str):
    return (int(reply), "") if reply.strip().isdigit() else (None, f"{reply!r} is not a number")


def test_ask_reasks_with_the_complaint_and_counts_attempts():
    replies = iter(["seven", "7"])
    with FakeChatServer(lambda messages: next(replies)) as server:
        outcome = ask(client(server), "item", 1, [{"role": "user", "content": "a number?"}], number_or_problem,
                      reask_turns(lambda problem: f"Try again: {problem}"), max_reasks=2, max_tokens=5)
        assert (outcome.value, outcome.attempts) == (7, 2)
        assert server.requests[1]["messages"][-1] == {"role": "user", "content": "Try again: 'seven' is not a number"}


def test_a_validator_beaten_by_hostile_text_is_a_garbled_reply_reasked_then_rejected():
    def explodes(reply):
        raise RecursionError("maximum recursion depth exceeded")

    with FakeChatServer(lambda messages: "[[[") as server:
        outcome = ask(client(server), "item", 1, [], explodes, reask_turns(str), max_reasks=1, max_tokens=5)
    assert outcome.value is None and outcome.reason == "garbled reply (RecursionError)" and outcome.attempts == 2


def test_a_refusal_ends_the_item_other_endpoint_errors_stop_the_run():
    with FakeChatServer(lambda messages: (400, "too long")) as server:
        outcome = ask(client(server), "item", 1, [], number_or_problem, reask_turns(str), 2, 5)
    assert outcome.refused and "endpoint refused the request" in outcome.reason and outcome.attempts == 1
    with FakeChatServer(lambda messages: (401, "bad key")) as server:
        with pytest.raises(EndpointError):
            ask(client(server), "item", 1, [], number_or_problem, reask_turns(str), 2, 5)


def test_the_request_key_changes_with_endpoint_model_and_messages_and_holds_no_password():
    a = ChatClient("http://127.0.0.1:8000/v1", "m")
    messages = [{"role": "user", "content": "hi"}]
    key = request_key(a, messages)
    assert key != request_key(ChatClient("http://127.0.0.1:8001/v1", "m"), messages)
    assert key != request_key(ChatClient("http://127.0.0.1:8000/v1", "other"), messages)
    assert key != request_key(a, [{"role": "user", "content": "hello"}])


def test_the_writer_keeps_the_latest_reason_and_drops_ids_accepted_since(tmp_path):
    from emotion_summary.teacher.ask_loop import Outcome

    run = ResumableOutput(tmp_path / "out.jsonl", {"teacher": "t"})
    run.reject(Outcome("x", 1, None, "first reason", 1, "reply"))
    run.reject(Outcome("x", 1, None, "second reason", 3, "reply" * 1000))
    run.reject(Outcome("y", 2, None, "", 1), "shares passages", gate="official")
    run.accept({"id": 2})
    assert (run.accepted, run.rejected, run.counts) == (1, 2, {"official": 1})
    assert run.finish() == 1
    rows = [json.loads(line) for line in rejects_path(tmp_path / "out.jsonl").open()]
    assert rows == [{"id": 1, "reason": "second reason", "attempts": 3, "last_reply": ("reply" * 1000)[:2000],
                     "teacher": "t"}]


HOSTILE = {"null": None, "brackets": "[" * 100_000, "surrogate": "\ud800", "digits": "9" * 5000}


@pytest.mark.parametrize("content", HOSTILE.values(), ids=HOSTILE.keys())
def test_labelling_counts_a_hostile_reply_as_refused_and_goes_on(tmp_path, content):
    records = [Record(id=i, case_description=(f"Client {i}.",), consultation_process=("Notes.",),
                      experience_and_reflection="") for i in (1, 2)]
    src = write_records(tmp_path / "in.jsonl", records)

    def reply(messages):
        return content if "Client 1." in messages[1]["content"] else json.dumps(EN)

    out = tmp_path / "out.jsonl"
    with FakeChatServer(reply) as server:
        counts = label_file(src, out, client(server, max_retries=1), concurrency=1)
    assert (counts["labelled"], counts["rejected"]) == (1, 1)
    assert [r.id for r in read_records(out)] == [2]
    reject = json.loads(rejects_path(out).read_text())
    assert reject["id"] == 1 and "garbled reply" in reject["reason"]
