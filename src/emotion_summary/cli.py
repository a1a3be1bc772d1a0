"""Entry-point glue: the typed function is the CLI (fire); known user errors become one clean line."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad input, bad option, missing file): printed without a traceback."""


def run(fn: Callable | dict, argv: list[str] | None = None):
    """`fire.Fire(fn)`, but RecordError / UserError / FileNotFoundError exit 2 with a one-line message."""
    import fire

    from emotion_summary.client import EndpointError
    from emotion_summary.records import RecordError

    try:
        return fire.Fire(fn, command=argv)
    except (RecordError, UserError, FileNotFoundError, EndpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
