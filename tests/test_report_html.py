"""report.html: escaped, self-contained, worst reports first; rendered by a real headless chromium."""

import html
import re
import subprocess

import pytest

from emotion_summary.scoring.evaluate import evaluate
from emotion_summary.data.records import read_records
from emotion_summary.scoring.report_html import render_html
from emotion_summary.predicting.submission import write_submission

from tests.cdp_browser import chromium_binary

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'"> & </div>'
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000"]


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
    assert "judge 4.50/5" in text and "<th>gold</th>" not in text
    assert "<tr><td>judge (1-5)</td><td>4.0000</td></tr>" in text and "<tr><td>Causes</td><td>4.000</td></tr>" in text


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


def many_reports(gold_file, n: int):
    """`n` gold records made from the fixture's English ones, ids 1..n; one has a word found nowhere else."""
    import dataclasses

    base = [r for r in read_records(gold_file) if r.id != 13]  # the English two
    out = []
    for i in range(1, n + 1):
        r = base[i % 2]
        out.append(dataclasses.replace(r, id=i, causes=r.causes + (" Zebrafinch." if i == 77 else "")))
    return out


def write_records(path, records):
    import json

    path.write_text("".join(json.dumps({"id": r.id, **r.inputs(), **r.gold()}) + "\n" for r in records),
                    encoding="utf-8")
    return path


def test_source_fallback_marks_unwrapped_gold_and_all_means_with_deltas(tmp_path, gold_file):
    from emotion_summary.predicting.predict import infer

    records = read_records(gold_file)
    wrapped = tmp_path / "gold.jsonl"
    first = records[0]
    write_records(wrapped, [dataclasses_replace(first, causes="A transfer to the stressful\nemergency ward."),
                            *records[1:]])
    gold_run = tmp_path / "gold-run" / "Emotion_Summary_Result.jsonl"
    write_submission(gold_run, {r.id: r.gold() for r in records}, [r.id for r in records])
    baseline = tmp_path / "baseline" / "Emotion_Summary_Result.jsonl"
    infer(input=str(wrapped), output=str(baseline), backend="extractive")
    evaluate(pred=str(gold_run), gold=str(wrapped), compare=str(baseline), out_dir=str(tmp_path / "res"),
             bertscore=False)
    text = (tmp_path / "res" / "gold-run_vs_baseline.html").read_text(encoding="utf-8")
    assert "<title>gold-run vs baseline · ES evaluation</title>" in text
    assert "A transfer to the stressful emergency ward." in text  # the hard wrap is gone
    assert text.count('class="fallback"') == 5 * len(records)  # every baseline field is the fallback's
    assert "<td>fields from the extractive fallback</td><td>not recorded</td><td>15 of 15 (100%)</td>" in text
    for metric in ("ROUGE-1 F1", "ROUGE-2 F1", "ROUGE-L F1"):
        assert f"<td>{metric}</td>" in text and f'aria-label="{metric}"' in text  # a table row and a chart
    assert "<th>Δ baseline − gold-run</th>" in text
    assert text.count('<details class="source">') == len(records)
    # the extractive baseline copies sentences of the report: they are marked in its source
    assert re.search(r'<mark class="m1">[^<]{20,}</mark>', text)
    chart = re.search(r'<svg[^>]*aria-label="ROUGE-L F1".*?</svg>', text).group(0)
    assert len(re.findall(r">\d\.\d{3}</text>", chart)) == 2  # a value label on each run's bar


def dataclasses_replace(record, **changes):
    import dataclasses

    return dataclasses.replace(record, **changes)


def test_search_and_sort_work_on_150_reports_in_a_real_browser(tmp_path, gold_file):
    browser = chromium_binary()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's `chromium` with apt-get when it can)")
    from emotion_summary.predicting.predict import infer

    gold = write_records(tmp_path / "gold.jsonl", many_reports(gold_file, 150))
    run = tmp_path / "extractive" / "Emotion_Summary_Result.jsonl"
    infer(input=str(gold), output=str(run), backend="extractive")
    evaluate(pred=str(run), gold=str(gold), out_dir=str(tmp_path / "res"), bertscore=False)
    page = (tmp_path / "res" / "extractive.html").as_uri()
    flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]

    def dom(view: str) -> str:
        return subprocess.run([*flags, "--dump-dom", page + view], capture_output=True, text=True, timeout=120).stdout

    found = dom("#q=zebrafinch")
    assert 'data-shown="1"' in found and "1 of 150 reports" in found
    assert re.findall(r'<section class="report" data-id="(\d+)"', found) == ["77"]  # the others are hidden
    assert len(re.findall(r'<section class="report hidden" data-id="\d+"', found)) == 149
    by_id = dom("#order=id&metric=rouge-1")
    order = [int(m) for m in re.findall(r'<section class="report[^"]*" data-id="(\d+)"', by_id)]
    assert order == list(range(1, 151)) and 'data-shown="150"' in by_id
    worst = dom("#metric=rouge-2&field=symptoms")
    values = [float(v) for v in re.findall(r'data-v-rouge-2-0-symptoms="([\d.]+)"', worst)]
    assert len(values) == 150 and values == sorted(values)
