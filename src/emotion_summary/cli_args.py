"""Coercions for values that fire parses by guesswork: `--flag false` arrives as the string 'false',
`--model 7` as the int 7."""

from __future__ import annotations

from emotion_summary.errors import UserError

_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off", "none", ""}


def as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UserError(f"--{name}: expected true or false, got {value!r}")


def as_opt_str(value) -> str | None:
    return None if value is None else str(value)


def as_list(value, name: str, item=str) -> list | None:
    """`--x a,b` (a string), `--x [a,b]` (fire's list or tuple) or one value, as a list of `item`."""
    if value is None:
        return None
    parts = list(value) if isinstance(value, (list, tuple)) else [p for p in str(value).split(",") if p.strip()]
    try:
        return [item(str(p).strip()) for p in parts]
    except ValueError:
        raise UserError(f"--{name}: expected a comma-separated list of {item.__name__}, got {value!r}") from None
