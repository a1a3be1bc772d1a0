"""Files are written whole or not at all; long runs append one finished item per line."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one finished item and fsync, so a killed run loses at most the line in flight."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """Rows of a resumable run's append-only file, skipping unreadable lines (a torn last one too).

    Never writes: another process may be appending to the file (a shared judge cache)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def repair_jsonl_tail(path: str | os.PathLike) -> None:
    """Before appending to `path`: a last line without its newline (a killed writer) is cut off, or
    ended when it is a whole JSON row, so the next row starts on a line of its own."""
    path = Path(path)
    if not path.exists():
        return
    raw = path.read_bytes()
    if not raw or raw.endswith(b"\n"):
        return
    keep = raw.rfind(b"\n") + 1
    try:
        json.loads(raw[keep:])
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        os.truncate(path, keep)
        return
    with open(path, "ab") as f:
        f.write(b"\n")


@contextmanager
def atomic_dir(out: str | os.PathLike, complete: Callable[[Path], bool]) -> Iterator[Path]:
    """Build a directory whole or not at all: the block writes into a fresh `<out>.tmp-<pid>` beside
    `out`, which is published onto `out` when the block ends (publish_dir) and deleted when it raises.
    `complete(path) -> bool` says what a finished directory holds."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed earlier build that had the same pid
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out, complete)


def publish_dir(tmp: str | Path, out: str | Path, complete) -> Path:
    """Move the finished directory `tmp` onto `out` with os.replace, safe under concurrent builders:
    if another process published a complete `out` first, `tmp` is removed and theirs is kept; an
    incomplete `out` (a killed build of older code, a partial copy) is moved aside and deleted.
    `complete(path) -> bool` says what a finished directory holds."""
    tmp, out = Path(tmp), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(5):
            if complete(out):
                return out
            if out.exists():
                stale = out.with_name(f"{out.name}.stale-{os.getpid()}")
                try:
                    os.replace(out, stale)  # atomic: no other process ever sees it half deleted
                except FileNotFoundError:
                    pass
                else:
                    if complete(stale):  # completed by another process just now: put it back
                        try:
                            os.replace(stale, out)
                            return out
                        except OSError:
                            pass
                    shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, out)
                return out
            except OSError:  # a non-empty `out` appeared meanwhile: look at it again
                continue
        raise RuntimeError(f"could not publish {tmp} as {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there when another process won
