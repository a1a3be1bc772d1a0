"""report.html: escaped, self-contained, worst reports first; rendered by a real headless chromium."""

import html
import re
import shutil
import subprocess

import pytest

from emotion_summary.scoring.evaluate import evaluate
from emotion_summary.data.records import read_records
from emotion_summary.scoring.report_html import render_html
from emotion_summary.predicting.submission import write_submission

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'"> & </div>'
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000"]


def chromium_binary() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture
def page(tmp_path, gold_file):
    """Evaluate a hostile run (text with tags) against the baseline-like gold copy; return the page."""
    records = read_records(gold_file)
    first = tmp_path / "good" / "Emotion_Summary_Result.jsonl"
    second = tmp_path / "hostile" / "Emotion_Summary_Result.jsonl"
    write_submission(first, {r.id: r.gold() for r in records}, [r.id for r in records])
    hostile = {r.id: {**r.gold(), "causes": HOSTILE} for r in records}
    hostile[records[-1].id] = {f: HOSTILE for f in records[-1].gold()}  # the worst report of the 2nd run
    write_submission(second, hostile, [r.id for r in records])
    evaluate(pred=str(second), gold=str(gold_file), compare=str(first), out_dir=str(tmp_path / "res"),
             name="cmp", bertscore=False)
    return tmp_path / "res" / "cmp.html", [r.id for r in records]


def test_all_text_is_escaped_and_nothing_is_fetched(page):
    path, ids = page
    text = path.read_text(encoding="utf-8")
    assert html.escape(HOSTILE) in text
    assert "<img" not in text and 'document.title="pwned"</script>' not in text
    assert text.count("<script>") == 1  # the page's own inline script, nothing else
    assert not re.search(r"""<[^>]*\b(src|href)\s*=|@import|url\(""", text)  # no external asset of any kind
    for rid in ids:
        assert f'data-id="{rid}"' in text


def test_worst_reports_come_first_with_both_runs_side_by_side(page):
    path, ids = page
    text = path.read_text(encoding="utf-8")
    order = [int(m) for m in re.findall(r'<section class="report" data-id="(\d+)"', text)]
    assert sorted(order) == sorted(ids) and order[0] == ids[-1]  # all five fields wrong: worst
    assert "hostile/Emotion_Summary_Result" in text and "good/Emotion_Summary_Result" in text
    assert "Δ +1.000" in text  # the compared run is perfect where the first is hostile


def test_judge_scores_per_report_when_present():
    results = {"gold": "g.jsonl", "ids": [7], "notes": [], "systems": [{
        "label": "run", "pred": "p.jsonl",
        "_preds": {7: {f: "text" for f in ("causes", "symptoms", "treatment_process",
                                            "characteristics_of_illness", "treatment_effect")}},
        "rouge": {"per_id": {7: {f: {"rouge-1": 0.5, "rouge-2": 0.25, "rouge-l": 0.5}
                                 for f in ("causes", "symptoms", "treatment_process",
                                           "characteristics_of_illness", "treatment_effect")}},
                  "per_field": {f: {"rouge-l": 0.5} for f in ("causes", "symptoms", "treatment_process",
                                                               "characteristics_of_illness", "treatment_effect")},
                  "mean": {"rouge-l": 0.5}},
        "judge": {"mean": 4.0, "per_field": {f: {"mean": 4.0} for f in (
            "causes", "symptoms", "treatment_process", "characteristics_of_illness", "treatment_effect")},
                  "per_id": {"7": {"causes": 4.5}}}}]}
    text = render_html(results)  # no gold given: no gold column
    assert "judge 4.50/5" in text and "<th>gold</th>" not in text and "0.500 / 4.00" in text


def test_a_real_browser_renders_every_report(page, tmp_path):
    browser = chromium_binary()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's `chromium` with apt-get when it can)")
    path, ids = page
    flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=120)
    dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    body = html.unescape(re.sub(r"<[^>]+>", " ", dom.split("<body", 1)[-1]))
    for rid in ids:
        assert f"Report {rid}" in body
    assert "pwned" not in dom.split("</title>")[0]  # the hostile script never ran
    assert "<img" not in dom
    assert f'data-shown="{len(ids)}"' in dom  # the page's own script ran to the end
    order = [int(m) for m in re.findall(r'<section class="report" data-id="(\d+)"', dom)]
    assert order[0] == ids[-1]  # worst first
    assert_not_blank(shot)

    # A view picked in the address: one field, in id order; the other fields' rows are hidden.
    view = subprocess.run([*flags, "--dump-dom", path.as_uri() + "#field=causes&order=id"],
                          capture_output=True, text=True, timeout=120).stdout
    assert [int(m) for m in re.findall(r'<section class="report" data-id="(\d+)"', view)] == sorted(ids)
    rows = re.findall(r'<tr data-field="(\w+)"( class="hidden")?', view)
    assert rows and all(bool(hidden) == (field != "causes") for field, hidden in rows)


def assert_not_blank(png_path):
    from PIL import Image

    img = Image.open(png_path).convert("RGB")
    assert img.size[0] >= 800
    colors = img.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50  # text, table borders and the header, not one flat colour
    dark = sum(n for n, (r, g, b) in colors if r + g + b < 200)
    assert dark > 0.001 * img.size[0] * img.size[1]  # some dark text or header pixels
