"""Files are written whole or not at all; long runs append one finished item per line.

JSONL here is one JSON value per `\n`-ended line, read by `jsonl_lines` alone. Text may hold U+2028,
U+2029 and U+0085, which `str.splitlines()` (and some other tools) take for line ends: readers split
on `\n` only, and writers escape those three, so a file stays readable by any tool either way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from emotion_summary.core.errors import UserError
from emotion_summary.core.json_input import load_json

_UMASK_LOCK = threading.Lock()
# Line ends for str.splitlines() and JavaScript, but ordinary characters inside a JSON string.
_OTHER_LINE_ENDS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}
_OTHER_LINE_ENDS_RE = re.compile("[\u2028\u2029\u0085]")


def json_line(obj: Any) -> str:
    """`obj` as one JSONL line with its `\n`: readable text (no ASCII escapes), no other line ends."""
    return _OTHER_LINE_ENDS_RE.sub(lambda m: _OTHER_LINE_ENDS[m.group()], json.dumps(obj, ensure_ascii=False)) + "\n"


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every non-blank line of JSONL text, split on `\n` only."""
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield n, line


def _new_file_mode() -> int:
    """What open() would give a new file: 0o666 less the umask (mkstemp makes 0o600)."""
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return 0o666 & ~umask


def follow_umask(folder: str | os.PathLike, since_ns: int | None = None) -> None:
    """Give the files under `folder` (only those modified at or after `since_ns`, when given) the mode
    a plain open() would. Writers of large files that
    create them 0600 (safetensors, used by save_pretrained) would otherwise leave adapters and merged
    models unreadable to a server running as another user."""
    file_mode = _new_file_mode()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            info = os.stat(path)
            if since_ns is None or info.st_mtime_ns >= since_ns:
                os.chmod(path, file_mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`.

    The file gets the permissions of a plain open() (the umask), so e.g. a server running as another
    user can read an adapter's prompt.json."""
    return atomic_write_files({path: data})[0]


def _written_beside(path: Path, data: bytes) -> Path:
    """`data` in a new, fsynced temporary file beside `path` (removed again when writing fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a full disk says ENOSPC, not which file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    return Path(tmp)


def atomic_write_files(files: dict[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files all or none: every one goes to a temporary file first (a full disk stops
    here, naming the file, and removes them all), then each is renamed over its path. The renames
    cannot run out of space, so the files of one run never sit beside those of another."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            temps.append((_written_beside(Path(path), data), Path(path)))
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in temps:
        os.replace(tmp, path)
    return [path for _, path in temps]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """`obj` as an indented JSON document, as atomic_write_json writes it."""
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json_line(r) for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one finished item and fsync, so a killed run loses at most the line in flight."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json_line(row))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """Rows of a resumable run's append-only file, skipping unreadable lines (a torn last one too).

    Never writes: another process may be appending to the file (a shared judge cache)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for _, line in jsonl_lines(path.read_bytes().decode("utf-8", errors="replace")):
        try:
            rows.append(load_json(line))
        except json.JSONDecodeError:
            continue
    return rows


def first_foreign_line(path: str | os.PathLike) -> int | None:
    """The number of the first line of `path` that is not a JSON object (not UTF-8, plain text: not a
    file a JSONL writer appended to), or None. A last line without its newline is a torn row, not foreign."""
    path = Path(path)
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return raw[: e.start].count(b"\n") + 1
    torn = text.count("\n") + 1 if not text.endswith("\n") else None
    for n, line in jsonl_lines(text):
        try:
            ok = isinstance(load_json(line), dict)
        except ValueError:
            ok = False
        if not ok and n != torn:
            return n
    return None


def drop_repeated_ids(path: str | os.PathLike, is_valid: Callable[[dict], bool]) -> int:
    """Rewrite an append-only JSONL file keeping, of each id, the first row for which `is_valid(row)`
    (all its rows when none is): a file that two runs appended to heals on resume. Other lines, a torn
    last one too, stay as they are. Returns how many rows were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    parts = path.read_bytes().decode("utf-8", errors="surrogateescape").split("\n")
    rows: list[tuple[int, Any, bool]] = []  # (index in parts, id or None, valid)
    for i, part in enumerate(parts):
        try:
            row = load_json(part) if part.strip() else None
        except ValueError:
            row = None
        rid = row.get("id") if isinstance(row, dict) else None
        rows.append((i, rid if isinstance(rid, int) and not isinstance(rid, bool) else None,
                     isinstance(row, dict) and is_valid(row)))
    has_valid = {rid for _, rid, valid in rows if rid is not None and valid}
    kept_ids: set[int] = set()
    drop = set()
    for i, rid, valid in rows:
        if rid is None or (rid not in has_valid):
            continue
        if not valid or rid in kept_ids:
            drop.add(i)
        else:
            kept_ids.add(rid)
    if drop:
        text = "\n".join(part for i, part in enumerate(parts) if i not in drop)
        atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))
    return len(drop)


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
        follow_umask(tmp)  # everything in it is ours
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
    try:
        if out.exists() and not out.is_dir():  # someone's file, not a build of ours: never moved aside
            raise UserError(f"{out}: is a file, not a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
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
