"""Presets are data files users copy: configs/NAME.yaml, read by --preset NAME and by --config FILE."""

import shutil

import pytest

from emotion_summary import commands
from emotion_summary.training.config import TrainConfig, resolve_config
from emotion_summary.core.errors import ConfigError
from emotion_summary.training.presets import PRESET_DIR, PRESETS, pick_preset, preset_overrides, read_preset_file
from tests.conftest import ROOT


def test_the_repository_configs_are_the_packaged_presets():
    # the package carries the files (an installed package finds them); configs/ is the copy users see
    packaged = {p.name: p.read_bytes() for p in PRESET_DIR.glob("*.yaml")}
    top = {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.yaml")}
    assert packaged == top, "copy src/emotion_summary/configs/*.yaml to configs/ (or back)"
    assert {"8gb.yaml", "12gb.yaml", "24gb.yaml", "cpu.yaml", "cpu-smoke.yaml"} <= set(packaged)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_key_of_a_preset_file_is_an_option_with_a_comment(name):
    lines = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()
    keys = [line for line in lines if line and not line.startswith((" ", "#"))]
    options = {f for f in TrainConfig.__dataclass_fields__}
    for line in keys:
        key = line.split(":", 1)[0]
        assert key == "card" or key in options, line
        assert "  # " in line, f"{line}: say what the key does in a comment"


def test_preset_and_a_copy_given_as_config_resolve_to_the_same_run(tmp_path):
    from emotion_summary.core.cli import parse_command_line
    from emotion_summary.training.command import command_options

    copy = tmp_path / "my.yaml"
    shutil.copy(PRESET_DIR / "8gb.yaml", copy)
    values = parse_command_line(command_options(), ["--config", str(copy)], config_file=True)
    assert values["preset"] == "8gb"
    preset = values.pop("preset")
    assert resolve_config(preset, **values) == resolve_config("8gb")
    edited = copy.read_text().replace("max_seq_len: 8192", "max_seq_len: 4096")
    copy.write_text(edited)
    values = parse_command_line(command_options(), ["--config", str(copy), "--grad_accum", "4"], config_file=True)
    cfg = resolve_config(values.pop("preset"), **values)
    assert (cfg.max_seq_len, cfg.grad_accum, cfg.embedding_on_cpu) == (4096, 4, True)


def test_adding_a_preset_is_one_file(tmp_path):
    text = (PRESET_DIR / "12gb.yaml").read_text().replace("preset: 12gb", "preset: 16gb").replace(
        "min_vram_gb: 11.5", "min_vram_gb: 15.5")
    (tmp_path / "16gb.yaml").write_text(text)
    preset = read_preset_file(tmp_path / "16gb.yaml")
    assert preset["min_vram_gb"] == 15.5 and preset["config"] == preset_overrides("12gb")
    (tmp_path / "bad.yaml").write_text("preset: other\nmax_seq_len: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml: a preset file needs card"):
        read_preset_file(tmp_path / "bad.yaml")


def test_auto_picks_by_the_files_memory_needs_and_unknown_names_get_one_message():
    assert pick_preset(None) == "cpu"  # the real small model without a GPU
    assert pick_preset(8.0) == "8gb" and pick_preset(12.0) == "12gb" and pick_preset(80.0) == "24gb"
    with pytest.raises(ConfigError) as a:
        resolve_config("9gb")
    with pytest.raises(ConfigError) as b:
        preset_overrides("9gb")
    assert str(a.value) == str(b.value) and "choose one of 8gb, 12gb, 24gb, cpu, cpu-smoke, auto" in str(a.value)


def test_es_train_preset_reads_the_file(capsys):
    with pytest.raises(SystemExit) as stop:
        commands.main(["train", "--help"])
    assert stop.value.code == 0 and "configs/NAME.yaml" in capsys.readouterr().out


def test_the_planner_and_the_training_bench_name_an_unknown_preset_with_the_one_message(monkeypatch):
    from emotion_summary.core.errors import UserError
    from emotion_summary.gpusim.planner import check_request
    from emotion_summary.training.presets import unknown_preset

    with pytest.raises(ConfigError) as planner:
        check_request("9gb", "qwen2-7b", [1024], False)
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # how Python runs the script: its folder first
    import train_step

    with pytest.raises(UserError) as bench:
        train_step.train_step(arch="tiny", preset="9gb")
    assert str(planner.value) == str(bench.value) == unknown_preset("9gb", tuple(PRESETS))
    assert "cpu-smoke (or --config FILE" in str(planner.value)  # the planner and the bench take no 'auto'
