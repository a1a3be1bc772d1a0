"""The one JSON parser for files a user hands us: hostile bytes are refused, never crash a reader.

`json.loads` alone accepts or crashes on what no ES file holds: nesting deep enough to raise
RecursionError here or in any later walk of the value, integers too long for `int()` (Python refuses
more than 4,300 digits with a ValueError), `NaN`/`Infinity`/`1e999`, and lone UTF-16 surrogate escapes
(`"\\ud800"`) that load as a str no UTF-8 encoder can write back. `load_json` refuses each with a
`json.JSONDecodeError` (its `msg` says what, its `lineno` where), so every reader that already reports
a decode error as `file:line N: invalid JSON (...)` reports these the same way.

Light: stdlib only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # an ES record nests 2 deep; a config or a fingerprints file 3
MAX_INT_DIGITS = 64  # ids are 64-bit at most

# A JSON string (skipped whole) or a bracket: brackets inside strings do not nest.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                                    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class HostileJSON(json.JSONDecodeError):
    """Valid-looking JSON that no ES file holds (too deep, too long a number, a lone surrogate)."""


def _check_depth(text: str) -> None:
    depth = 0
    for m in _STRING_OR_BRACKET.finditer(text):
        token = m.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise HostileJSON(f"nested deeper than {MAX_DEPTH} levels", text, m.start())
        elif token in "]}":
            depth -= 1


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits.lstrip('-')):,} digits (at most {MAX_INT_DIGITS})")
    return int(digits)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _has_surrogate(value: Any) -> bool:
    """Depth is bounded by MAX_DEPTH, so the recursion is too."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def _number_position(text: str, message: str) -> int:
    """Where the refused number is, for the line number (the parser's hooks do not know)."""
    if "digits" in message:
        m = re.search(r"-?\d{%d,}" % (MAX_INT_DIGITS + 1), text)
    else:
        m = re.search(r"NaN|-?Infinity|-?\d+(?:\.\d+)?[eE][+-]?\d{3,}", text)
    return m.start() if m else 0


def load_json(text: str) -> Any:
    """`json.loads(text)`, refusing hostile input with a HostileJSON (a json.JSONDecodeError)."""
    _check_depth(text)
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # raised by a hook
        raise HostileJSON(str(e), text, _number_position(text, str(e))) from None
    except RecursionError:  # cannot happen below MAX_DEPTH; kept so no reader ever sees a traceback
        raise HostileJSON("nested too deep", text, 0) from None
    if _has_surrogate(value):
        m = _LONE_SURROGATE_ESCAPE.search(text)
        where = m.start() if m else 0
        shown = m.group() if m else "\\ud8xx"
        raise HostileJSON(f"a lone surrogate escape {shown} in a string (not a character; no UTF-8 text holds it)",
                          text, where)
    return value
