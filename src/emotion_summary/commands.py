"""Every command of the project, as a `main(argv=None)`: the scripts in scripts/ and eval/ and the
console entry points in pyproject.toml call these. Modules load only when their command runs, so
`--help` answers at once."""

from __future__ import annotations

import importlib
from typing import Callable

# command -> (module, function, accepts --config FILE)
FUNCTION_COMMANDS = {
    "check_submission": ("check", "check", False),
    "convert_psyqa": ("psyqa", "convert_psyqa", False),
    "download_data": ("download", "download_data", False),
    "inference": ("inference", "infer", True),
    "label_with_teacher": ("label", "label_with_teacher", True),
    "merge_adapter": ("model", "merge_adapter", False),
    "stats": ("stats", "stats", False),
    "write_fold": ("folds", "write_fold", False),
    "evaluate": ("evaluate", "evaluate", True),
    "install_torch": ("install_torch", "install_torch", False),
    "synthesize_reports": ("synthesize", "synthesize_reports", True),
    "plan_memory": ("plan_options", "checked_plan_memory", False),  # range checks, then gpusim.planner
}


def _function_command(module: str, name: str, config_file: bool) -> Callable[..., None]:
    def main(argv: list[str] | None = None) -> None:
        from emotion_summary.cli import run

        run(getattr(importlib.import_module(f"emotion_summary.{module}"), name), argv, config_file)

    main.__name__ = name
    return main


# check_submission, convert_psyqa, ..., one `main` per entry of FUNCTION_COMMANDS (pyproject's es-* names them)
globals().update({command: _function_command(*spec) for command, spec in FUNCTION_COMMANDS.items()})


def train(argv: list[str] | None = None) -> None:
    from emotion_summary.train import main

    main(argv)


def pipeline(argv: list[str] | None = None) -> None:
    from emotion_summary.pipeline import main

    main(argv)
