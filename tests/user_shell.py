"""Run a user's shell commands (`python scripts/...` as the docs write them) with this test run's Python.

A bare symlink to `sys.executable` is not enough: a virtualenv's `bin/python` is itself a link, and
Python started through a second link in a folder without `pyvenv.cfg` does not find the virtualenv,
so it runs with the system's site-packages (and, on a clean machine, without tqdm or transformers).
A two-line wrapper that execs `sys.executable` keeps the virtualenv.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_wrapper_dir(folder: Path) -> Path:
    """`folder/python` and `folder/python3` exec this test run's interpreter; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        wrapper = folder / name
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        wrapper.chmod(0o755)
    return folder


def user_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """os.environ with `bin_dir` first on PATH, the checkout's src importable and no API key."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
