"""Coercions for values that fire parses by guesswork: `--flag false` arrives as the string 'false',
`--model 7` as the int 7."""

from __future__ import annotations

from emotion_summary.cli import UserError

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
