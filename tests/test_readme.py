"""The README's lists of commands stay true as commands are added (English and Chinese parts)."""

import re
import tomllib

import pytest

from emotion_summary.commands import FUNCTION_COMMANDS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
ENGLISH, CHINESE = README.split("\n## 中文说明", 1)


def layout_row(part: str) -> str:
    return next(line for line in part.splitlines() if line.startswith("| `scripts/` |"))


@pytest.mark.parametrize("part", [ENGLISH, CHINESE], ids=["en", "zh"])
def test_layout_names_every_script_and_every_console_command(part):
    scripts = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
    assert [s for s in scripts if f"`{s}`" not in layout_row(part)] == []
    console = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    # `es` (the one command with subcommands) is documented by the README rewrite; until then it is
    # tested by test_cli.py's es tests, and only the es-* names are required here
    assert [c for c in console if c != "es" and f"`{c}`" not in part] == []


def config_sentence(part: str) -> str:
    return next(m.group(0) for m in re.finditer(r"[^。\n]*(?:\n[^。\n]+)*?--config FILE`", part)
                if "evaluate.py" in m.group(0))


def script_of(command: str) -> str:
    return next(p.name for p in [*(ROOT / "scripts").glob("*.py"), ROOT / "eval" / "evaluate.py"]
                if f"import {command}\n" in p.read_text())


def test_the_config_file_sentence_names_every_command_that_reads_one():
    takers = [script_of(c) for c, (_, _, config_file) in FUNCTION_COMMANDS.items() if config_file]
    assert [s for s in takers if s not in config_sentence(ENGLISH)] == []
    # the Chinese sentence names training, inference and labelling in words, the newer commands by file
    assert [s for s in ("synthesize_reports.py", "evaluate.py") if s not in config_sentence(CHINESE)] == []


def test_side_files_are_named_as_the_code_names_them():
    from emotion_summary.label import rejects_path
    from emotion_summary.replies import side_file_for

    assert rejects_path("x/labelled.jsonl").name == "labelled.rejects.jsonl"  # `<output stem>.rejects.jsonl`
    assert side_file_for("x/sub.jsonl").name == "sub.jsonl.raw.jsonl"  # `<output>.raw.jsonl`
    assert "<output>.rejects.jsonl" not in README and "<output stem>.raw.jsonl" not in README
