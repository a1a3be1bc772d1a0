"""One writer per output: a second run on a busy output exits 2 naming the holder; a lock of a killed
run never blocks; links of inputs are refused; resumes heal repeated ids; a full disk writes nothing
half; SIGTERM keeps in-flight paid replies as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from emotion_summary.core.atomic_io import read_jsonl_tolerant
from emotion_summary.teacher.client import ChatClient
from emotion_summary.core.cli import run
from emotion_summary.core.errors import UserError
from emotion_summary.scoring.evaluate import evaluate
from emotion_summary.predicting.extractive import extract_fields
from emotion_summary.predicting.predict import infer
from emotion_summary.teacher.label import label_file, label_with_teacher
from emotion_summary.core.output_lock import OutputBusy, hold_outputs, lock_path
from emotion_summary.data.records import read_records, write_records
from emotion_summary.prompting.replies import side_file_for
from emotion_summary.predicting.submission import write_submission
from emotion_summary.teacher.synthesize import synthesize_file, synthesize_reports
from tests.chat_server import FakeChatServer
from tests.synth_teacher import SMALL, teacher
from tests.test_inference_guards import fields_reply

ROOT = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent("""
    import sys, time
    from emotion_summary.core.output_lock import hold_outputs
    with hold_outputs(sys.argv[1:]):
        print("held", flush=True)
        time.sleep(60)
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}


@pytest.fixture
def holder():
    """Start a process that locks the given outputs; kill -9 it when the test ends."""
    procs = []

    def start(*paths) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, paths)], stdout=subprocess.PIPE,
                                env=_env(), text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def inputs(tmp_path, gold_file):
    path = tmp_path / "in.jsonl"
    path.write_bytes(gold_file.read_bytes())
    return path


def test_a_second_inference_on_a_busy_output_exits_2_naming_the_holder(tmp_path, inputs, holder, capsys):
    out = tmp_path / "sub.jsonl"
    proc = holder(out)
    with pytest.raises(SystemExit) as stop:
        run(infer, ["--input", str(inputs), "--output", str(out), "--backend", "extractive"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {proc.pid}" in err[0] and str(out) in err[0]
    assert not out.exists() and not side_file_for(out).exists()
    proc.kill()  # kill -9: the OS drops its lock; the file it leaves blocks nothing
    proc.wait()
    assert lock_path(out).exists()
    infer(input=str(inputs), output=str(out), backend="extractive")
    assert len(out.read_text().splitlines()) == 3
    assert not lock_path(out).exists()  # a run that ends deletes its lock file


def test_the_side_file_alone_is_locked_too(tmp_path, inputs, holder):
    out = tmp_path / "sub.jsonl"
    holder(side_file_for(out))
    with pytest.raises(OutputBusy):
        infer(input=str(inputs), output=str(out), backend="extractive")


def test_labelling_and_synthesis_refuse_a_busy_output(tmp_path, inputs, holder):
    out = tmp_path / "labelled.jsonl"
    holder(out, tmp_path / "synthetic.jsonl")
    with FakeChatServer(fields_reply) as server:
        with pytest.raises(OutputBusy, match="another run is writing it"):
            label_with_teacher(input=str(inputs), output=str(out), endpoint=server.endpoint, model="t")
        with pytest.raises(OutputBusy):
            synthesize_reports(n=1, output=str(tmp_path / "synthetic.jsonl"), endpoint=server.endpoint, model="t",
                               official=str(inputs))
        assert server.requests == []
    assert not out.exists()


def test_training_refuses_a_busy_run_dir_before_anything(tmp_path, holder):
    from emotion_summary.training.command import train

    run_dir = tmp_path / "run"
    holder(run_dir)
    with pytest.raises(OutputBusy):
        train(preset="cpu-smoke", output_dir=str(run_dir))
    assert not run_dir.exists()


def test_nested_holds_in_one_process_share_the_lock(tmp_path):
    with hold_outputs([tmp_path / "a"]):
        with hold_outputs([tmp_path / "a"]):
            pass
        assert lock_path(tmp_path / "a").exists()
    assert not lock_path(tmp_path / "a").exists()


# ---------------------------------------------------------------- links of inputs


def test_a_hard_link_of_the_input_is_refused_as_an_output(tmp_path, inputs):
    link = tmp_path / "link.jsonl"
    os.link(inputs, link)
    before = inputs.read_bytes()
    with FakeChatServer(fields_reply) as server:
        with pytest.raises(UserError, match="is the input --input"):
            label_with_teacher(input=str(inputs), output=str(link), endpoint=server.endpoint, model="t")
    side = side_file_for(tmp_path / "sub.jsonl")
    os.link(inputs, side)
    with pytest.raises(UserError, match="raw replies .* is the input --input"):
        infer(input=str(inputs), output=str(tmp_path / "sub.jsonl"), backend="extractive")
    assert inputs.read_bytes() == before


# ---------------------------------------------------------------- foreign files, repeated ids


def test_synthesis_refuses_to_append_to_a_text_file(tmp_path, inputs):
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n\nsome text\n")
    with FakeChatServer(teacher) as server:
        with pytest.raises(UserError, match=r"notes.md: line 1: not a JSON record"):
            synthesize_file("builtin", 1, notes, ChatClient(server.endpoint, "t", max_retries=0), "en", SMALL,
                            official=[inputs])
        assert server.requests == []
    assert notes.read_text() == "# my notes\n\nsome text\n"


def test_synthesis_resume_heals_repeated_ids(tmp_path, inputs):
    out = tmp_path / "synthetic.jsonl"
    with FakeChatServer(teacher) as server:
        client = ChatClient(server.endpoint, "t", max_retries=0)
        synthesize_file("builtin", 2, out, client, "en", SMALL, official=[inputs])
        lines = out.read_text().splitlines()
        out.write_text("\n".join([lines[0], lines[0], lines[1], lines[0]]) + "\n")  # two runs appended
        synthesize_file("builtin", 2, out, client, "en", SMALL, official=[inputs])
        assert len(server.requests) == 2
    assert out.read_text().splitlines() == lines
    assert len(read_records(out)) == 2


def test_labelling_resume_heals_repeated_ids(tmp_path, inputs):
    from emotion_summary.data.records import Record

    bare = [Record(r.id, r.case_description, r.consultation_process, r.experience_and_reflection)
            for r in read_records(inputs)]
    src = write_records(tmp_path / "bare.jsonl", bare)
    out = tmp_path / "labelled.jsonl"
    with FakeChatServer(fields_reply) as server:
        client = ChatClient(server.endpoint, "t", max_retries=0)
        label_file(src, out, client, language="auto")
        lines = out.read_text().splitlines()
        out.write_text("\n".join([lines[0], lines[1], lines[0], lines[2], lines[1]]) + "\n")
        counts = label_file(src, out, client, language="auto")
        assert counts["labelled"] == 0 and len(server.requests) == 3
    assert out.read_text().splitlines() == lines
    assert len(read_records(out, require_gold=True)) == 3


# ---------------------------------------------------------------- a full disk


def _run_with_file_size_limit(code: str, limit_bytes: int) -> subprocess.CompletedProcess:
    """`code` in a child whose files cannot grow past `limit_bytes` (RLIMIT_FSIZE: writes fail with EFBIG,
    as on a full disk)."""
    resource = pytest.importorskip("resource")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                          preexec_fn=limit, timeout=600)


def test_evaluate_on_a_full_disk_writes_all_four_outputs_or_none(tmp_path, gold_file):
    records = read_records(gold_file)
    sub = tmp_path / "a" / "sub.jsonl"
    write_submission(sub, {r.id: r.gold() for r in records}, [r.id for r in records])
    res = tmp_path / "res"
    evaluate(pred=str(sub), gold=str(gold_file), out_dir=str(res), name="run", bertscore=False)
    before = {p.name: p.read_bytes() for p in res.iterdir()}
    write_submission(sub, {r.id: extract_fields(r) for r in records}, [r.id for r in records])
    sizes = sorted(len(b) for b in before.values())
    code = ("from emotion_summary.commands import evaluate\n"
            f"evaluate(['--pred', {str(sub)!r}, '--gold', {str(gold_file)!r}, '--out_dir', {str(res)!r}, "
            "'--name', 'run', '--bertscore', 'false'])")
    done = _run_with_file_size_limit(code, sizes[-2] - 1)  # the largest two files cannot be written
    assert done.returncode == 2, done.stderr
    err = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(res / "run.") in err[0] and "Traceback" not in done.stderr, done.stderr
    assert {p.name: p.read_bytes() for p in res.iterdir()} == before  # the first run's four, untouched


@pytest.mark.slow
def test_a_full_disk_in_a_training_checkpoint_exits_2_in_one_line_and_leaves_no_tmp(tmp_path):
    run_dir = tmp_path / "run"
    code = ("from emotion_summary.commands import train\n"
            f"train(['--preset', 'cpu-smoke', '--max_steps', '2', '--save_every', '1', '--output_dir', {str(run_dir)!r}])")
    done = _run_with_file_size_limit(code, 256 * 1024)
    assert done.returncode == 2, done.stderr[-3000:]
    err = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "could not write the checkpoint" in err[0] and "Traceback" not in done.stderr
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob(".step-*"))


# ---------------------------------------------------------------- SIGTERM


def test_sigterm_keeps_the_replies_in_flight_as_ctrl_c_does(tmp_path, inputs):
    out = tmp_path / "sub.jsonl"
    state = {"proc": None, "n": 0}
    lock = threading.Lock()

    def reply(messages):
        with lock:
            state["n"] += 1
            n = state["n"]
        if n == 2:  # both reports in flight: stop the run as docker stop does
            while state["proc"] is None:
                time.sleep(0.01)
            state["proc"].send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the replies arrive after the signal
        return fields_reply(messages)

    with FakeChatServer(reply) as server:
        code = ("from emotion_summary.commands import inference\n"
                f"inference(['--input', {str(inputs)!r}, '--output', {str(out)!r}, '--backend', 'openai', "
                f"'--endpoint', {server.endpoint!r}, '--model', 'm', '--concurrency', '2'])")
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=_env(), text=True)
        state["proc"] = proc
        _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 143), err
    assert "Traceback" not in err and "interrupted" in err
    kept = read_jsonl_tolerant(side_file_for(out))
    assert len(kept) == 2 and all(row["raw"] for row in kept)  # both paid replies in flight were kept


def test_a_judge_cache_that_is_a_hard_link_of_the_gold_is_refused(tmp_path, gold_file):
    gold = tmp_path / "gold.jsonl"
    gold.write_bytes(gold_file.read_bytes())
    records = read_records(gold)
    sub = tmp_path / "sub.jsonl"
    write_submission(sub, {r.id: r.gold() for r in records}, [r.id for r in records])
    (tmp_path / "res").mkdir()
    os.link(gold, tmp_path / "res" / "judge_cache.jsonl")  # the default cache of --out_dir res
    with pytest.raises(UserError, match="judge_cache .* is the input --gold"):
        evaluate(pred=str(sub), gold=str(gold), out_dir=str(tmp_path / "res"), bertscore=False, judge=True,
                 endpoint="http://127.0.0.1:9/v1", model="judge")
    assert gold.read_bytes() == gold_file.read_bytes()
