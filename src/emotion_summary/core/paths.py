"""Output paths checked before any work: never onto an input, never a directory where a file goes,
never under a file. Every problem is listed at once (UserError, one line each). Light: no imports
from the package but errors."""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Mapping, Optional, Union

from emotion_summary.core.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]
Named = Mapping[str, Optional[PathLike]]  # option name (as the user typed it) -> path; None: not given

# Files the command line itself read (`--config FILE`): inputs of whatever command runs next.
_COMMAND_LINE_INPUTS: ContextVar[dict] = ContextVar("command_line_inputs", default={})


def set_command_line_inputs(named: Named) -> None:
    """Record the files the command line read (the parser calls this once per command line), so
    `refuse_overwrite` protects them as it protects the command's own inputs."""
    _COMMAND_LINE_INPUTS.set(dict(named))


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is a file (nothing can be created under it)."""
    for parent in path.parents:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def _unwritable(name: str, path: Path, is_dir: bool = False) -> list[str]:
    """Nothing can be created in the nearest existing folder at (a directory) or above `path`
    (permissions, a read-only disk)."""
    candidates = [path.absolute()] * is_dir + list(path.absolute().parents)
    folder = next((parent for parent in candidates if parent.exists()), None)
    if folder is None or not folder.is_dir() or os.access(folder, os.W_OK | os.X_OK):
        return []
    return [f"{name} {path}: cannot write in {folder} (no permission, or a read-only file system)"]


def output_file_problems(name: str, path: PathLike) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return [f"{name} {p}: is a directory; give a file name"]
    above = _file_above(p)
    return [f"{name} {p}: {above} is a file, not a directory"] if above else _unwritable(name, p)


def output_dir_problems(name: str, path: PathLike) -> list[str]:
    p = Path(path)
    if p.exists() and not p.is_dir():
        return [f"{name} {p}: is a file, not a directory"]
    above = _file_above(p)
    return [f"{name} {p}: {above} is a file, not a directory"] if above else _unwritable(name, p, is_dir=True)


def missing_file(path: PathLike) -> str | None:
    """Why `path` cannot be read as an input file ('no such file', 'is a directory'); None when it can."""
    p = Path(path)
    return None if p.is_file() else "is a directory" if p.is_dir() else "no such file"


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same path after symlinks, or (both existing) the same device and
    inode, so a hard link of an input is caught too."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.is_file() and b.is_file() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_unreadable(inputs: Named) -> None:
    """Raise UserError, one line per option, when an input file given by name is missing or a directory."""
    problems = [f"{name} {p}: {missing_file(p)}" for name, p in inputs.items() if p is not None and missing_file(p)]
    if problems:
        raise UserError("\n".join(problems))


def refuse_overwrite(outputs: Named, inputs: Named, dirs: Named | None = None) -> None:
    """Raise UserError before any work when an output file resolves to an input, is a directory or
    lies under a file, or an output directory is a file or lies under one.

    outputs: output files by option name, e.g. {"--output": "sub.jsonl"}; inputs likewise; dirs: output
    directories (whose files are not known yet, or are listed in `outputs` too)."""
    problems: list[str] = []
    given_inputs = {name: Path(p) for name, p in {**_COMMAND_LINE_INPUTS.get(), **inputs}.items() if p is not None}
    bad_dirs = set()
    for name, path in (dirs or {}).items():
        if path is not None and output_dir_problems(name, path):
            problems += output_dir_problems(name, path)
            bad_dirs.add(Path(path).resolve())
    written: dict[Path, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        if Path(path).resolve() in written:  # two outputs of one command on one file: one would be lost
            problems.append(f"{name} {path}: is also the output {written[Path(path).resolve()]}; give another path")
        written.setdefault(Path(path).resolve(), name)
        if not bad_dirs & set(Path(path).resolve().parents):  # else said once, for the directory
            problems += output_file_problems(name, path)
        problems += [f"{name} {path}: is the input {in_name} {in_path}; write the output elsewhere"
                     for in_name, in_path in given_inputs.items() if _same_file(Path(path), in_path)]
    if problems:
        raise UserError("\n".join(dict.fromkeys(problems)))
