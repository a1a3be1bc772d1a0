"""Every command of the project: `es SUBCOMMAND ...` dispatches through the table `ES_COMMANDS`, and
each subcommand is also a `main(argv=None)` function here that the scripts in scripts/ and eval/ and
the `es-*` console entry points call. Modules load only when their command runs, so `--help` answers
at once. Exit codes are documented in `emotion_summary.core.cli`."""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import Callable

# function command -> (module, function, accepts --config FILE): options from the function's signature
FUNCTION_COMMANDS = {
    "check_submission": ("predicting.check", "check", False),
    "convert_psyqa": ("data.psyqa", "convert_psyqa", False),
    "download_data": ("data.download", "download_data", False),
    "inference": ("predicting.predict", "infer", True),
    "label_with_teacher": ("teacher.label", "label_with_teacher", True),
    "merge_adapter": ("modeling.merge", "merge_adapter", False),
    "stats": ("stats", "stats", False),
    "write_fold": ("data.folds", "write_fold", False),
    "evaluate": ("scoring.evaluate", "evaluate", True),
    "install_torch": ("install_torch", "install_torch", False),
    "synthesize_reports": ("teacher.synthesize", "synthesize_reports", True),
    "plan_memory": ("gpusim.plan_options", "checked_plan_memory", False),  # range checks, then gpusim.planner
    "lm_eval_data": ("data.lm_eval_data", "lm_eval_data", False),
    "demo": ("demo", "demo", False),
}


def _run_function(command: str, argv: list[str] | None) -> None:
    from emotion_summary.core.cli import run

    module, name, config_file = FUNCTION_COMMANDS[command]
    run(getattr(importlib.import_module(f"emotion_summary.{module}"), name), argv, config_file)


def check_submission(argv: list[str] | None = None) -> None:
    _run_function("check_submission", argv)


def convert_psyqa(argv: list[str] | None = None) -> None:
    _run_function("convert_psyqa", argv)


def download_data(argv: list[str] | None = None) -> None:
    _run_function("download_data", argv)


def inference(argv: list[str] | None = None) -> None:
    _run_function("inference", argv)


def label_with_teacher(argv: list[str] | None = None) -> None:
    _run_function("label_with_teacher", argv)


def merge_adapter(argv: list[str] | None = None) -> None:
    _run_function("merge_adapter", argv)


def stats(argv: list[str] | None = None) -> None:
    _run_function("stats", argv)


def write_fold(argv: list[str] | None = None) -> None:
    _run_function("write_fold", argv)


def evaluate(argv: list[str] | None = None) -> None:
    _run_function("evaluate", argv)


def install_torch(argv: list[str] | None = None) -> None:
    _run_function("install_torch", argv)


def synthesize_reports(argv: list[str] | None = None) -> None:
    _run_function("synthesize_reports", argv)


def plan_memory(argv: list[str] | None = None) -> None:
    _run_function("plan_memory", argv)


def lm_eval_data(argv: list[str] | None = None) -> None:
    _run_function("lm_eval_data", argv)


def demo(argv: list[str] | None = None) -> None:
    _run_function("demo", argv)


def train(argv: list[str] | None = None) -> None:
    from emotion_summary.training.command import main

    main(argv)


def pipeline(argv: list[str] | None = None) -> None:
    from emotion_summary.pipeline import main

    main(argv)


# `es NAME` -> (the function it runs, one line for `es --help`), in the order a user meets them
ES_COMMANDS: dict[str, tuple[Callable[[list[str] | None], None], str]] = {
    "pipeline": (pipeline, "the main job: train, predict, check and score in one go"),
    "train": (train, "fine-tune Qwen2-7B-Instruct with QLoRA on labelled ES records (--preset / --config)"),
    "predict": (inference, "write a leaderboard submission (hf, openai or extractive backend)"),
    "check": (check_submission, "is a submission file ready for the leaderboard?"),
    "evaluate": (evaluate, "score a submission against gold: ROUGE, BERTScore, LLM judge"),
    "plan": (plan_memory, "will a preset fit a GPU? simulated peak memory on a named card"),
    "label": (label_with_teacher, "write summaries for unlabelled reports with a teacher model"),
    "synthesize": (synthesize_reports, "write synthetic case reports with a teacher model"),
    "stats": (stats, "token lengths of ES files: what fits which preset"),
    "fold": (write_fold, "write one k-fold split of an ES file"),
    "download": (download_data, "download LongEmotion ES and the PsyQA sample into data/"),
    "merge": (merge_adapter, "merge a LoRA adapter into its 16-bit base model"),
    "convert-psyqa": (convert_psyqa, "convert PsyQA questions into unlabelled ES records"),
    "install-torch": (install_torch, "install the torch build that fits this machine's GPU"),
    "demo": (demo, "a page to summarise one report with a checkpoint, an endpoint or the extractive baseline"),
    "lm-eval-data": (lm_eval_data, "write gold records as the benchmark's lm-eval task reads them"),
}


def es_help() -> str:
    width = max(map(len, ES_COMMANDS)) + 2
    rows = [f"  {name.ljust(width)}{summary}" for name, (_, summary) in ES_COMMANDS.items()]
    return "\n".join(["usage: es COMMAND [--option VALUE ...]", "",
                      "LongEmotion Emotion Summary: fine-tune, predict, check and score.", "", "commands:", *rows,
                      "", "es COMMAND --help lists the command's options. Exit codes: 0 done, 1 ran but the "
                      "result is not", "ready (e.g. a submission failing its check), 2 a problem to fix (one line "
                      "says which), 130 interrupted."]) + "\n"


def main(argv: list[str] | None = None) -> None:
    """`es COMMAND [options]`: the one command line of the project."""
    from emotion_summary.core.cli import command_name, fail

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(es_help(), end="")
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in ES_COMMANDS:
        near = difflib.get_close_matches(name.replace("_", "-"), ES_COMMANDS, n=1)
        fail(f"es: unknown command {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
             + f"; choose one of {', '.join(ES_COMMANDS)}")
    with command_name(f"es {name}"):
        ES_COMMANDS[name][0](rest)
