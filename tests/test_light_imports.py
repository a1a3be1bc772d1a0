"""Checking, converting and scoring never pay for torch/transformers/peft imports."""

import subprocess
import sys

LIGHT = ["records", "atomic_io", "prompt", "submission", "check", "metrics", "evaluate", "extractive", "judge",
         "psyqa", "folds", "label", "client", "presets", "config", "inference", "download", "pipeline", "encode", "stats", "sample_data", "text",
         "report_html", "quiet", "cli", "commands", "run_dir", "paths", "plots", "errors", "overlap", "synthesize",
         "install_torch", "replies", "backends", "model_identity"]


def test_light_modules_import_no_heavy_library():
    code = ("import sys\n" + "".join(f"import emotion_summary.{m}\n" for m in LIGHT) +
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
