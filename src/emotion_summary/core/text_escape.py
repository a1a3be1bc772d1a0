"""Text from files and endpoints, escaped for where it is shown: a Markdown report, a terminal.

File names, labels, judge notes and keys of a user's file may hold `<img src=x onerror=...>`, Markdown
syntax, or terminal escapes (`\\x1b[2J` clears the screen): shown raw, they run or rewrite what the
reader sees. Light: stdlib only.
"""

from __future__ import annotations

import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~>])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def terminal_text(text: str) -> str:
    """`text` with every character a terminal would act on (controls, escapes, bidi overrides, line
    breaks) shown as a Python escape, as repr() shows it; printable text is left as it is."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def markdown_text(text: str) -> str:
    """`text` as literal Markdown inline text: no HTML, no emphasis, links, tables or headings; one line."""
    text = terminal_text(text)  # a newline would end a table row; a control character is never wanted
    text = "".join(_HTML.get(ch, ch) for ch in text)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def markdown_code(text: str) -> str:
    """`text` as an inline code span: literal in every CommonMark renderer (HTML in it is shown, never
    run); the fence is longer than any run of backticks inside."""
    text = terminal_text(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


__all__ = ["markdown_code", "markdown_text", "terminal_text"]
