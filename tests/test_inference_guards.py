"""Inference refuses what would lose work or accept a broken run: outputs onto inputs, unusable output
paths, a NOT READY submission, an endpoint that refuses everything, stale saved replies, Ctrl-C."""

import _thread
import json

import pytest

from emotion_summary.core.atomic_io import read_jsonl_tolerant
from emotion_summary.core.cli import run
from emotion_summary.core.errors import UserError
from emotion_summary.predicting.predict import MostlyRefused, infer
from emotion_summary.prompting.prompt import answer_text
from emotion_summary.data.records import GOLD_FIELDS, read_records, write_records
from emotion_summary.prompting.replies import side_file_for

from tests.chat_server import FakeChatServer


def fields_reply(messages):
    return answer_text({f: f"{f} text" for f in GOLD_FIELDS})


@pytest.fixture
def inputs(tmp_path, gold_file):
    """A private copy of the three-report fixture: a test that overwrites it must not harm the others."""
    return write_records(tmp_path / "in.jsonl", read_records(gold_file))


# ---------------------------------------------------------------- outputs that would destroy inputs


@pytest.mark.parametrize("how", ["same path", "symlink", "dot-dot", "raw replies"])
def test_an_output_that_is_the_input_is_refused_before_any_work(tmp_path, inputs, how):
    before = inputs.read_bytes()
    output = {"same path": inputs, "dot-dot": tmp_path / "x" / ".." / inputs.name,
              "symlink": tmp_path / "link.jsonl", "raw replies": tmp_path / "sub.jsonl"}[how]
    if how == "symlink":
        output.symlink_to(inputs)
    if how == "raw replies":  # <output>.raw.jsonl would be appended to the input
        inputs = inputs.rename(side_file_for(output))
    with pytest.raises(UserError, match="input"):
        infer(input=str(inputs), output=str(output), backend="extractive")
    assert inputs.read_bytes() == before


def test_an_output_inside_the_model_directory_is_refused(tmp_path, inputs):
    model_dir = tmp_path / "model" / "run"
    model_dir.mkdir(parents=True)
    (model_dir / "prompt.json").write_text("{}")
    with pytest.raises(UserError, match="is a file of --model_path"):
        infer(input=str(inputs), output=str(model_dir / "prompt.json"), model_path=str(model_dir), backend="openai",
              endpoint="http://127.0.0.1:9/v1", model="m")
    assert (model_dir / "prompt.json").read_text() == "{}"


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_an_output_path_that_cannot_be_a_file_is_one_line_before_generation(tmp_path, inputs, where, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "plain.txt").write_text("x")
    output = tmp_path / "taken" if where == "a directory" else tmp_path / "plain.txt" / "sub.jsonl"
    with FakeChatServer(fields_reply) as server:
        with pytest.raises(SystemExit) as stop:
            run(infer, ["--input", str(inputs), "--output", str(output), "--backend", "openai",
                        "--endpoint", server.endpoint, "--model", "m"])
    assert stop.value.code == 2 and server.requests == []  # nothing generated (or paid for)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(output) in err[0]
    assert ("is a directory" if where == "a directory" else "is a file, not a directory") in err[0]


# ---------------------------------------------------------------- the final check decides the exit code


def test_a_submission_that_fails_the_check_exits_non_zero(tmp_path, inputs, monkeypatch, capsys):
    from emotion_summary.predicting.submission import SubmissionReport

    broken = SubmissionReport("sub.jsonl", 3, errors=["sub.jsonl:line 2: invalid JSON"])
    monkeypatch.setattr("emotion_summary.predicting.predict.check_submission", lambda *a, **k: broken)
    with pytest.raises(SystemExit) as stop:
        run(infer, ["--input", str(inputs), "--output", str(tmp_path / "sub.jsonl"), "--backend", "extractive"])
    assert stop.value.code == 1  # the checker's "not ready" code
    captured = capsys.readouterr()
    assert "NOT READY" in captured.out and "failed the submission check" in captured.err


def test_replies_with_nothing_usable_are_not_ready_to_submit(tmp_path, inputs, capsys):
    with FakeChatServer(lambda messages: "I cannot help with that.") as server:
        with pytest.raises(SystemExit) as stop:
            run(infer, ["--input", str(inputs), "--output", str(tmp_path / "sub.jsonl"), "--backend", "openai",
                        "--endpoint", server.endpoint, "--model", "m", "--max_retries", "0"])
    assert stop.value.code == 1
    captured = capsys.readouterr()
    assert "no usable reply" in captured.err and "ready to submit" not in captured.out


def test_a_garbled_reply_is_retried_then_counted_refused_not_a_traceback(tmp_path, inputs):
    first = read_records(inputs)[0]
    hostile = iter([None, "[" * 100_000])  # the first report's two tries

    def reply(messages):
        return next(hostile) if first.experience_and_reflection[:40] in messages[-1]["content"] else \
            fields_reply(messages)

    out = tmp_path / "sub.jsonl"
    with FakeChatServer(reply) as server:
        infer(input=str(inputs), output=str(out), backend="openai", endpoint=server.endpoint, model="m",
              max_retries=1, concurrency=1)
    saved = {row["id"]: row for row in read_jsonl_tolerant(side_file_for(out))}
    assert "garbled reply" in saved[first.id]["error"] and saved[first.id]["raw"] == ""


def test_a_garbled_saved_reply_is_dropped_on_load_and_asked_again(tmp_path, inputs):
    out = tmp_path / "sub.jsonl"
    args = dict(input=str(inputs), output=str(out), backend="openai", model="m", concurrency=1)
    with FakeChatServer(fields_reply) as server:
        infer(endpoint=server.endpoint, **args)
        side = side_file_for(out)
        rows = read_jsonl_tolerant(side)
        rows[0]["raw"] = "\ud800" + "[" * 100_000  # written by an older version
        side.write_text("".join(json.dumps(r) + "\n" for r in rows))
        infer(endpoint=server.endpoint, **args)
        assert len(server.requests) == 3 + 1


def test_another_endpoint_asks_again(tmp_path, inputs):
    args = dict(input=str(inputs), output=str(tmp_path / "sub.jsonl"), backend="openai", model="m", concurrency=1)
    with FakeChatServer(fields_reply) as first, FakeChatServer(fields_reply) as second:
        infer(endpoint=first.endpoint, **args)
        infer(endpoint=second.endpoint, **args)
        assert len(first.requests) == len(second.requests) == 3


# ---------------------------------------------------------------- an endpoint that refuses everything


def test_an_endpoint_that_refuses_every_report_stops_and_keeps_no_refusal(tmp_path, inputs):
    out = tmp_path / "sub.jsonl"
    args = dict(input=str(inputs), output=str(out), backend="openai", model="m", max_retries=0, concurrency=1)
    with FakeChatServer(lambda messages: (400, "model 'm' does not support chat")) as server:
        with pytest.raises(MostlyRefused, match="refused 3 of the 3 reports.*None of the refusals is kept"):
            infer(endpoint=server.endpoint, **args)
    assert not out.exists()  # no all-baseline submission that "passes"
    assert read_jsonl_tolerant(side_file_for(out)) == []
    with FakeChatServer(fields_reply) as fixed:
        infer(endpoint=fixed.endpoint, **args)
        assert len(fixed.requests) == 3  # the rerun sends every report again


def test_most_of_many_reports_refused_stops_early(tmp_path, inputs):
    many = [r.__class__(**{**r.__dict__, "id": i}) for i in range(30) for r in read_records(inputs)[:1]]
    path = write_records(tmp_path / "many.jsonl", many)
    with FakeChatServer(lambda messages: (422, "unprocessable")) as server:
        with pytest.raises(MostlyRefused):
            infer(input=str(path), output=str(tmp_path / "sub.jsonl"), backend="openai", model="m",
                  endpoint=server.endpoint, max_retries=0, concurrency=1)
    assert len(server.requests) == 8  # judged after 8, not all 30 sent


# ---------------------------------------------------------------- saved replies: the exact request


def test_saved_replies_are_reused_only_for_the_same_request(tmp_path, inputs, capsys):
    out = tmp_path / "sub.jsonl"
    base = dict(input=str(inputs), output=str(out), backend="openai", model="m", concurrency=1)
    with FakeChatServer(fields_reply) as server:
        infer(endpoint=server.endpoint, **base)
        assert len(server.requests) == 3
        infer(endpoint=server.endpoint, **base)
        assert len(server.requests) == 3 and "reused 3 saved replies" in capsys.readouterr().out
        # Report 13 is Chinese: its prompt under --language zh is the one it had under auto.
        for change, asked in [(dict(max_new_tokens=100), 3), (dict(language="zh"), 2), (dict(model="other"), 3)]:
            sent = len(server.requests)
            infer(endpoint=server.endpoint, **{**base, **change})
            assert len(server.requests) == sent + asked, change
            assert f"{asked} saved for another request" in capsys.readouterr().out
        assert [r["max_tokens"] for r in server.requests[3:6]] == [100] * 3


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_openai_inference_keeps_finished_work_one_line_exit_130(tmp_path, inputs, capsys, ctrl_c_raises):
    answered = []

    def reply(messages):
        answered.append(1)
        if len(answered) == 2:
            _thread.interrupt_main()  # as if Ctrl-C were pressed while the second report is in flight
        return fields_reply(messages)

    out = tmp_path / "sub.jsonl"
    with FakeChatServer(reply) as server:
        with pytest.raises(SystemExit) as stop:
            run(infer, ["--input", str(inputs), "--output", str(out), "--backend", "openai", "--endpoint",
                        server.endpoint, "--model", "m", "--concurrency", "1"])
        assert stop.value.code == 130
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s" not in line
               and "report/s" not in line and "|" not in line]
        assert err == [f"interrupted: finished replies are saved in {side_file_for(out)}; run the same command "
                       "again to resume"]
        kept = read_jsonl_tolerant(side_file_for(out))
        assert len(kept) >= 1 and all(row["raw"] for row in kept)
        sent = len(server.requests)
        infer(input=str(inputs), output=str(out), backend="openai", endpoint=server.endpoint, model="m")
        assert len(server.requests) == sent + 3 - len(kept)


# ---------------------------------------------------------------- one prompt budget


def test_openai_prompts_fit_the_checkpoint_budget_even_when_the_template_costs_more(tmp_path, monkeypatch):
    """The openai backend used to subtract a fixed template margin and never check the result; with
    the margin too small, its prompts ran over max_seq_len - max_new_tokens. fit_report retries."""
    from tests.test_inference import make_checkpoint
    from emotion_summary.modeling.tokenizer import qwen2_tokenizer

    monkeypatch.setattr("emotion_summary.prompting.encode.TEMPLATE_MARGIN", 0)
    tokenizer_dir = tmp_path / "tok"
    tokenizer = qwen2_tokenizer()
    tokenizer.save_pretrained(str(tokenizer_dir))
    checkpoint = make_checkpoint(tmp_path / "run", tokenizer_dir, max_seq_len=1024, max_new_tokens=64)
    long = {"id": 1, "case_description": ["A client."], "consultation_process": ["She talked about work. " * 400],
            "experience_and_reflection": "Reflection."}
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps(long) + "\n")
    with FakeChatServer(fields_reply) as server:
        infer(input=str(inputs), output=str(tmp_path / "out.jsonl"), model_path=str(checkpoint),
              backend="openai", endpoint=server.endpoint, model="served")
    messages = server.requests[0]["messages"]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert "tokens trimmed" in messages[1]["content"]
    assert 1024 - 64 - 40 < len(ids) <= 1024 - 64  # the checkpoint's max_new_tokens, and no more than the budget


# ---------------------------------------------------------------- the command lines


@pytest.mark.parametrize("argv, said", [
    (["--batch_size", "abc"], "--batch_size: expected an integer, got 'abc'"),
    (["--concurrency", "0"], "--concurrency: expected an integer >= 1 and <= 256, got 0"),
    (["--max_retries", "-1"], "--max_retries: expected an integer >= 0 and <= 100, got -1"),
    (["--backend", "vllm"], "--backend: expected one of hf, openai, extractive, got 'vllm'"),
    (["--language", "fr"], "--language: expected one of en, zh, auto, got 'fr'"),
])
def test_a_mistyped_option_is_one_line_and_exit_2(tmp_path, inputs, argv, said, capsys):
    from emotion_summary.commands import inference

    with pytest.raises(SystemExit) as stop:
        inference([str(inputs), "--output", str(tmp_path / "o.jsonl"), "--backend", "extractive", *argv]
                  if "--backend" not in argv else [str(inputs), "--output", str(tmp_path / "o.jsonl"), *argv])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {said}"
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("script", ["inference_qwen2.py", "merge_adapter.py"])
def test_every_script_answers_help(script):
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / script
    out = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage:")
    assert ("--max_new_tokens" in out.stdout) if script == "inference_qwen2.py" else ("--out_dir" in out.stdout)
