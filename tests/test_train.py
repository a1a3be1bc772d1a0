"""Training on a tiny random Qwen2 (real tokenizer, bitsandbytes NF4 on CPU): seconds per run."""

import json

import pytest
import torch

from emotion_summary.core.errors import UserError
from emotion_summary.training.config import resolve_config, validate
from emotion_summary.training.command import prepare_run, train

pytestmark = pytest.mark.slow
SMOKE = dict(preset="cpu-smoke", max_steps=4, save_every=2, eval_every=2)


class Killed(BaseException):
    """The process dies: nothing in the trainer catches it (unlike Ctrl-C, no checkpoint is written)."""


class RaisingOnCall:
    """The trainer's TrainingStep, raising `error` when step `on_call` starts."""

    def __init__(self, step, on_call: int, error):
        self.step, self.on_call, self.error, self.calls = step, on_call, error, 0

    def __call__(self, micro, n_micro):
        self.calls += 1
        if self.calls == self.on_call:
            raise self.error
        return self.step(micro, n_micro)

    def __getattr__(self, name):  # loss_parts, optimizer, ...: the real step's
        return getattr(self.step, name)


def train_until(step, **options):
    """Train, then die when step `step` + 1 starts (the run directory is left unfinished, as by a kill)."""
    trainer = prepare_run(**options)
    trainer.step = RaisingOnCall(trainer.step, step + 1, Killed)
    with pytest.raises(Killed):
        trainer.run()
    return trainer.run_dir


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name, fits, too_small", [("8gb", 8.0, 7.0), ("12gb", 12.0, 11.0),
                                                    ("24gb", 24.0, 20.0), ("cpu-smoke", None, None),
                                                    ("cpu", None, None)])
def test_every_preset_validates_on_its_card_and_not_on_a_smaller_one(name, fits, too_small, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}")
    cfg = resolve_config(name, train_data=str(data))
    assert validate(cfg, fits) == [] and cfg.preset == name
    if too_small is not None:
        assert any(f"preset {name}: needs" in p for p in validate(cfg, too_small))


def test_auto_preset_follows_gpu_memory():
    assert resolve_config("auto", None).preset == "cpu"  # the real small model without a GPU
    assert resolve_config("auto", 8.0).preset == "8gb"
    assert resolve_config("auto", 16.0).preset == "12gb"
    assert resolve_config("auto", 80.0).preset == "24gb"


def test_config_problems_are_reported_all_at_once():
    cfg = resolve_config("24gb", lora_r=0, quantization="int3", train_data="missing.jsonl")
    problems = validate(cfg, vram_gb=8.0)
    text = "\n".join(problems)
    for needle in ("lora_r", "quantization", "missing.jsonl", "needs 22.0 GB"):
        assert needle in text
    assert len(problems) >= 4


def test_cli_reports_config_problems_before_loading_a_model(tmp_path):
    with pytest.raises(UserError, match="lora_r.*\n.*learning_rate"):
        train(preset="cpu-smoke", lora_r=-1, learning_rate=-1.0, output_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_refuses_unlabelled_records_naming_file_line_and_field(tmp_path):
    data = tmp_path / "unlabelled.jsonl"
    data.write_text(json.dumps({"id": 1, "case_description": ["a"], "consultation_process": ["b"],
                                "experience_and_reflection": "c"}) + "\n")
    with pytest.raises(Exception, match=r"unlabelled.jsonl:line 1: field 'causes'"):
        train(preset="cpu-smoke", train_data=str(data), output_dir=str(tmp_path / "r"))


def test_training_moves_lora_weights_and_leaves_base_weights(tmp_path):
    from emotion_summary.training.trainer import Trainer
    from emotion_summary.training.train_data import load_data

    cfg = resolve_config("cpu-smoke", max_steps=2, output_dir=str(tmp_path / "r"))
    trainer = Trainer(cfg, *load_data(cfg))
    trainer.prepare()
    named = dict(trainer.wrapper.model.named_parameters())
    lora_before = {k: v.detach().clone() for k, v in named.items() if "lora_" in k}
    base_before = {k: v.detach().clone() for k, v in named.items() if "lora_" not in k}
    trainer.run()
    after = dict(trainer.wrapper.model.named_parameters())
    assert lora_before and base_before
    moved = [k for k in lora_before if not torch.equal(lora_before[k], after[k])]
    assert len(moved) == len(lora_before)
    assert all(torch.equal(base_before[k], after[k]) for k in base_before)
    for name in ("adapter_model.safetensors", "train_config.json", "prompt.json", "loss.png",
                 "data_fingerprints.json", "versions.json", "COMPLETE"):
        assert (tmp_path / "r" / name).is_file(), name


def test_resumed_run_gives_the_same_losses_as_an_uninterrupted_one(tmp_path):
    whole = tmp_path / "whole"
    train(**SMOKE, output_dir=str(whole))
    split = tmp_path / "split"
    train_until(2, **SMOKE, output_dir=str(split))
    assert not (split / "COMPLETE").exists() and len(losses(split)) == 2
    train(output_dir=str(split), resume=True)  # the saved config is all a resume needs
    assert (split / "COMPLETE").exists()
    assert losses(split) == pytest.approx(losses(whole), abs=1e-6)


def test_run_directories_are_never_overwritten(tmp_path):
    run = tmp_path / "r"
    train_until(2, **SMOKE, output_dir=str(run))
    with pytest.raises(UserError, match="unfinished run; continue it with: python scripts/train_qwen2.py "
                                        f"--output_dir {run} --resume"):
        train(**SMOKE, output_dir=str(run))
    with pytest.raises(UserError, match="another config: lora_r"):
        train(**SMOKE, output_dir=str(run), resume=True, lora_r=8)
    train(**SMOKE, output_dir=str(run), resume=True)
    with pytest.raises(UserError, match="finished run"):
        train(**SMOKE, output_dir=str(run), resume=True)


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path, capsys):
    run = tmp_path / "r"
    from emotion_summary.core.cli import call

    trainer = prepare_run(**{**SMOKE, "save_every": 10}, output_dir=str(run))
    trainer.step = RaisingOnCall(trainer.step, 3, KeyboardInterrupt)
    with pytest.raises(SystemExit) as exit_info:
        call(trainer.run)  # the one place that turns Ctrl-C into its message and exit 130
    assert exit_info.value.code == 130
    assert (run / "checkpoints" / "step-2" / "state.json").is_file()
    assert f"continue with:\n  python scripts/train_qwen2.py --output_dir {run} --resume" in capsys.readouterr().err
    train(**{**SMOKE, "save_every": 10}, output_dir=str(run), resume=True)
    assert len(losses(run)) == 4 and (run / "COMPLETE").is_file()


def test_two_processes_compute_the_same_update_as_one_with_grad_accum(tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on CPU; NCCL on GPUs, as under `accelerate launch`) with
    grad_accum 1 takes the same steps as one process with grad_accum 2 (dropout off: no RNG)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    args = ["--preset", "cpu-smoke", "--max_steps", "3", "--lora_dropout", "0.0"]
    script = str(ROOT / "scripts" / "train_qwen2.py")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29533", script, *args, "--output_dir", str(tmp_path / "two")],
                   check=True, capture_output=True, timeout=300)
    train(**{**SMOKE, "max_steps": 3, "lora_dropout": 0.0, "grad_accum": 2}, output_dir=str(tmp_path / "one"))
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    assert (tmp_path / "two" / "COMPLETE").is_file()


def test_more_config_problems_are_caught_before_loading(tmp_path):
    cfg = resolve_config("cpu-smoke", max_steps=-1, warmup_ratio=1.5, lora_target="q_proj")
    text = "\n".join(validate(cfg))
    assert "max_steps" in text and "warmup_ratio" in text and "lora_target" in text
    from emotion_summary.core.cli import parse_command_line
    from emotion_summary.training.command import build_config, command_options

    parsed = parse_command_line(command_options(), ["--lora_target", "q_proj,v_proj"])
    assert parsed == {"lora_target": ["q_proj", "v_proj"]}
    assert parse_command_line(command_options(), ["--lora_target", "all-linear"]) == {"lora_target": "all-linear"}
    with pytest.raises(UserError, match="unknown option"):
        build_config("cpu-smoke", lora_rank=4)


def test_an_id_in_two_training_files_is_an_error_naming_both(tmp_path):
    from emotion_summary.data.sample_data import SAMPLE_EN

    copy = tmp_path / "copy.jsonl"
    copy.write_text(SAMPLE_EN.read_text())
    with pytest.raises(UserError, match=r"copy.jsonl: field 'id': id 9001 is also in .*es_sample_en.jsonl"):
        train(preset="cpu-smoke", train_data=f"{SAMPLE_EN},{copy}", output_dir=str(tmp_path / "r"))


def test_resume_after_logging_past_the_checkpoint_keeps_one_row_per_step(tmp_path):
    run = tmp_path / "r"
    train_until(3, **{**SMOKE, "save_every": 2}, output_dir=str(run))  # checkpoint at 2, logged 3
    train(**{**SMOKE, "save_every": 2}, output_dir=str(run), resume=True)
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_after_a_kill_before_the_first_checkpoint_keeps_one_row_per_step(tmp_path):
    run = tmp_path / "r"
    train_until(2, **{**SMOKE, "save_every": 10}, output_dir=str(run))
    assert not list((run / "checkpoints").glob("step-*")) and len(losses(run)) == 2
    train(output_dir=str(run), resume=True)
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_refuses_changed_training_data(tmp_path):
    from emotion_summary.data.sample_data import SAMPLE_EN

    data = tmp_path / "train.jsonl"
    data.write_text(SAMPLE_EN.read_text())
    run = tmp_path / "r"
    train_until(2, **SMOKE, train_data=str(data), folds=0, output_dir=str(run))
    rows = data.read_text().splitlines()
    edited = json.loads(rows[0])
    edited["causes"] = "Something else entirely."
    data.write_text("\n".join([json.dumps(edited)] + rows[1:]) + "\n")
    with pytest.raises(UserError, match="training data changed"):
        train(**SMOKE, train_data=str(data), folds=0, output_dir=str(run), resume=True)


def test_a_checkpoint_is_a_loadable_adapter_and_guarded_against_leakage(tmp_path):
    from emotion_summary.data.folds import find_leaks
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
    from emotion_summary.data.records import read_records
    from emotion_summary.data.sample_data import SAMPLE_EN

    run = tmp_path / "r"
    train_until(2, **SMOKE, train_data=str(SAMPLE_EN), folds=0, output_dir=str(run))
    checkpoint = run / "checkpoints" / "step-2"
    assert find_leaks(read_records(SAMPLE_EN), checkpoint) == [9001, 9002, 9003, 9004, 9005, 9006]
    loaded = Qwen2EmotionSummaryModel.load(checkpoint)
    assert loaded.config.preset == "cpu-smoke"


def prepared_trainer(tmp_path, **overrides):
    from emotion_summary.training.trainer import Trainer
    from emotion_summary.training.train_data import load_data

    cfg = resolve_config("cpu-smoke", output_dir=str(tmp_path / "r"), **overrides)
    trainer = Trainer(cfg, *load_data(cfg))
    trainer.prepare()
    return trainer


def test_padded_rows_go_one_at_a_time_with_the_same_loss(tmp_path):
    """Without FlashAttention-2 a padded batch would need a dense [B, 1, L, L] mask: the trainer runs
    its rows one by one, weighted by their answer tokens, and gets the batch's loss."""
    trainer = prepared_trainer(tmp_path)
    examples = trainer.train_examples
    pair = [0, 1]
    assert len(examples[0]["input_ids"]) != len(examples[1]["input_ids"])
    parts = trainer.step.loss_parts(pair, examples)
    assert [b["input_ids"].shape[0] for b, _ in parts] == [1, 1]
    assert all(b["attention_mask"] is None for b, _ in parts)
    assert sum(w for _, w in parts) == pytest.approx(1.0)
    trainer.wrapper.model.eval()
    with torch.no_grad():
        whole = trainer.wrapper.loss(trainer.step.batch(pair, examples))
        split = sum(trainer.wrapper.loss(b) * w for b, w in parts)
    assert split.item() == pytest.approx(whole.item(), abs=1e-5)
    assert len(trainer.step.loss_parts([0, 0], examples)) == 1  # equal lengths: one batch, no mask


def test_out_of_memory_keeps_a_checkpoint_and_names_one_lever(tmp_path, monkeypatch):
    trainer = prepared_trainer(tmp_path, max_steps=4, save_every=10)
    real_loss, calls = trainer.wrapper.loss, {"n": 0}

    def loss_then_oom(batch):
        calls["n"] += 1
        if calls["n"] > 2:  # step 1 is two rows one at a time; step 2 runs out
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(batch)

    monkeypatch.setattr(trainer.wrapper, "loss", loss_then_oom)
    with pytest.raises(UserError, match=r"out of GPU memory in step 2 .*checkpoints/step-1 is kept\. "
                                         r"Pull this lever: python scripts/train_qwen2.py --output_dir \S+ --resume "
                                         r"--offload_activations true"):
        trainer.run()
    assert (tmp_path / "r" / "checkpoints" / "step-1" / "state.json").is_file()


def test_a_non_finite_loss_stops_before_the_weights_change(tmp_path, monkeypatch):
    trainer = prepared_trainer(tmp_path, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.wrapper.model.named_parameters() if p.requires_grad}
    monkeypatch.setattr(trainer.wrapper, "loss", lambda batch: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(UserError, match="NaN/inf.*fp16.*T4, V100, RTX 20xx"):
        trainer.run()
    after = dict(trainer.wrapper.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_small_data_gets_a_checkpoint_every_epoch(tmp_path):
    trainer = prepared_trainer(tmp_path, max_steps=0, epochs=2, save_every=50)
    per_epoch = trainer.total_steps // 2
    assert trainer.save_interval == per_epoch < 50


def test_one_host_read_of_the_loss_per_optimizer_step(tmp_path, monkeypatch):
    """The loss is summed on the device and read once per optimizer step (a GPU sync each read),
    not checked with isfinite + .item() per micro-batch."""
    trainer = prepared_trainer(tmp_path, max_steps=1, grad_accum=2)
    import sys

    reads = []
    real_item = torch.Tensor.item

    def item(self):  # reads made by the project's code (the optimizer's step counters are CPU tensors)
        if "emotion_summary" in sys._getframe(1).f_code.co_filename:
            reads.append(sys._getframe(1).f_code.co_name)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch, "isfinite", lambda t: pytest.fail("isfinite per micro-batch"))
    loss = trainer.step([[0], [1], [2]], 3)
    assert reads == ["__call__"] and loss > 0


def test_max_steps_and_epochs_stop_the_run_at_whichever_comes_first(tmp_path):
    """cpu-smoke's sample data, one fold of 3 held out, batch 2: 3 steps an epoch. A step cap above the
    epochs does not make the run loop over a small file again (the cpu preset's 48 steps on the 4
    sample reports would be 12 passes)."""
    def steps(name, **options):
        return prepare_run(preset="cpu-smoke", output_dir=str(tmp_path / name), **options).total_steps

    per_epoch = steps("one-epoch", max_steps=0, epochs=1)
    assert per_epoch >= 2
    assert steps("capped-by-epochs", max_steps=100, epochs=1) == per_epoch
    assert steps("two-epochs", max_steps=100, epochs=2) == 2 * per_epoch
    assert steps("capped-by-steps", max_steps=per_epoch + 1, epochs=2) == per_epoch + 1
