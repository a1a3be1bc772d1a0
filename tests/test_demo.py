"""The demo page (Gradio) in headless Chromium: pick or paste a report, summarise it with a local
checkpoint (a tiny random Qwen2 adapter), an OpenAI-compatible endpoint and the extractive baseline,
and read the five fields and the submission line off the page."""

import json
import socket

import pytest

from emotion_summary.data.records import GOLD_FIELDS, read_records, record_from_paste
from emotion_summary.predicting.submission import SUBMISSION_KEYS

from tests.cdp_browser import Browser, chromium_binary
from tests.chat_server import FakeChatServer


def test_a_pasted_report_is_json_or_plain_text():
    assert record_from_paste('{"id": 4, "case_description": ["a"], "consultation_process": ["b"], '
                             '"experience_and_reflection": "c"}').id == 4
    plain = record_from_paste("First session: she slept badly.\n\nSecond session: better.")
    assert plain.case_description == ("First session: she slept badly.",)
    assert plain.consultation_process == ("Second session: better.",)
    assert record_from_paste("One line only.").consultation_process == ("One line only.",)
    from emotion_summary.core.errors import UserError

    with pytest.raises(UserError, match="not valid JSON"):
        record_from_paste('{"id": 4,')


def test_the_summariser_answers_errors_on_the_page_not_with_a_traceback():
    from emotion_summary.demo import Summariser

    out = Summariser()("", "extractive", "", "", "", None)
    assert out[:5] == ("",) * 5 and "**Error:**" in out[5] and "is empty" in out[5]
    out = Summariser()("Some report text.", "checkpoint (hf)", "", "", "", None)
    assert "--backend hf needs --model_path" in out[5]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SET_TEXT = """(function(sel, text){
  var el=document.querySelector(sel);
  var proto=el.tagName==='TEXTAREA'?HTMLTextAreaElement.prototype:HTMLInputElement.prototype;
  Object.getOwnPropertyDescriptor(proto,'value').set.call(el,text);
  el.dispatchEvent(new Event('input',{bubbles:true})); el.dispatchEvent(new Event('change',{bubbles:true}));
  return true;})"""


def value_of(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)})||{{}}).value"


def run_and_read(browser) -> dict:
    """Click Summarise; the five fields, the note and the submission line once the line is new."""
    browser.js(f"{SET_TEXT}('#line textarea', '')")
    browser.js("document.querySelector('#run').click()")
    line = browser.wait_for(value_of("#line textarea"), timeout_s=180)
    fields = {f: browser.js(value_of(f"#out_{f} textarea")) for f in GOLD_FIELDS}
    return {"line": json.loads(line), "fields": fields, "note": browser.js("document.querySelector('#note').innerText")}


@pytest.mark.slow
def test_demo_page_summarises_with_checkpoint_endpoint_and_extractive(tmp_path, gold_file):
    pytest.importorskip("gradio")
    if chromium_binary() is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's `chromium` with apt-get when it can)")
    from emotion_summary.training.config import resolve_config
    from emotion_summary.demo import build_demo
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
    from emotion_summary.prompting.prompt import answer_text

    adapter = Qwen2EmotionSummaryModel.for_training(resolve_config("cpu-smoke")).save(tmp_path / "adapter")
    examples = read_records(gold_file)
    port = free_port()
    page = build_demo(examples, model_path=str(adapter))
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    served = {f: f"served {f}" for f in GOLD_FIELDS}
    try:
        with FakeChatServer(lambda messages: answer_text(served)) as server, Browser(tmp_path / "profile") as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            browser.wait_for("!!(document.querySelector('#report textarea') && document.querySelector('#run'))")
            # the first example is shown at once; picking the second from the dropdown puts its JSON in the box
            assert json.loads(browser.js(value_of("#report textarea")))["id"] == examples[0].id
            browser.js("var i=document.querySelector('#pick input'); i.focus();"
                       "i.dispatchEvent(new MouseEvent('mousedown',{bubbles:true})); i.click(); true")
            option = "document.querySelectorAll('li[data-testid=\"dropdown-option\"]')[1]"
            browser.wait_for(f"!!{option}")
            browser.js(f"{option}.dispatchEvent(new MouseEvent('mousedown',{{bubbles:true}})); {option}.click(); true")
            browser.wait_for(f"JSON.parse({value_of('#report textarea')}).id === {examples[1].id}")
            picked = json.loads(browser.js(value_of("#report textarea")))
            assert picked["case_description"] == list(examples[1].case_description)

            # 1. the local checkpoint preselected; a short budget (a random model writes no JSON: the
            # baseline fills every field, and the page says so)
            browser.js(f"{SET_TEXT}('#max_new_tokens input', '16')")
            checkpoint = run_and_read(browser)
            assert checkpoint["line"]["id"] == examples[1].id
            assert set(checkpoint["line"]) == {"id", *SUBMISSION_KEYS.values()}
            assert "Filled from the extractive baseline" in checkpoint["note"]

            # 2. an OpenAI-compatible endpoint, on a pasted plain-text report
            browser.js(f"{SET_TEXT}('#report textarea', {json.dumps('She could not sleep before exams.')})")
            browser.js("document.querySelector('#backend input[value=\"endpoint (openai)\"]').click()")
            browser.js(f"{SET_TEXT}('#endpoint textarea, #endpoint input', {json.dumps(server.endpoint)})")
            browser.js(f"{SET_TEXT}('#model textarea, #model input', 'es-model')")
            endpoint = run_and_read(browser)
            assert endpoint["fields"] == served and "All five fields came from the model" in endpoint["note"]
            assert endpoint["line"]["predicted_cause"] == "served causes"
            assert server.requests[-1]["model"] == "es-model"

            # 3. the extractive baseline
            browser.js("document.querySelector('#backend input[value=\"extractive\"]').click()")
            extractive = run_and_read(browser)
            assert extractive["fields"]["causes"] and "Extractive baseline" in extractive["note"]
            browser.screenshot(tmp_path / "demo.png")
    finally:
        page.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000


@pytest.mark.slow
def test_demo_page_summarises_with_the_real_small_model(tmp_path, smollm2_run):
    """The page on a checkpoint of the real SmolLM2-135M (one training step): it writes JSON from the
    answer prefix, so fields come from the model; the page says which, if any, the baseline filled."""
    pytest.importorskip("gradio")
    if chromium_binary() is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's `chromium` with apt-get when it can)")
    from emotion_summary.data.sample_data import SAMPLE_EN
    from emotion_summary.demo import build_demo

    examples = read_records(SAMPLE_EN)[:2]
    port = free_port()
    page = build_demo(examples, model_path=str(smollm2_run))
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with Browser(tmp_path / "profile") as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            browser.wait_for("!!(document.querySelector('#report textarea') && document.querySelector('#run'))")
            browser.js(f"{SET_TEXT}('#max_new_tokens input', '48')")
            got = run_and_read(browser)
            browser.screenshot(tmp_path / "demo-smollm2.png")
    finally:
        page.close()
    assert got["line"]["id"] == examples[0].id and set(got["line"]) == {"id", *SUBMISSION_KEYS.values()}
    assert all(got["fields"].values())
    filled = [f for f in GOLD_FIELDS if f in got["note"]] if "Filled from" in got["note"] else []
    assert len(filled) < len(GOLD_FIELDS)  # real weights after the JSON prefix: the model wrote some fields
    assert got["fields"]["causes"] == got["line"]["predicted_cause"]
