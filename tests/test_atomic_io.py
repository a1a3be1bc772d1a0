"""A directory is built whole or not at all (atomic_dir): the tiny model, the tokenizer cache, bench adapters."""

import pytest

from emotion_summary.core.atomic_io import atomic_dir


def done(path):
    return (path / "done").is_file()


def test_a_finished_block_publishes_and_a_failed_one_leaves_nothing(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(out, done) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(out, done) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "done").write_text("x")
    assert done(out) and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_incomplete_directory_is_replaced_and_a_complete_one_kept(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "half").write_text("left by a killed build")
    with atomic_dir(out, done) as tmp:
        (tmp / "done").write_text("mine")
    assert sorted(p.name for p in out.iterdir()) == ["done"]
    with atomic_dir(out, done) as tmp:  # another process finished first: theirs stays
        (tmp / "done").write_text("late")
    assert (out / "done").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_file_where_the_directory_goes_is_refused_and_left_alone(tmp_path):
    from emotion_summary.core.errors import UserError

    target = tmp_path / "cache"
    target.write_text("someone's notes")
    with pytest.raises(UserError, match="is a file, not a directory"):
        with atomic_dir(target, lambda d: (d / "done").is_file()) as tmp:
            (tmp / "done").write_text("x")
    assert target.read_text() == "someone's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no .stale-PID copy, no temp dir


def test_stats_refuses_a_tokenizer_cache_that_is_a_file_before_any_work(tmp_path, capsys, gold_file):
    from emotion_summary import commands
    from tests.conftest import refused

    cache = tmp_path / "cache"
    cache.write_text("x")
    assert refused(commands.stats, [str(gold_file), "--out_dir", str(tmp_path / "s"), "--tokenizer_cache", str(cache)],
                   capsys) == [f"error: --tokenizer_cache {cache}: is a file, not a directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
