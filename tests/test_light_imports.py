"""Checking, converting and scoring never pay for torch/transformers/peft imports."""

import pkgutil
import subprocess
import sys

import emotion_summary

LIGHT = ["core.atomic_io", "core.cli", "core.distributed", "core.errors", "core.paths", "core.plots", "core.quiet",
         "core.subprocess_jobs",
         "data.records", "data.psyqa", "data.download", "data.folds", "data.overlap", "data.text", "data.sample_data",
         "prompting.prompt", "prompting.encode", "prompting.replies",
         "predicting.predict", "predicting.backends", "predicting.extractive", "predicting.submission",
         "predicting.check",
         "scoring.metrics", "scoring.judge", "scoring.official_judge", "scoring.evaluate", "scoring.report_html",
         "data.lm_eval_data", "demo",
         "teacher.client", "teacher.label", "teacher.synthesize", "teacher.ask_loop",
         # `--help` of train_qwen2.py imports the train command; the model wrapper loads only when a run starts
         "training.config", "training.presets", "training.run_dir", "training.command", "training.trainer",
         "training.train_data", "training.checkpoints", "training.oom", "training.step",
         "modeling.identity", "modeling.architectures", "modeling.tokenizer", "modeling.gguf_models",
         "core.json_input", "core.output_lock", "core.text_escape", "gpusim.plan_options", "modeling.model_check",
         "commands", "pipeline", "stats", "install_torch",
         # the GPU simulator's entry points (plan_memory's --help); its runtime and worker load torch
         "gpusim", "gpusim.planner", "gpusim.api", "gpusim.job", "gpusim.cards", "gpusim.archs"]
# torch at import, by design: the model wrapper and what it is built from, the simulator's runtime
HEAVY = ["modeling.summary_model", "modeling.decoding", "modeling.loss", "modeling.device", "modeling.loading", "modeling.levers",
         "modeling.adapters", "modeling.generation", "modeling.merge"]


def test_light_modules_import_no_heavy_library():
    code = ("import sys\n" + "".join(f"import emotion_summary.{m}\n" for m in LIGHT) +
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_module_is_listed_as_light_or_heavy():
    modules = {m.name.removeprefix("emotion_summary.")
               for m in pkgutil.walk_packages(emotion_summary.__path__, "emotion_summary.") if not m.ispkg} - {"__main__"}
    gpusim_runtime = {m for m in modules if m.startswith("gpusim.")} - set(LIGHT)
    assert sorted(modules - set(LIGHT) - set(HEAVY) - gpusim_runtime) == []  # a new module: say which it is
    assert sorted(set(LIGHT + HEAVY) - modules - {"gpusim"}) == []  # no stale name
