"""Output paths across every command that writes files: never onto an input (the --config file
included), never a directory where a file goes, never under a file; one line, exit 2, nothing written."""

import json

import pytest

from emotion_summary import commands
from tests.conftest import refused


def tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def test_an_output_never_overwrites_the_config_file_it_was_given(tmp_path, capsys, gold_file):
    config = tmp_path / "scores.json"
    config.write_text(json.dumps({"pred": str(gold_file), "gold": str(gold_file), "bertscore": False}))
    before = tree(tmp_path)
    assert refused(commands.evaluate, ["--config", str(config), "--out_dir", str(tmp_path), "--name", "scores"],
                   capsys) == [f"error: --out_dir/scores.json {config}: is the input --config {config}; "
                               "write the output elsewhere"]
    infer_config = tmp_path / "infer.yaml"
    infer_config.write_text(f"input: {gold_file}\nbackend: extractive\n")
    before = tree(tmp_path)
    assert refused(commands.inference, ["--config", str(infer_config), "--output", str(infer_config)], capsys) == [
        f"error: --output {infer_config}: is the input --config {infer_config}; write the output elsewhere"]
    assert tree(tmp_path) == before


def test_a_config_file_that_cannot_be_read_is_the_only_problem_reported(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text('{"pred": "a.jsonl"')
    lines = refused(commands.evaluate, ["--config", str(tmp_path / "cfg.json")], capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: --config: {tmp_path / 'cfg.json'}: not valid JSON")
    assert refused(commands.evaluate, ["--config", str(tmp_path)], capsys) == [
        f"error: --config: {tmp_path}: is a directory"]


@pytest.fixture
def blockers(tmp_path):
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_dir", tmp_path / "a_file"


def test_convert_psyqa_refuses_a_directory_or_a_path_under_a_file(tmp_path, capsys, fixtures, blockers):
    a_dir, a_file = blockers
    psyqa = str(fixtures / "psyqa_tiny.json")
    assert refused(commands.convert_psyqa, [psyqa, str(a_dir)], capsys) == [
        f"error: --output {a_dir}: is a directory; give a file name"]
    assert refused(commands.convert_psyqa, [psyqa, str(a_file / "x.jsonl")], capsys) == [
        f"error: --output {a_file / 'x.jsonl'}: {a_file} is a file, not a directory"]
    assert refused(commands.convert_psyqa, [psyqa, psyqa], capsys) == [
        f"error: --output {psyqa}: is the input --input {psyqa}; write the output elsewhere"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"] and not any(a_dir.iterdir())


def test_download_data_refuses_an_out_dir_that_is_a_file_and_creates_nothing_for_a_missing_from_dir(
        tmp_path, capsys, blockers):
    _, a_file = blockers
    assert refused(commands.download_data, ["--out_dir", str(a_file), "--from_dir", str(tmp_path)], capsys) == [
        f"error: --out_dir {a_file}: is a file, not a directory"]
    assert refused(commands.download_data, ["--out_dir", str(a_file / "data"), "--from_dir", str(tmp_path)],
                   capsys) == [f"error: --out_dir {a_file / 'data'}: {a_file} is a file, not a directory"]
    assert refused(commands.download_data, ["--out_dir", str(tmp_path / "data"), "--from_dir",
                                            str(tmp_path / "nothere")], capsys) == [
        f"error: --from_dir {tmp_path / 'nothere'}: no such directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]


def test_label_refuses_a_directory_or_a_path_under_a_file_before_anything_is_sent(tmp_path, capsys, fixtures,
                                                                                  blockers):
    a_dir, a_file = blockers
    inputs = str(fixtures / "es_tiny.jsonl")
    endpoint = ["--endpoint", "http://127.0.0.1:9/v1", "--model", "teacher"]  # nothing listens: a request would fail differently
    assert refused(commands.label_with_teacher, [inputs, str(a_dir), *endpoint], capsys) == [
        f"error: --output {a_dir}: is a directory; give a file name"]
    assert refused(commands.label_with_teacher, [inputs, str(a_file / "x.jsonl"), *endpoint], capsys) == [
        f"error: --output {a_file / 'x.jsonl'}: {a_file} is a file, not a directory"]
    assert refused(commands.label_with_teacher, [inputs, inputs, *endpoint], capsys) == [
        f"error: --output {inputs}: is the input --input {inputs}; write the output elsewhere"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"] and not any(a_dir.iterdir())


@pytest.mark.parametrize("option, value", [("--max_tokens", "0"), ("--limit", "-1"), ("--concurrency", "0")])
def test_label_refuses_numbers_out_of_range_in_one_line(tmp_path, capsys, fixtures, option, value):
    argv = [str(fixtures / "es_tiny.jsonl"), str(tmp_path / "out.jsonl"), "--endpoint", "http://127.0.0.1:9/v1",
            "--model", "teacher"]
    lines = refused(commands.label_with_teacher, [*argv, option, value], capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}: expected an integer >= "), lines
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_a_judge_concurrency_below_one(tmp_path, capsys, gold_file):
    argv = [str(gold_file), str(gold_file), "--out_dir", str(tmp_path / "res"), "--bertscore", "false",
            "--judge", "--endpoint", "http://127.0.0.1:9/v1", "--model", "judge", "--concurrency", "0"]
    assert refused(commands.evaluate, argv, capsys) == ["error: --concurrency: expected an integer >= 1 and <= 256, got 0"]
    assert list(tmp_path.iterdir()) == []


def test_synthesize_checks_its_output_like_every_command(tmp_path, capsys, blockers):
    a_dir, a_file = blockers
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("exam anxiety\n")
    dry = ["--dry_run", "--n", "1", "--seeds", str(seeds)]
    assert refused(commands.synthesize_reports, [*dry, "--output", str(a_dir)], capsys) == [
        f"error: --output {a_dir}: is a directory; give a file name"]
    assert refused(commands.synthesize_reports, [*dry, "--output", str(a_file / "x.jsonl")], capsys) == [
        f"error: --output {a_file / 'x.jsonl'}: {a_file} is a file, not a directory"]
    assert refused(commands.synthesize_reports, [*dry, "--output", str(seeds)], capsys) == [
        f"error: --output {seeds}: is the input --seeds {seeds}; write the output elsewhere"]


def test_install_torch_names_the_option_of_a_missing_or_directory_input(tmp_path, capsys):
    argv = ["--dry_run", "--nvidia_smi_output", str(tmp_path / "smi.txt"), "--requirements", str(tmp_path)]
    assert refused(commands.install_torch, argv, capsys) == [
        f"error: --nvidia_smi_output {tmp_path / 'smi.txt'}: no such file",
        f"error: --requirements {tmp_path}: is a directory"]


def test_pipeline_refuses_bad_submission_and_input_paths_before_training(tmp_path, capsys, monkeypatch, blockers):
    from emotion_summary import pipeline

    monkeypatch.setattr(pipeline, "_train_or_reuse", lambda *a: pytest.fail("trained before checking the paths"))
    _, a_file = blockers
    assert refused(commands.pipeline, ["--preset", "cpu-smoke", "--submission_dir", str(a_file)], capsys) == [
        f"error: --submission_dir {a_file}: is a file, not a directory"]
    missing = tmp_path / "inputs.jsonl"
    assert refused(commands.pipeline, ["--preset", "cpu-smoke", "--predict_input", str(missing)], capsys) == [
        f"error: --predict_input {missing}: no such file"]
    gold = tmp_path / "sub" / "Emotion_Summary_Result.jsonl"
    gold.parent.mkdir()
    gold.write_text("{}\n")
    assert refused(commands.pipeline, ["--preset", "cpu-smoke", "--submission_dir", str(gold.parent),
                                       "--gold", str(gold)], capsys) == [
        f"error: --submission_dir/Emotion_Summary_Result.jsonl {gold}: is the input --gold {gold}; "
        "write the output elsewhere"]


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, gold_file,
                                                                           monkeypatch):
    import os

    from emotion_summary.core import paths
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(paths.os, "access", lambda p, mode: real_access(p, mode) and str(p) != str(locked))
    out = locked / "res"
    assert refused(commands.evaluate, [str(gold_file), str(gold_file), "--bertscore", "false", "--out_dir", str(out)],
                   capsys)[0] == (f"error: --out_dir {out}: cannot write in {locked} (no permission, or a "
                                  "read-only file system)")
    assert list(locked.iterdir()) == []


def test_an_os_error_during_a_command_is_one_line_and_exit_2(capsys):
    from emotion_summary.core.cli import call

    def write():
        raise PermissionError(13, "Permission denied", "/srv/out.jsonl")

    with pytest.raises(SystemExit) as stop:
        call(write)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: /srv/out.jsonl: Permission denied\n"


def test_a_second_config_file_is_refused_not_silently_preferred(tmp_path, capsys, gold_file):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"pred": str(gold_file), "gold": str(gold_file), "bertscore": False}))
    second.write_text(json.dumps({"out_dir": str(tmp_path / "res")}))
    assert refused(commands.evaluate, ["--config", str(first), "--config", str(second)], capsys) == [
        "error: --config: given more than once (one file; the command line adds to it)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_two_outputs_of_one_command_on_one_file_are_refused(tmp_path, capsys, gold_file):
    cache = tmp_path / "res" / "scores.json"
    argv = [str(gold_file), str(gold_file), "--bertscore", "false", "--out_dir", str(tmp_path / "res"),
            "--name", "scores", "--judge", "--endpoint", "http://127.0.0.1:9/v1", "--model", "judge",
            "--judge_cache", str(cache)]
    assert refused(commands.evaluate, argv, capsys) == [
        f"error: --judge_cache {cache}: is also the output --out_dir/scores.json; give another path"]
    assert list(tmp_path.iterdir()) == []


def test_training_options_out_of_range_are_named_like_every_other_command():
    from emotion_summary.training.config import resolve_config, validate

    problems = validate(resolve_config("cpu-smoke", lora_r=0, learning_rate=-1.0, max_steps=-2, weight_decay=-0.1))
    assert "lora_r: expected an integer >= 1, got 0" in problems
    assert "learning_rate: expected a number > 0, got -1.0" in problems
    assert "max_steps: expected an integer >= 0, got -2" in problems
    assert "weight_decay: expected a number >= 0, got -0.1" in problems


def test_training_never_writes_into_a_folder_of_other_files(tmp_path, capsys, gold_file):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my notes")  # the run's model card would replace it
    assert refused(commands.train, ["--preset", "cpu-smoke", "--train_data", str(gold_file), "--folds", "0",
                                    "--max_steps", "1", "--output_dir", str(project)], capsys) == [
        f"error: {project} is not empty and holds no run; its files (README.md, tokenizer files ...) would be "
        "overwritten: choose a new or empty --output_dir"]
    assert [p.name for p in project.iterdir()] == ["README.md"] and (project / "README.md").read_text() == "my notes"
