"""One writer per output: an exclusive OS lock held for a whole run, and what a command may append to.

`hold_outputs(paths)` locks each output (a file or a run directory) through a lock file beside it,
`.<name>.lock`, with `fcntl.flock` (`msvcrt.locking` on Windows), for as long as the `with` block runs.
A second run on the same output stops at once with a UserError naming the process that holds it (exit 2).
The OS drops the lock when its process ends, however it ends, so a run killed with kill -9 never leaves
a lock that blocks the next one; the lock file left behind is only a name. A run that ends normally
deletes its lock files.

Light: stdlib only.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from emotion_summary.core.errors import UserError

# Windows locks byte ranges, and a locked range cannot be read: lock a byte past the holder's note.
_WINDOWS_LOCK_OFFSET = 1 << 20
_HELD: dict[Path, int] = {}  # lock files this process holds -> how many `with` blocks hold each
_HELD_GUARD = threading.Lock()


class OutputBusy(UserError):
    """Another process is writing the output."""


def lock_path(output: str | os.PathLike) -> Path:
    """`.<name>.lock` beside `output`; the same for a file and a directory of that name."""
    p = Path(os.path.abspath(output))
    return p.with_name(f".{p.name}.lock")


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        note = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        note = ""
    return note.splitlines()[0][:300] if note else "another process"


def _note() -> bytes:
    command = " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])
    return f"pid {os.getpid()}: {command}\n".encode("utf-8", errors="replace")


def _acquire(output: Path) -> int | None:
    """The open, locked lock file of `output`; OutputBusy when another process holds it. None when no
    file can be made beside `output` (a path under a file, no permission): then the output cannot be
    written either, and the command's own checks say why in its words."""
    path = lock_path(output)
    for _ in range(20):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        if not _try_lock(fd):
            os.close(fd)
            raise OutputBusy(f"{output}: another run is writing it ({_holder(path)}); wait for it to end or "
                             f"stop it (its lock is {path})")
        try:  # a holder that was ending may have deleted the file we opened: lock the one on disk
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, _note())
            return fd
        os.close(fd)
    raise OutputBusy(f"{output}: could not take its lock {path}")


@contextmanager
def _hold_one(output: Path) -> Iterator[None]:
    key = lock_path(output)
    with _HELD_GUARD:
        held = _HELD.get(key, 0)
        fd = _acquire(output) if not held else None
        _HELD[key] = held + 1
    try:
        yield
    finally:
        with _HELD_GUARD:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
                if fd is not None:
                    try:  # while still locked: a process that opened it finds it gone and retries
                        key.unlink(missing_ok=True)
                    except OSError:  # Windows cannot delete an open file: it stays, as a name only
                        pass
                    os.close(fd)


@contextmanager
def hold_outputs(outputs: Iterable[Optional[str | os.PathLike]]) -> Iterator[None]:
    """Lock every output (None: not given) for the block; nested blocks of one process share a lock."""
    with ExitStack() as stack:
        for output in dict.fromkeys(Path(os.path.abspath(o)) for o in outputs if o is not None):
            stack.enter_context(_hold_one(output))
        yield
