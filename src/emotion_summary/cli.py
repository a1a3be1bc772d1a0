"""Entry-point glue: the typed function is the CLI (fire); user errors become one clean line."""

from __future__ import annotations

import sys
from typing import Callable

from emotion_summary.errors import UserError


def run(fn: Callable | dict, argv: list[str] | None = None):
    """`fire.Fire(fn)`, but a UserError (and a missing file) exits 2 with a one-line message."""
    import fire

    try:
        return fire.Fire(fn, command=argv)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
