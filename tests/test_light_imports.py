"""Checking, converting and scoring never pay for torch/transformers/peft imports."""

import pkgutil
import subprocess
import sys

import emotion_summary

LIGHT = ["records", "atomic_io", "prompt", "submission", "check", "metrics", "evaluate", "extractive", "judge",
         "psyqa", "folds", "label", "client", "presets", "config", "inference", "download", "pipeline", "encode", "stats", "sample_data", "text",
         "report_html", "quiet", "cli", "commands", "run_dir", "paths", "plots", "errors", "overlap", "synthesize",
         "install_torch", "replies", "backends", "model_identity", "gguf_models",
         # `--help` of train_qwen2.py imports train; the rest are imported by light modules' callers
         "train", "architectures", "distributed", "qwen_tokenizer_offline",
         # the GPU simulator's entry points (plan_memory's --help); its runtime and worker load torch
         "gpusim", "gpusim.planner", "gpusim.api", "gpusim.job", "gpusim.cards", "gpusim.archs"]
HEAVY = ["model", "loss", "decoding"]  # the model wrapper, its loss and decoding aids: torch at import, by design


def test_light_modules_import_no_heavy_library():
    code = ("import sys\n" + "".join(f"import emotion_summary.{m}\n" for m in LIGHT) +
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_module_is_listed_as_light_or_heavy():
    modules = {m.name for m in pkgutil.iter_modules(emotion_summary.__path__)}
    assert sorted(modules - set(LIGHT) - set(HEAVY)) == []  # a new module: say which it is
    assert sorted({m.split(".")[0] for m in LIGHT + HEAVY} - modules) == []
