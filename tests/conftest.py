from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("EMOTION_SUMMARY_SHARED", ROOT.parent / "shared" / "data"))


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for a test that presses Ctrl-C (`_thread.interrupt_main`). A shell
    that starts the tests in the background ignores SIGINT, Python then installs no handler, and
    interrupt_main does nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def shared_data() -> Path:
    """../shared/data when present (the developers' machine and CI); a user's clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def gold_file(fixtures) -> Path:
    """Two English and one Chinese short report with gold fields, written for the tests."""
    return fixtures / "es_eval_gold.jsonl"


@pytest.fixture
def records(gold_file):
    from emotion_summary.data.records import read_records

    return read_records(gold_file)


def refused(command, argv, capsys) -> list[str]:
    """The stderr lines of a command that must stop with exit 2 (a usage or user error)."""
    with pytest.raises(SystemExit) as exit_info:
        command(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory) -> Path:
    """One training step of the `cpu` preset on the real SmolLM2-135M-Instruct: a real adapter, made once
    per test session (skips where the model's GGUF cannot be had)."""
    from emotion_summary.core.errors import ModelError
    from emotion_summary.modeling.gguf_models import SMOLLM2, gguf_file
    from emotion_summary.training.command import train

    try:
        gguf_file(SMOLLM2)
    except ModelError as e:
        pytest.skip(f"SmolLM2's GGUF is not available here: {e}")
    run = tmp_path_factory.mktemp("smollm2") / "run"
    train(preset="cpu", output_dir=str(run), max_steps=1, max_seq_len=512, max_new_tokens=64, folds=0,
          save_every=1, eval_every=1)
    return run
