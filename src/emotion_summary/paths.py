"""Checks on the files a command will write, made before any work: an output never replaces an input,
and an output file can be created where it is asked for. Light: stdlib only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from emotion_summary.errors import UserError

PathLike = str | os.PathLike


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def refuse_overwrite(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None]) -> None:
    """UserError when an output resolves to an input (symlinks, `..` and hard links included) or two
    outputs resolve to one file. Keys name the options, e.g. {"--output": path}; None values are skipped."""
    outs = [(name, Path(p)) for name, p in outputs.items() if p is not None]
    ins = [(name, Path(p)) for name, p in inputs.items() if p is not None]
    for i, (out_name, out) in enumerate(outs):
        for in_name, inp in ins:
            if _same_file(out, inp):
                raise UserError(f"{out_name} {out} is the input {in_name} {inp}; writing it would destroy "
                                "the input: choose another output path")
        for other_name, other in outs[i + 1:]:
            if _same_file(out, other):
                raise UserError(f"{out_name} {out} and {other_name} {other} are the same file")


def check_output_file(option: str, path: PathLike) -> Path:
    """UserError unless `path` can be written as a file: it is no directory, and no parent is a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a directory; give a file path (e.g. {path / 'out.jsonl'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path}: {parent} is a file, not a directory")
            break
    return path


def check_output_dir(option: str, path: PathLike) -> Path:
    """UserError unless `path` can be a directory: it is no file, and no parent is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, not a directory")
    return check_output_file(option, path) if not path.exists() else path
