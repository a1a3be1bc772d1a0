"""The user docs (README.md, README.zh.md, docs/*.md) stay true as the code changes: every relative link
resolves, every `python scripts|eval|bench/...` command names a script that exists and passes only
options its parser accepts, and the English and Chinese files of a page give the same commands."""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = sorted([ROOT / "README.md", ROOT / "README.zh.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CHECKED_SCRIPTS = ("scripts/", "eval/", "bench/")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code (links there are examples, not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            problems.append(f"{rel(page)}: {target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{rel(page)}: {target}: no heading with anchor #{anchor}")
    return problems


def bash_commands(page: Path) -> list[list[str]]:
    """Each command line of the page's ```bash blocks as shell words (comments and `\\` joins resolved)."""
    commands = []
    for lang, body in FENCE.findall(page.read_text(encoding="utf-8")):
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def checked_command(words: list[str]) -> list[str] | None:
    """`python scripts/X.py --a 1 ...` (after any VAR=value prefixes) as [script, args...], else None."""
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words = words[1:]
    if len(words) >= 2 and words[0] == "python" and words[1].startswith(CHECKED_SCRIPTS):
        return words[1:]
    return None


def option_name(flag: str) -> str:
    """--max-new-tokens and --max_new_tokens are the same option to the parser."""
    return "--" + flag[2:].replace("-", "_")


@functools.cache
def accepted_options(script: str) -> frozenset[str]:
    """The --options the script's own --help lists (bool ones also as --noNAME)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{script} --help failed: {proc.stderr[-2000:]}"
    options = set()
    for name, kind in re.findall(r"^\s+(--[\w-]+)(?: (\S+))?", proc.stdout, re.M):
        options.add(option_name(name))
        if kind == "bool":
            options.add("--no" + name[2:])
    return frozenset(options)


def unaccepted_options(page: Path) -> list[str]:
    problems = []
    for words in bash_commands(page):
        command = checked_command(words)
        if command is None:
            continue
        script, args = command[0], command[1:]
        if not (ROOT / script).is_file():
            problems.append(f"{rel(page)}: {script}: no such script")
            continue
        given = {option_name(a.split("=", 1)[0]) for a in args if a.startswith("--")}
        problems += [f"{rel(page)}: {script} does not accept {o}" for o in sorted(given - accepted_options(script))]
    return problems


def twin(page: Path) -> Path:
    """README.md <-> README.zh.md, docs/x.md <-> docs/x.zh.md."""
    name = page.name
    return page.with_name(name[:-6] + ".md" if name.endswith(".zh.md") else name[:-3] + ".zh.md")


ENGLISH = [p for p in PAGES if not p.name.endswith(".zh.md")]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_python_command_names_a_script_and_options_it_accepts(page):
    assert unaccepted_options(page) == []


@pytest.mark.parametrize("page", ENGLISH, ids=rel)
def test_both_languages_give_the_same_commands_and_link_each_other(page):
    chinese = twin(page)
    assert chinese.is_file(), f"{rel(page)} has no Chinese twin {rel(chinese)}"
    assert bash_commands(chinese) == bash_commands(page)
    assert f"]({chinese.name})" in page.read_text(encoding="utf-8").split("\n\n", 2)[1]  # at the top
    assert f"]({page.name})" in chinese.read_text(encoding="utf-8").split("\n\n", 2)[1]


@pytest.mark.parametrize("readme", ["README.md", "README.zh.md"])
def test_the_readme_stays_a_short_guide(readme):
    assert len((ROOT / readme).read_text(encoding="utf-8").splitlines()) <= 300


def test_the_checks_catch_a_broken_link_an_unknown_option_and_a_missing_script(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Real heading\n", encoding="utf-8")
    page.write_text("[a](other.md#real-heading) [b](other.md#gone) [c](missing.md) `[d](x.md)`\n\n"
                    "```bash\npython scripts/write_fold.py --input a.jsonl \\\n    --fold 1 --no_such 2  # note\n"
                    "python scripts/nothing_here.py --x 1\nvllm serve --whatever\n```\n", encoding="utf-8")
    assert [p.split(": ", 1)[1] for p in broken_links(page)] == [
        "other.md#gone: no heading with anchor #gone", "missing.md: no such file"]
    problems = unaccepted_options(page)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "scripts/write_fold.py does not accept --no_such", "scripts/nothing_here.py: no such script"]


def test_side_files_are_named_as_the_code_names_them():
    from emotion_summary.teacher.label import rejects_path
    from emotion_summary.prompting.replies import side_file_for

    assert rejects_path("x/labelled.jsonl").name == "labelled.rejects.jsonl"  # `<output stem>.rejects.jsonl`
    assert side_file_for("x/sub.jsonl").name == "sub.jsonl.raw.jsonl"  # `<output>.raw.jsonl`
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    assert "<output>.rejects.jsonl" not in text and "<output stem>.raw.jsonl" not in text
