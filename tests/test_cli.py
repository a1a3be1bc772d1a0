"""The command lines: generated from one definition per option, typed at the boundary, one line per problem."""

import json
import subprocess
import sys

import pytest

from emotion_summary import commands
from emotion_summary.core.cli import Option, Usage, function_options, parse_command_line
from emotion_summary.training.config import TrainConfig, resolve_config, validate
from emotion_summary.core.errors import ConfigError, RunDirError
from tests.conftest import ROOT, refused

SCRIPTS = sorted([*ROOT.glob("scripts/*.py"), *ROOT.glob("eval/*.py")])


def command_of(script):
    """The emotion_summary.commands function a script calls (its last import line names it)."""
    line = next(x for x in script.read_text().splitlines() if x.startswith("from emotion_summary.commands import"))
    return line.split()[-1]


def options_of(command: str) -> list[Option]:
    if command == "train":
        from emotion_summary.training.command import command_options
    elif command == "pipeline":
        from emotion_summary.pipeline import command_options
    else:
        import importlib

        module, name, _ = commands.FUNCTION_COMMANDS[command]
        return function_options(getattr(importlib.import_module(f"emotion_summary.{module}"), name))
    return command_options()


def run_script(script, *args, cwd=None):
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_script_answers_help_and_rejects_a_mistyped_number_in_one_line(script, tmp_path):
    shown = run_script(script, "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: ") and "--" in shown.stdout
    options = options_of(command_of(script))
    numeric = [o for o in options if o.type in (int, float, int | None, float | None)]
    required = [a for o in options if o.required for a in (o.flag, "x")]
    if numeric:
        bad = run_script(script, *required, numeric[0].flag, "abc", cwd=tmp_path)
        expected = f"error: {numeric[0].flag}: expected "
    else:  # no numeric option: an unknown one is refused the same way
        bad = run_script(script, *required, "--no_such_option", "1", cwd=tmp_path)
        expected = "error: --no_such_option: unknown option"
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [bad.stderr.strip()] and bad.stderr.startswith(expected), bad.stderr
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_start_training_script_passes_help_through(tmp_path):
    import os

    shown = subprocess.run(["bash", str(ROOT / "start_training_qwen2.sh"), "--help"], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path, env={**os.environ, "VENV": str(tmp_path / "venv")})
    assert shown.returncode == 0, shown.stderr
    assert "PRESET=" in shown.stdout and "--predict_input" in shown.stdout and "--lora_r" in shown.stdout
    assert not (tmp_path / "venv").exists()  # --help creates and installs nothing


def test_seed_abc_leaves_no_half_written_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands.train(["--preset", "cpu-smoke", "--output_dir", str(tmp_path / "r"), "--seed", "abc"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --seed: expected an integer, got 'abc'\n"
    assert not (tmp_path / "r").exists()


def test_every_command_line_problem_is_reported_at_once(capsys):
    with pytest.raises(SystemExit):
        commands.train(["--batch_size", "abc", "--fold", "1.5", "--train_data", "", "--lora_rank", "4",
                        "--language", "fr", "--resume=maybe", "--seed", "1", "--seed", "2"])
    assert capsys.readouterr().err.splitlines() == [
        "error: --batch_size: expected an integer, got 'abc'",
        "error: --fold: expected an integer, got '1.5'",
        "error: --train_data: expected a value, got an empty string",
        "error: --lora_rank: unknown option",
        "error: --language: expected one of en, zh, auto, got 'fr'",
        "error: --resume: expected true or false, got 'maybe'",
        "error: --seed: given more than once",
    ]


def test_values_are_typed_and_flags_take_every_spelling():
    opts = [Option("n", int, 0), Option("x", float, 1.0), Option("flag", bool, False), Option("path", str),
            Option("ids", list[int] | None, None), Option("more", str, variadic=True)]
    got = parse_command_line(opts, ["a.jsonl", "b", "c", "--n=3", "--x", "2.5", "--flag", "--ids", "1,2"])
    assert got == {"path": "a.jsonl", "more": ["b", "c"], "n": 3, "x": 2.5, "flag": True, "ids": [1, 2]}
    assert parse_command_line(opts, ["--path", "p", "--noflag"]) == {"path": "p", "flag": False}
    assert parse_command_line(opts, ["--path", "p", "--flag", "false"]) == {"path": "p", "flag": False}
    assert parse_command_line(opts, ["--path", "p", "--ids", "none"]) == {"path": "p", "ids": None}
    with pytest.raises(Usage) as e:
        parse_command_line(opts, ["--x", "nan", "--ids", "1,,2"])
    assert e.value.problems == ["--x: expected a finite number, got 'nan'",
                                "--ids: expected a comma-separated list without empty items, got '1,,2'",
                                "--path: required"]


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "lora_r: 8\nlearning_rate: 1.0e-4\ntrain_data: [a.jsonl, b.jsonl]\nseed: 7\n"),
    (".json", json.dumps({"lora_r": 8, "learning_rate": 1e-4, "train_data": ["a.jsonl", "b.jsonl"], "seed": 7})),
])
def test_config_file_gives_values_and_the_command_line_wins(suffix, text, tmp_path):
    from emotion_summary.training.command import command_options

    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    got = parse_command_line(command_options(), ["--config", str(path), "--seed", "3"], config_file=True)
    assert got == {"seed": 3, "lora_r": 8, "learning_rate": 1e-4, "train_data": ["a.jsonl", "b.jsonl"]}


def test_config_file_problems_name_the_option(tmp_path):
    from emotion_summary.training.command import command_options

    path = tmp_path / "bad.yaml"
    path.write_text("lora_r: eight\nlora_rank: 4\nresume: 1\n")
    with pytest.raises(Usage) as e:
        parse_command_line(command_options(), ["--config", str(path)], config_file=True)
    assert e.value.problems == ["--lora_r: expected an integer, got 'eight'", "--config: unknown option 'lora_rank'",
                                "--resume: expected bool, got 1"]


# Every preset's values, written out when the presets became partial overrides of TrainConfig's
# defaults: the restructuring changed no value.
GPU_CARDS = dict(model_name_or_path="Qwen/Qwen2-7B-Instruct", learning_rate=2e-4, epochs=3, max_new_tokens=512,
                 optimizer="paged_adamw_8bit", max_steps=0, folds=0, eval_every=50, save_every=50,
                 offload_activations=True, max_records=0)
PINNED = {
    "8gb": dict(GPU_CARDS, max_seq_len=8192, batch_size=1, grad_accum=16, mlp_tile_tokens=2048,
                embedding_on_cpu=True, lm_head_4bit=True),
    "12gb": dict(GPU_CARDS, max_seq_len=32768, batch_size=1, grad_accum=16, mlp_tile_tokens=4096,
                 embedding_on_cpu=False, lm_head_4bit=False),
    "24gb": dict(GPU_CARDS, max_seq_len=32768, batch_size=2, grad_accum=8, mlp_tile_tokens=16384,
                 embedding_on_cpu=False, lm_head_4bit=False),
    "cpu-smoke": dict(max_seq_len=1024, batch_size=2, grad_accum=1, offload_activations=False, mlp_tile_tokens=0,
                      embedding_on_cpu=False, lm_head_4bit=False, model_name_or_path="tiny", learning_rate=5e-3,
                      epochs=2, max_new_tokens=96, optimizer="adamw", max_steps=6, folds=3, eval_every=3,
                      save_every=3, max_records=24, compute_dtype="fp32"),
}
COMMON = dict(quantization="nf4", lora_r=16, lora_alpha=32, lora_target="all-linear", gradient_checkpointing=True,
              warmup_ratio=0.05, weight_decay=0.0, attn_implementation="auto", liger_kernels="auto", seed=42,
              compute_dtype="auto", fold=0, language="auto", train_data=[], eval_data=[])


@pytest.mark.parametrize("name", sorted(PINNED))
def test_presets_resolve_to_their_pinned_values_and_keep_card_metadata_out_of_the_run_config(name):
    saved = resolve_config(name).to_dict()
    pinned = {**COMMON, **PINNED[name]}
    assert {k: saved[k] for k in pinned} == pinned
    assert saved["preset"] == name and saved["output_dir"] == f"model/qwen2-es-{name}"
    assert "description" not in saved and "min_vram_gb" not in saved and "resume" not in saved


def test_silently_accepted_options_are_errors(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("{}")
    same = validate(resolve_config("cpu-smoke", train_data=str(data), eval_data=str(data)))
    assert any("eval_data" in p and "is also training data" in p for p in same)
    assert validate(resolve_config("cpu-smoke", train_data="")) == ["train_data: expected a value, got an empty string"]
    assert validate(resolve_config("cpu-smoke", fold=1.5)) == ["fold: expected int, got 1.5"]
    assert "fold: 2 given without --folds N" in validate(resolve_config("cpu-smoke", folds=0, fold=2))


def test_resume_needs_an_existing_unfinished_run(tmp_path):
    from emotion_summary.training.run_dir import RunDir

    with pytest.raises(RunDirError, match="no run to resume here"):
        RunDir(tmp_path / "missing").resume_config({})
    resolve_config("cpu-smoke", lora_r=8, output_dir=str(tmp_path / "r")).save(tmp_path / "r")
    cfg = RunDir(tmp_path / "r").resume_config({"preset": "auto", "max_steps": 9})
    assert cfg.lora_r == 8 and cfg.max_steps == 9 and cfg.preset == "cpu-smoke"
    with pytest.raises(RunDirError, match="another config: lora_r: 8 != 4"):
        RunDir(tmp_path / "r").resume_config({"lora_r": 4})


def test_a_new_run_reports_the_run_directory_with_every_other_problem_at_once(tmp_path, capsys):
    """A finished run in --output_dir used to hide a missing --train_data: both come in one go."""
    run = tmp_path / "run"
    resolve_config("cpu-smoke", output_dir=str(run)).save(run)
    (run / "COMPLETE").write_text("done\n")
    missing = tmp_path / "train.jsonl"
    lines = refused(commands.train, ["--preset", "auto", "--train_data", str(missing), "--output_dir", str(run),
                                     "--lora_r", "0"], capsys)
    assert lines[0] == "error: the config has problems:"
    assert f"  - data file {missing}: no such file" in lines
    assert f"  - {run} holds a finished run; choose another --output_dir" in lines
    assert "  - lora_r: expected an integer >= 1, got 0" in lines and len(lines) == 4


def _labelled(rid, report, gold, language=None):
    from emotion_summary.data.records import GOLD_FIELDS, record_from_dict

    row = {"id": rid, "case_description": [report], "consultation_process": [report],
           "experience_and_reflection": report, **{k: gold for k in GOLD_FIELDS}}
    if language:
        row["label_source"] = {"model": "teacher", "language": language}
    return record_from_dict(row, "t.jsonl", rid)


EN = "The client felt anxious about work and slept badly for months."
ZH = "来访者因工作压力感到焦虑，几个月来睡眠不好。"


def test_training_prompt_language_follows_the_labels():
    from emotion_summary.training.train_data import training_language

    assert training_language("auto", [_labelled(1, EN, EN), _labelled(2, ZH, ZH)]) == "auto"
    assert training_language("auto", [_labelled(1, ZH, EN, "en"), _labelled(2, EN, EN)]) == "en"
    assert training_language("auto", [_labelled(1, ZH, EN)]) == "en"  # no record of the labeller: the gold's
    assert training_language("zh", [_labelled(1, ZH, EN, "en")]) == "zh"  # said explicitly: kept
    with pytest.raises(ConfigError, match="more than one language"):
        training_language("auto", [_labelled(1, ZH, EN, "en"), _labelled(2, EN, ZH, "zh")])


def test_preset_auto_prints_what_it_chose_before_anything_loads(tmp_path, capsys, monkeypatch):
    from emotion_summary.training import command as train_module

    monkeypatch.setattr(train_module, "detect_vram_gb", lambda: None)
    train_module.build_config("auto", output_dir=str(tmp_path / "r"))
    out = capsys.readouterr().out
    import torch

    from emotion_summary.modeling.device import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    dtype = "bfloat16 (the CPU has bf16 instructions)" if native else "float32 (the CPU has no bf16 instructions)"
    assert ("preset cpu (--preset auto: no CUDA GPU); model smollm2-135m, quantization none, "
            f"compute dtype {dtype}, {torch.get_num_threads()} CPU threads (OMP_NUM_THREADS)") in out
    assert "from the preset: " in out and "folds=3" in out and "max_steps=48" in out
    assert not (tmp_path / "r").exists()


def test_train_config_fields_each_have_help():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(TrainConfig))


def test_outputs_onto_inputs_directories_or_under_files_are_refused_before_any_work(tmp_path, capsys, fixtures):
    gold = str(fixtures / "es_eval_gold.jsonl")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert refused(commands.stats, [gold, "--out_dir", str(a_file)], capsys) == [
        f"error: --out_dir {a_file}: is a file, not a directory"]
    assert refused(commands.write_fold, [gold, "--out_dir", str(a_file / "sub")], capsys) == [
        f"error: --out_dir {a_file / 'sub'}: {a_file} is a file, not a directory"]
    pred = tmp_path / "run.json"
    pred.write_text("{}")
    assert refused(commands.evaluate, ["--pred", str(pred), "--gold", gold, "--out_dir", str(tmp_path),
                                       "--name", "run"], capsys) == [
        f"error: --out_dir/run.json {pred}: is the input --pred {pred}; write the output elsewhere"]
    (tmp_path / "scores.md").mkdir()
    assert refused(commands.evaluate, ["--pred", str(pred), "--gold", gold, "--out_dir", str(tmp_path),
                                       "--name", "scores", "--judge_cache", gold], capsys) == [
        f"error: --out_dir/scores.md {tmp_path / 'scores.md'}: is a directory; give a file name",
        f"error: --judge_cache {gold}: is the input --gold {gold}; write the output elsewhere"]
    assert "output_dir: " + f"{a_file}: is a file, not a directory" in "\n".join(
        validate(resolve_config("cpu-smoke", output_dir=str(a_file))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "run.json", "scores.md"]


def test_a_failed_assertion_in_the_fake_servers_handler_fails_the_test():
    from emotion_summary.teacher.client import ChatClient, EndpointError
    from tests.chat_server import FakeChatServer

    def reply(messages):
        assert messages[0]["content"] == "expected", "the handler's own check"
        return "ok"

    with pytest.raises(AssertionError, match="the handler's own check"):
        with FakeChatServer(reply) as server:
            client = ChatClient(server.endpoint, "m", max_retries=0, backoff_s=0.0, timeout_s=10)
            with pytest.raises(EndpointError):
                client.chat([{"role": "user", "content": "other"}])


def test_console_entry_points_are_the_scripts_commands():
    import tomllib

    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {v.split(":")[1] for v in entry.values()}
    assert all(v.startswith("emotion_summary.commands:") and callable(getattr(commands, v.split(":")[1]))
               for v in entry.values())
    assert targets - {"main"} == {command_of(script) for script in SCRIPTS}  # one per script, and `es`


def test_resuming_a_missing_run_is_an_error_not_a_new_run(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert refused(commands.train, ["--output_dir", str(missing), "--resume"], capsys) == [
        f"error: {missing}: no run to resume here (no train_config.json); start one without --resume"]
    assert refused(commands.train, ["--resume"], capsys) == [
        "error: --resume: give --output_dir, the run directory to continue"]
    assert not missing.exists()


def test_help_names_a_console_command_without_its_install_path(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/es-write-fold", "--help"])
    with pytest.raises(SystemExit) as stop:
        commands.write_fold()
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: es-write-fold INPUT ")


# ---------------------------------------------------------------- es COMMAND


def test_es_help_lists_every_subcommand_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as stop:
        commands.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "predict", "check", "evaluate", "plan", "label", "synthesize", "stats", "fold",
                 "download", "merge", "pipeline", "install-torch", "convert-psyqa"):
        assert f"\n  {name} " in out, name
    assert "130 interrupted" in out


def test_es_subcommands_run_the_same_functions_as_the_scripts_and_console_scripts():
    import re

    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^([\w-]+) = "([^"]+)"', section, re.M))
    assert scripts["es"] == "emotion_summary.commands:main"
    dispatched = {fn for fn, _ in commands.ES_COMMANDS.values()}
    for target in scripts.values():
        name = target.split(":")[1]
        assert name == "main" or getattr(commands, name) in dispatched, target
    assert {command_of(s) for s in SCRIPTS} <= {fn.__name__ for fn in dispatched}


def test_es_subcommand_help_names_it_and_a_check_that_fails_exits_1(tmp_path, capsys, gold_file):
    with pytest.raises(SystemExit) as stop:
        commands.main(["predict", "--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: es predict INPUT ")
    bad = tmp_path / "sub.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(SystemExit) as stop:
        commands.main(["check", str(bad)])
    assert stop.value.code == 1 and "NOT READY" in capsys.readouterr().out


def test_es_unknown_subcommand_is_one_line_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as stop:
        commands.main(["predcit", "x"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "did you mean 'predict'" in err


def test_es_runs_as_a_module(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "emotion_summary", "label", "--help"], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: ")
    assert "--max_reasks" in shown.stdout and "--max_retries" in shown.stdout and "[1..256]" in shown.stdout


@pytest.mark.parametrize("command", ["inference", "label_with_teacher", "synthesize_reports", "evaluate"])
def test_every_endpoint_command_has_the_one_endpoint_group_with_one_set_of_defaults(command):
    from emotion_summary.core.cli import EndpointOptions, dataclass_options

    group = {o.name: (o.type, o.default) for o in dataclass_options(EndpointOptions)}
    options = {o.name: (o.type, o.default) for o in options_of(command)}
    shared = {name: options[name] for name in group if name in options}
    # inference budgets with --max_new_tokens; each judge protocol fixes its reply length
    assert shared == {k: v for k, v in group.items() if k != "max_tokens" or command not in ("inference", "evaluate")}
    assert "max_reasks" in options or command in ("inference", "evaluate")


def test_sigterm_is_handled_as_ctrl_c_in_the_one_place_that_maps_exit_codes(capsys):
    import os
    import signal
    import time

    from emotion_summary.core.cli import call
    from emotion_summary.core.errors import NotReady

    def killed():
        os.kill(os.getpid(), signal.SIGTERM)  # docker stop, timeout
        time.sleep(5)

    with pytest.raises(SystemExit) as stop:
        call(killed)
    assert stop.value.code == 130 and "terminated (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    with pytest.raises(SystemExit) as stop:
        call(lambda: (_ for _ in ()).throw(NotReady("not ready: 3 errors")))
    assert stop.value.code == 1 and capsys.readouterr().err == "error: not ready: 3 errors\n"


def test_option_has_a_signature_so_it_defines_on_every_python_311():
    """Python 3.11.0-3.11.3's dataclass builds the class signature for its docstring and fails on a
    default that inspect reads as "no default" (Debian 12's stock Python 3.11.2 could not import the
    CLI); a valid signature is what it needs."""
    import inspect

    from emotion_summary.core.cli import REQUIRED, Option

    assert inspect.signature(Option).parameters["default"].default is REQUIRED  # raised ValueError before
    assert Option("x").required and not Option("x", default=None).required
    assert REQUIRED is not inspect.Parameter.empty
