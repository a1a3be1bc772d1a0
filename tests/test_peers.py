"""bench/peers.py at CI size: ours, plain transformers + peft and TRL's SFTTrainer compute the same
first-step loss on the same token ids (tiny Qwen2, hidden 64, real vocabulary, 256 tokens)."""

import importlib.util

import pytest

from tests.test_bench import BENCH


@pytest.fixture
def peers_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # how Python runs the script: its folder first on sys.path
    import peers

    return peers


def _row(variant, loss, status="ok", seq_len=256, sha="abc", **extra):
    return {"variant": variant, "seq_len": seq_len, "status": status, "loss_first": loss, "ids_sha1": sha,
            "error": None if status == "ok" else "boom", **extra}


def test_check_passes_on_agreeing_rows_and_names_each_problem(peers_module):
    check = peers_module.check
    good = [_row("ours", 11.9), _row("plain", 11.9 * (1 + 1e-7)), _row("trl", 11.9),
            _row("trl:dft", 8e-5), _row("trl:liger", None, status="failed")]
    assert check(good) == []  # dft is another objective; a failed option is reported, not fatal
    bad = [_row("ours", 11.9), _row("plain", 11.95), _row("trl", None, status="crashed"),
           _row("trl:no_gc", 11.9, sha="other")]
    problems = check(bad)
    assert any(p.startswith("plain at 256: first-step loss 11.95") for p in problems)
    assert any(p.startswith("trl at 256: crashed") for p in problems)
    assert any("different token ids" in p for p in problems)
    # bf16 autocast gets its own, wider tolerance
    assert check([_row("ours", 11.9), _row("trl:bf16_autocast", 11.95, autocast_bf16=True)]) == []


@pytest.mark.skipif(importlib.util.find_spec("trl") is None,
                    reason="trl is an optional benchmark dependency: pip install -e '.[bench]'")
def test_three_peers_same_first_step_loss(peers_module, tmp_path):
    from emotion_summary.modeling.architectures import build_tiny_qwen2

    spec = {"model_name_or_path": str(build_tiny_qwen2()), "preset": "cpu-smoke", "seq_len": 256,
            "batch_size": 1, "answer_tokens": 64, "steps": 0, "seed": 0, "workdir": str(tmp_path)}
    rows = [{"variant": v, "seq_len": 256, **peers_module.worker({**spec, "variant": v})}
            for v in ("ours", "plain", "trl")]
    for r in rows:
        assert r["status"] == "ok" and r["loss_first"] > 10  # random weights: about ln(152,064) = 11.9
        assert r["step_extra_bytes"] > 0 and r["rss_after_load_bytes"] > 0
    assert peers_module.check(rows) == []
    losses = [r["loss_first"] for r in rows]
    assert max(losses) - min(losses) < 1e-4 * losses[0]
    assert rows[2]["trl_args"]["completion_only_loss"] and rows[2]["trl_args"]["loss_type"] == "nll"


def test_find_longest_follows_the_need_line_and_confirms_it(peers_module):
    """Need = 2 GB + 0.5 GB per 1,024 tokens: on a 10 GB card the longest multiple of 512 is 16,384."""
    from types import SimpleNamespace

    def need(n):
        return 2e9 + 0.5e9 * n / 1024

    rows = [{"seq_len": n, "estimated_need_gb": need(n) / 1e9, "status": "ok"} for n in (8192, 12288)]
    card = SimpleNamespace(name="10 GB", total_bytes=int(10e9))
    simulated = []

    def simulate(n):
        simulated.append(n)
        return {"status": "ok", "estimated_need_gb": need(n) / 1e9}

    out = peers_module.find_longest("trl", rows, card, simulate)
    assert out["max_seq_len"] == 16384 and simulated == [16384, 16896]
    assert out["need_gb_curve"] == pytest.approx([2.0, 0.5 / 1024, 0.0], abs=1e-9)
    simulated.clear()  # a card the line says fits past Qwen2's window: capped at 32,768
    big = peers_module.find_longest("ours", rows, SimpleNamespace(name="80 GB", total_bytes=int(80e9)), simulate)
    assert big["max_seq_len"] == 32768 and big["at_limit"] and simulated == [32768]


def test_need_curve_solves_a_quadratic_need(peers_module):
    """A peer on the math attention path: need = 1 GB + 1 GB per 1K tokens + (L/1K)^2 x 0.25 GB."""
    def need(n):
        k = n / 1024
        return 1e9 + 1e9 * k + 0.25e9 * k * k

    coef = peers_module.need_curve([8192, 16384, 32768], [need(n) for n in (8192, 16384, 32768)])
    longest = peers_module._solve(coef, 9e9)  # 1 + k + k^2/4 = 9 -> k = 4
    assert abs(longest - 4096) <= 1 and peers_module._solve(coef, 0.5e9) == 0


def test_check_gives_fp32_peers_the_16_bit_tolerance_when_ours_ran_in_bf16(peers_module):
    ours_bf16 = _row("ours", 3.2895, ours_overrides={"compute_dtype": "bf16"})
    assert peers_module.check([ours_bf16, _row("trl", 3.2900), _row("plain", 3.2900)]) == []
    assert peers_module.check([_row("ours", 3.2895), _row("trl", 3.2900)]) != []


def test_real_batch_is_a_real_report_filled_to_the_length_with_its_gold_answer(peers_module, shared_data):
    from transformers import AutoTokenizer

    from emotion_summary.modeling.architectures import build_tiny_qwen2

    model = str(build_tiny_qwen2())
    spec = {"model_name_or_path": model, "data": str(shared_data / "longemotion" / "Emotion_Summary_example.jsonl"),
            "seq_len": 2048, "batch_size": 1}
    batch = peers_module.make_batch(spec)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert 2048 - 64 <= len(ids) <= 2048  # the reports are joined, then trimmed to fit
    answer = [t for t in labels if t != -100]
    assert 50 < len(answer) < 600 and labels[-len(answer):] == ids[-len(answer):]
    text = AutoTokenizer.from_pretrained(model).decode(answer)
    assert '"causes"' in text  # the gold summary, as the trainer supervises it
    assert peers_module.make_batch(spec)["input_ids"].tolist() == batch["input_ids"].tolist()
