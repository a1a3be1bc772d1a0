"""The teacher labeller against a fake OpenAI chat endpoint on 127.0.0.1 (no network)."""

import dataclasses
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from emotion_summary.teacher.client import ChatClient, EndpointError
from emotion_summary.core.errors import UserError
from emotion_summary.teacher.label import (label_file, label_source_counts, label_with_teacher, rejects_path,
                                   reply_problem)
from emotion_summary.prompting.prompt import LANGUAGE_RULES
from emotion_summary.data.records import GOLD_FIELDS, Record, read_records, write_records
from tests.chat_server import FakeChatServer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "label_with_teacher.py"
EN = {f: f"The {f.replace('_', ' ')} of this client, in plain words." for f in GOLD_FIELDS}
ZH = {f: "来访者的情况说明，用中文写成的一段话。" for f in GOLD_FIELDS}


def canned_reply(messages: list[dict]) -> tuple[int, str]:
    """(HTTP status, reply) chosen by the `marker:` word in the report; re-asks are the 4th message."""
    marker = re.search(r"marker:([\w-]+)", messages[1]["content"]).group(1)
    reask = len(messages) > 2
    if marker == "good":
        return 200, "Here you go:\n```json\n" + json.dumps(EN) + "\n```"
    if marker == "zh":
        return 200, json.dumps(ZH, ensure_ascii=False)
    if marker == "fix-on-retry":
        return 200, json.dumps(EN) if reask else "Sorry, I cannot summarise this."
    if marker == "missing-field":
        return 200, json.dumps({k: v for k, v in EN.items() if k != "symptoms"})
    if marker == "too-long":
        return 400, '{"error": "context length exceeded"}'
    if marker == "bad-key":
        return 401, '{"error": "invalid API key"}'
    if marker == "line-separators":
        return 200, json.dumps({f: f"First line\u2028second\u2029third\u0085end of {f}." for f in GOLD_FIELDS},
                               ensure_ascii=False)
    raise AssertionError(marker)


class LabelServer(FakeChatServer):
    """The fake endpoint answering `canned_reply`."""

    def __init__(self):
        super().__init__(canned_reply)
        self.url = self.endpoint

    @property
    def messages(self) -> list[list[dict]]:
        return [body["messages"] for body in self.requests]

    def markers(self) -> Counter:
        return Counter(re.search(r"marker:([\w-]+)", m[1]["content"]).group(1) for m in self.messages)


@pytest.fixture
def server():
    with LabelServer() as s:
        yield s


def client(server: LabelServer) -> ChatClient:
    return ChatClient(server.url, "teacher", max_retries=0, backoff_s=0.0, timeout_s=10)


def write_input(tmp_path: Path, markers: list[str], gold: Record | None = None) -> Path:
    records = [Record(id=i + 1, case_description=(f"Client {i + 1}. marker:{m}",),
                      consultation_process=(f"Session notes for client {i + 1}.",),
                      experience_and_reflection="") for i, m in enumerate(markers)]
    path = tmp_path / "in.jsonl"
    write_records(path, records + ([gold] if gold else []))
    return path


def test_labels_written_with_provenance(server, tmp_path, fixtures):
    gold = read_records(fixtures / "es_tiny_gold.jsonl")[0]
    src = write_input(tmp_path, ["good", "good", "good"], gold)
    out = tmp_path / "out.jsonl"
    counts = label_file(src, out, client(server), concurrency=3)
    assert counts == {"labelled": 3, "skipped_done": 0, "copied_with_gold": 1, "rejected": 0,
                      "rejects_file_entries": 0, "left_for_later": 0}
    records = read_records(out, require_gold=True)
    assert sorted(r.id for r in records) == [1, 2, 3, 7]
    teacher = [r for r in records if r.id != 7]
    assert all(r.gold() == EN for r in teacher)
    assert teacher[0].label_source["model"] == "teacher"
    assert teacher[0].label_source["endpoint"] == server.url
    assert {body["model"] for body in server.requests} == {"teacher"}
    assert re.match(r"\d{4}-\d\d-\d\dT", teacher[0].label_source["date"])
    assert label_source_counts(records) == {"longemotion (dataset gold)": 1,
                                            "longemotion (teacher: teacher)": 3}
    assert not rejects_path(out).exists()


def test_killed_run_resumes_without_resending(server, tmp_path):
    src = write_input(tmp_path, ["good"] * 6)
    out = tmp_path / "out.jsonl"
    server.fail_after = 2  # the endpoint dies after two answers
    with pytest.raises(EndpointError, match="2 records were labelled before it failed"):
        label_file(src, out, client(server), concurrency=1)
    assert len(read_records(out)) == 2
    first_ids = {r.id for r in read_records(out)}

    server.fail_after = None
    counts = label_file(src, out, client(server), concurrency=2)
    assert counts["labelled"] == 4 and counts["skipped_done"] == 2
    assert len(server.messages) == 6  # each record was sent exactly once over both runs
    sent = [re.search(r"Client (\d+)", m[1]["content"]).group(1) for m in server.messages[2:]]
    assert not {int(i) for i in sent} & first_ids
    assert sorted(r.id for r in read_records(out)) == [1, 2, 3, 4, 5, 6]


def test_limit_then_resume_and_torn_last_line(server, tmp_path):
    src = write_input(tmp_path, ["good"] * 4)
    out = tmp_path / "out.jsonl"
    counts = label_file(src, out, client(server), limit=2)
    assert counts["labelled"] == 2 and counts["left_for_later"] == 2
    with open(out, "a", encoding="utf-8") as f:  # a run killed while writing its third line
        f.write('{"id": 3, "case_descr')
    counts = label_file(src, out, client(server))
    assert counts["labelled"] == 2 and counts["skipped_done"] == 2
    assert len(server.messages) == 4
    assert sorted(r.id for r in read_records(out)) == [1, 2, 3, 4]  # the file is clean again


def test_bad_replies_go_to_rejects_never_filled(server, tmp_path):
    src = write_input(tmp_path, ["good", "fix-on-retry", "missing-field", "too-long"])
    out = tmp_path / "out.jsonl"
    counts = label_file(src, out, client(server), max_reasks=2)
    assert counts["labelled"] == 2 and counts["rejected"] == 2
    assert server.markers() == {"good": 1, "fix-on-retry": 2, "missing-field": 3, "too-long": 1}
    reask = next(m for m in server.messages if len(m) > 2 and "marker:fix-on-retry" in m[1]["content"])
    assert reask[2]["role"] == "assistant" and "could not be used: no JSON object" in reask[3]["content"]
    rejects = {r["id"]: r for r in map(json.loads, rejects_path(out).read_text(encoding="utf-8").splitlines())}
    assert set(rejects) == {3, 4}
    assert rejects[3]["reason"] == "missing or empty: symptoms" and rejects[3]["attempts"] == 3
    assert rejects[4]["reason"].startswith("endpoint refused the request: HTTP 400")
    assert sorted(r.id for r in read_records(out)) == [1, 2]

    # a rerun retries only the rejects; the file keeps one line per id still rejected
    label_file(src, out, client(server), max_reasks=0)
    assert server.markers() == {"good": 1, "fix-on-retry": 2, "missing-field": 4, "too-long": 2}
    assert len(rejects_path(out).read_text(encoding="utf-8").splitlines()) == 2


def test_a_bad_key_stops_the_run_instead_of_rejecting_every_record(server, tmp_path):
    src = write_input(tmp_path, ["bad-key"] * 5)
    out = tmp_path / "out.jsonl"
    with pytest.raises(EndpointError, match="HTTP 401.*Rerun"):
        label_file(src, out, client(server), concurrency=1)
    assert len(server.messages) == 1 and not rejects_path(out).exists()


def test_language_rule_in_prompt_and_enforced(server, tmp_path):
    src = write_input(tmp_path, ["good", "zh"])
    out = tmp_path / "out.jsonl"
    counts = label_file(src, out, client(server), language="zh", max_reasks=1)
    assert all(LANGUAGE_RULES["zh"] in m[1]["content"] for m in server.messages)
    assert counts["labelled"] == 1 and counts["rejected"] == 1
    assert [r.id for r in read_records(out)] == [2]
    reject = json.loads(rejects_path(out).read_text(encoding="utf-8"))
    assert reject["id"] == 1 and reject["reason"].startswith("not in Chinese: causes")
    reasks = [m for m in server.messages if len(m) > 2]
    assert len(reasks) == 1 and "written in Chinese" in reasks[0][3]["content"]


def test_reply_problem():
    assert reply_problem(json.dumps(EN), "en") is None
    assert reply_problem(json.dumps(EN), "auto") is None
    assert reply_problem(json.dumps({**EN, "causes": " "}), "en") == "missing or empty: causes"
    assert reply_problem(json.dumps({**EN, "causes": "\u200b"}), "en") == "missing or empty: causes"
    assert reply_problem(json.dumps(ZH, ensure_ascii=False), "en").startswith("not in English")


def test_cli_summary_and_bad_option(server, tmp_path):
    src = write_input(tmp_path, ["good", "missing-field"])
    out = tmp_path / "out.jsonl"
    args = [sys.executable, str(SCRIPT), "--input", str(src), "--output", str(out), "--endpoint", server.url,
            "--model", "teacher", "--max_reasks", "0", "--max_retries", "0", "--concurrency", "2"]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "labelled 1, skipped 0" in proc.stdout and "rejected 1 (see" in proc.stdout
    bad = subprocess.run(args + ["--language", "fr"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: --language: expected one of en, zh, auto, got 'fr'\n"


@pytest.mark.parametrize("other", ["bare-inputs", "other-ids", "other-report"])
def test_an_output_holding_other_records_is_refused_untouched(server, tmp_path, other):
    src = write_input(tmp_path, ["good", "good"])
    out = tmp_path / "Emotion_Summary.jsonl"
    mine = read_records(src)
    if other == "bare-inputs":  # e.g. the official inputs file given as --output by mistake
        theirs = [dataclasses.replace(r, id=r.id + 100) for r in mine] + mine
    elif other == "other-ids":
        theirs = [dataclasses.replace(r, id=r.id + 100).with_gold(EN, {"model": "x"}) for r in mine]
    else:
        theirs = [dataclasses.replace(mine[0], experience_and_reflection="Another report.").with_gold(EN, {"model": "x"})]
    write_records(out, theirs)
    (tmp_path / "torn.jsonl").write_bytes(out.read_bytes() + b'{"id": 9, "case')
    before = out.read_bytes()
    with pytest.raises(UserError, match="not the output of an earlier run on this input; refusing to append"):
        label_file(src, out, client(server))
    assert out.read_bytes() == before and server.requests == []


def test_a_torn_foreign_file_is_refused_before_its_tail_is_cut(server, tmp_path):
    src = write_input(tmp_path, ["good"])
    out = tmp_path / "other.jsonl"
    out.write_bytes(json.dumps({"id": 50, "case_description": ["x"], "consultation_process": ["y"],
                                "experience_and_reflection": ""}).encode() + b'\n{"id": 51, "case')
    before = out.read_bytes()
    with pytest.raises(UserError, match="id 50: its id is not in the input"):
        label_file(src, out, client(server))
    assert out.read_bytes() == before


def test_every_record_rejected_is_a_failed_run(server, tmp_path, capsys):
    src = write_input(tmp_path, ["missing-field", "too-long"])
    out = tmp_path / "out.jsonl"
    with pytest.raises(UserError, match="every one of the 2 records sent was rejected"):
        label_with_teacher(str(src), str(out), endpoint=server.url, model="teacher", max_reasks=0, max_retries=0,
                           timeout_s=10)
    assert "labelled 0" in capsys.readouterr().out


def test_replies_with_unicode_line_separators_are_kept_not_asked_again(server, tmp_path):
    src = write_input(tmp_path, ["line-separators", "good"])
    out = tmp_path / "out.jsonl"
    assert label_file(src, out, client(server))["labelled"] == 2
    assert label_file(src, out, client(server))["skipped_done"] == 2
    assert len(server.requests) == 2
    assert {r.id: r for r in read_records(out)}[1].causes == "First line\u2028second\u2029third\u0085end of causes."


def test_a_password_in_the_endpoint_is_in_no_file(server, tmp_path):
    src = write_input(tmp_path, ["good", "missing-field"])
    out = tmp_path / "out.jsonl"
    secret = ChatClient(server.url.replace("http://", "http://me:s3cret@"), "teacher", max_retries=0)
    label_file(src, out, secret, max_reasks=0)
    for path in (out, rejects_path(out)):
        text = path.read_text(encoding="utf-8")
        assert "s3cret" not in text and "me:***@127.0.0.1" in text



def test_resume_with_another_teacher_or_language_is_refused(server, tmp_path):
    src = write_input(tmp_path, ["good", "good"])
    out = tmp_path / "out.jsonl"
    label_file(src, out, client(server), language="en", limit=1)
    assert read_records(out)[0].label_source["language"] == "en"
    with pytest.raises(UserError, match=r"labelled before with --language en \(now auto\)"):
        label_file(src, out, client(server), language="auto")
    other = ChatClient(server.url, "another-teacher", max_retries=0, backoff_s=0.0, timeout_s=10)
    with pytest.raises(UserError, match=r"labelled before with --model teacher \(now another-teacher\)"):
        label_file(src, out, other, language="en")
    assert len(server.messages) == 1
