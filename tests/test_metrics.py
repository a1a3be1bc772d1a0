"""ROUGE (jieba + rouge-chinese) edge cases and the memory cap; BERTScore with a tiny random BERT."""

import string
import tracemalloc

import pytest

from emotion_summary.scoring import metrics
from emotion_summary.scoring.metrics import BertScoreUnavailable, bertscore_f1, mean, rouge_report, rouge_scores, tokenize
from emotion_summary.data.records import GOLD_FIELDS


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("The Client, anxious!  Sleeps badly.") == ["the", "client", "anxious", "sleeps", "badly"]
    assert tokenize("焦虑，失眠。") == ["焦虑", "失眠"]


@pytest.mark.parametrize("text", ["Night shifts that began in spring.", "考试前失眠、心慌、担心。"])
def test_self_score_is_one(text):
    assert rouge_scores(text, text) == pytest.approx({"rouge-1": 1.0, "rouge-2": 1.0, "rouge-l": 1.0})


@pytest.mark.parametrize("hyp,ref", [("", "a reference text"), ("a hypothesis", ""), ("...!", "text"), ("", "")])
def test_empty_side_scores_zero_without_exception(hyp, ref):
    assert rouge_scores(hyp, ref) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}


def test_partial_overlap_scores_worked_out_by_hand():
    # hyp: the client could not sleep (5 words); ref: the client slept badly (4 words)
    # ROUGE-1: 2 shared words, P 2/5, R 2/4, F1 = 2PR/(P+R) = 4/9
    # ROUGE-2: 1 shared bigram ("the client") of 4 and 3, P 1/4, R 1/3, F1 = 2/7
    # ROUGE-L: LCS "the client" = 2 words: the same P and R as ROUGE-1, F1 = 4/9
    s = rouge_scores("the client could not sleep", "the client slept badly")
    assert s == pytest.approx({"rouge-1": 4 / 9, "rouge-2": 2 / 7, "rouge-l": 4 / 9}, abs=1e-6)
    # jieba words 来访者|失眠 against 来访者|长期|失眠: P 2/2, R 2/3, F1 0.8; no shared bigram; LCS 2
    assert rouge_scores("来访者失眠", "来访者长期失眠") == pytest.approx(
        {"rouge-1": 0.8, "rouge-2": 0.0, "rouge-l": 0.8}, abs=1e-6)


def test_long_texts_are_capped_before_rouge_l():
    words = [f"w{i % 997}" for i in range(60_000)]
    long_text = " ".join(words)
    assert len(tokenize(long_text)) == metrics.MAX_TOKENS
    tracemalloc.start()
    scores = rouge_scores(long_text, " ".join(reversed(words)), max_tokens=300)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40e6  # 301^2 LCS cells ~ 11 MB; uncapped 60,000^2 would be ~450 GB
    # the first 300 words: w0..w299 against w179..w0, w996..w877 (59,999 % 997 = 179); shared words
    # w0..w179 = 180 of 300 each side; no bigram in common; one side ascends, the other descends: LCS 1
    assert scores == pytest.approx({"rouge-1": 180 / 300, "rouge-2": 0.0, "rouge-l": 1 / 300}, abs=1e-6)


def test_one_mean_for_rouge_bertscore_and_the_judge():
    assert mean(x / 2 for x in range(1, 4)) == 1.0  # any iterable, a generator too
    assert mean([]) == 0.0  # ROUGE and BERTScore: no reports score 0
    assert mean([], empty=None) is None  # the judge: no scored items is "no figure", not 0
    from emotion_summary.scoring.judge import judge_totals

    assert judge_totals([], "judge-model")["mean"] is None


def test_rouge_report_means_per_field_and_overall():
    golds = {1: {f: f"{f} text one" for f in GOLD_FIELDS}, 2: {f: f"{f} text two" for f in GOLD_FIELDS}}
    preds = {1: dict(golds[1]), 2: {f: "" for f in GOLD_FIELDS}, 3: {f: "ignored" for f in GOLD_FIELDS}}
    report = rouge_report(preds, golds, progress=False)
    assert report["per_field"]["causes"]["rouge-1"] == pytest.approx(0.5)
    assert report["mean"]["rouge-l"] == pytest.approx(0.5)
    assert set(report["per_id"]) == {1, 2}


# ---------------------------------------------------------------- BERTScore


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer random BERT and a 60-token vocabulary, saved like a downloaded model folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
             "the", "client", "felt", "anxious", "work", "stress", "sleep", "poor", "family", "therapy",
             *"焦虑失眠心慌担心考试"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(path / "vocab.txt"), model_max_length=64).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    return str(path)


def test_bertscore_with_a_local_tiny_model(tiny_bert):
    cands = ["the client felt anxious", "", "poor sleep", "焦虑失眠"]
    refs = ["the client felt anxious", "the client felt anxious", "family therapy", "焦虑失眠"]
    result = bertscore_f1(cands, refs, "en", model=tiny_bert, num_layers=2)
    assert result.f1[0] == pytest.approx(1.0, abs=1e-4)
    assert result.f1[1] == 0.0  # empty candidate: placeholder, scored 0
    assert result.f1[2] < 1.0
    assert result.f1[3] == pytest.approx(1.0, abs=1e-4)
    assert (result.model, result.num_layers, result.rescaled) == (tiny_bert, 2, False)


def test_bertscore_baseline_is_found_by_model_name_for_a_local_copy(tmp_path):
    assert metrics._baseline(str(tmp_path / "roberta-large"), "en").endswith("en/roberta-large.tsv")
    assert metrics._baseline("bert-base-chinese", "zh").endswith("zh/bert-base-chinese.tsv")
    assert metrics._baseline(str(tmp_path / "my-bert"), "en") is None


def test_bertscore_offline_says_how_to_get_the_model(monkeypatch):
    monkeypatch.setattr(metrics, "_hub_cached", lambda repo: False)
    monkeypatch.setattr(metrics, "_hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(BertScoreUnavailable, match="roberta-large.*--bertscore_model"):
        bertscore_f1(["a"], ["b"], "en")
    with pytest.raises(BertScoreUnavailable, match="does not exist"):
        bertscore_f1(["a"], ["b"], "en", model="/no/such/model")


def test_light_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, emotion_summary.scoring.metrics, emotion_summary.scoring.evaluate, emotion_summary.predicting.extractive, "
            "emotion_summary.scoring.judge, emotion_summary.predicting.check, emotion_summary.predicting.predict; "
            "emotion_summary.scoring.metrics.rouge_scores('a b', 'a b'); "
            "print(sorted(m for m in ('torch', 'transformers', 'emotion_summary.modeling.summary_model', 'emotion_summary.training.trainer') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_evaluate_reports_bertscore_per_field_with_a_local_model(tiny_bert, tmp_path, fixtures):
    import json

    from emotion_summary.scoring.evaluate import evaluate
    from emotion_summary.data.records import read_records
    from emotion_summary.predicting.submission import write_submission

    records = read_records(fixtures / "es_eval_gold.jsonl")
    sub = tmp_path / "gold.jsonl"
    write_submission(sub, {r.id: r.gold() for r in records}, [r.id for r in records])
    evaluate(pred=str(sub), gold=str(fixtures / "es_eval_gold.jsonl"), out_dir=str(tmp_path),
             bertscore_model=tiny_bert, bertscore_num_layers=2)
    bert = json.loads((tmp_path / "gold.json").read_text())["systems"][0]["bertscore"]
    assert bert["mean"] == pytest.approx(1.0, abs=1e-4)
    assert sorted(m["lang"] for m in bert["models"]) == ["en", "zh"]
    assert "## BERTScore F1" in (tmp_path / "gold.md").read_text()
