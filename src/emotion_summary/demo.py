"""`es-demo` / scripts/demo.py: a Gradio page to try the summariser on one report.

Paste a report (a JSON record of an ES file, or plain text) or pick an example, choose a backend (a
trained checkpoint or any model directory, an OpenAI-compatible endpoint, or the extractive baseline)
and get the five fields and the submission line. The page only calls the product's public functions
(`inference.make_backend`, `inference.summarise`, `submission.submission_row`); it holds no logic of
its own. Needs the optional extra `demo` (pip install -e .[demo]); the hf backend needs `train` too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from emotion_summary.core.errors import UserError
from emotion_summary.data.records import GOLD_FIELDS, Record, read_records, record_from_paste
from emotion_summary.scoring.report_html import FIELD_TITLES

BACKEND_CHOICES = {"checkpoint (hf)": "hf", "endpoint (openai)": "openai", "extractive": "extractive"}
DEFAULT_EXAMPLES = Path("data") / "longemotion" / "Emotion_Summary_example.jsonl"


def example_records(path: str | None) -> list[Record]:
    """The reports to pick from: --examples, else the official examples when downloaded, else the
    package's English samples."""
    from emotion_summary.data.sample_data import SAMPLE_EN

    if path:
        return read_records(path)
    return read_records(DEFAULT_EXAMPLES if DEFAULT_EXAMPLES.is_file() else SAMPLE_EN)


def example_label(record: Record) -> str:
    start = (record.case_description or record.consultation_process or ("",))[0]
    return f"{record.id}: {start[:70]}"


def record_json(record: Record) -> str:
    return json.dumps({"id": record.id, **record.inputs()}, ensure_ascii=False, indent=1)


class Summariser:
    """Backends built once per choice (a checkpoint loads on its first report and stays loaded)."""

    def __init__(self):
        self.backends: dict[tuple, object] = {}

    def __call__(self, report: str, backend: str, model_path: str, endpoint: str, model: str,
                 max_new_tokens: float | None) -> tuple:
        from emotion_summary.predicting.predict import make_backend, summarise
        from emotion_summary.predicting.submission import submission_row

        try:
            record = record_from_paste(report)
            key = (BACKEND_CHOICES[backend], model_path.strip() or None, endpoint.strip() or None,
                   model.strip() or None, int(max_new_tokens) if max_new_tokens else None)
            if key not in self.backends:
                self.backends[key] = make_backend(key[0], model_path=key[1], endpoint=key[2], model=key[3],
                                                  max_new_tokens=key[4])
            result = summarise([record], self.backends[key])
        except UserError as e:
            return (*[""] * len(GOLD_FIELDS), f"**Error:** {e}", "")
        fields, filled = result.fields[record.id], result.filled.get(record.id, [])
        note = (f"Filled from the extractive baseline (the model gave no text): {', '.join(filled)}." if filled
                else "All five fields came from the model." if key[0] != "extractive" else
                "Extractive baseline: sentences picked from the report.")
        line = json.dumps(submission_row(record.id, fields), ensure_ascii=False)
        return (*[fields[f] for f in GOLD_FIELDS], note, line)


def build_demo(examples: Sequence[Record], model_path: str | None = None, endpoint: str | None = None,
               model: str | None = None):
    import gradio as gr

    by_label = {example_label(r): r for r in examples}
    first_backend = "checkpoint (hf)" if model_path else "endpoint (openai)" if endpoint else "extractive"
    with gr.Blocks(title="emotion-summary demo", analytics_enabled=False) as page:
        gr.Markdown("# Emotion Summary\nPaste a counselling report or pick an example, choose a backend, "
                    "and get the five-part case summary with its leaderboard submission line.")
        with gr.Row():
            with gr.Column():
                first = next(iter(by_label), None)  # shown at once: the page works with one click
                pick = gr.Dropdown(list(by_label), value=first, label="example report", elem_id="pick")
                report = gr.Textbox(record_json(by_label[first]) if first else "", lines=14,
                                    label="report (a JSON record of an ES file, or plain text)", elem_id="report")
                backend = gr.Radio(list(BACKEND_CHOICES), value=first_backend, label="backend", elem_id="backend")
                path_box = gr.Textbox(model_path or "", label="checkpoint or model directory (hf)", elem_id="model_path")
                endpoint_box = gr.Textbox(endpoint or "", label="endpoint URL (openai), e.g. http://127.0.0.1:8000/v1",
                                          elem_id="endpoint")
                model_box = gr.Textbox(model or "", label="served model name (openai)", elem_id="model")
                budget = gr.Number(None, label="max new tokens (empty: the checkpoint's, else 512)", precision=0,
                                   elem_id="max_new_tokens")
                run = gr.Button("Summarise", variant="primary", elem_id="run")
            with gr.Column():
                fields = [gr.Textbox(label=FIELD_TITLES[f], lines=3, elem_id=f"out_{f}") for f in GOLD_FIELDS]
                note = gr.Markdown(elem_id="note")
                line = gr.Textbox(label="submission line (Emotion_Summary_Result.jsonl)", lines=3, elem_id="line")
        pick.change(lambda label: record_json(by_label[label]) if label in by_label else "", pick, report)
        run.click(Summariser(), [report, backend, path_box, endpoint_box, model_box, budget], [*fields, note, line])
    return page


def demo(examples: str | None = None, model_path: str | None = None, endpoint: str | None = None,
         model: str | None = None, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Open a page to summarise one report with a checkpoint, an endpoint or the extractive baseline.

    Args:
        examples: ES records to pick from; default data/longemotion/Emotion_Summary_example.jsonl when present,
            else the package's English samples.
        model_path: a trained adapter, merged model or plain model directory, preselected (hf backend).
        endpoint: base URL of an OpenAI-compatible server, preselected (openai backend).
        model: the model name that server serves.
        host: address to listen on (127.0.0.1: this machine only).
        port: port to listen on.
    """
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("the demo needs gradio: pip install -e .[demo]") from None
    page = build_demo(example_records(examples), model_path, endpoint, model)
    page.launch(server_name=host, server_port=port, share=False)
