"""ROUGE-1/2/L F1 (jieba + rouge-chinese) and BERTScore F1, per field and averaged.

ROUGE text normalisation: lower-cased, cut by jieba (Chinese words; English words split on spaces and
punctuation), punctuation and whitespace tokens dropped, tokens joined by single spaces.

Memory guard: rouge-chinese computes ROUGE-L with a Python dict holding all (n+1)(m+1) LCS cells,
about 125 bytes each (measured). Two 2,000-token texts would need 4.0M cells = ~500 MB and ~4 s; we
cap each text at MAX_TOKENS = 1,000 tokens, so the worst case is 1.0M cells = ~125 MB and ~1 s. Gold
fields are under ~100 tokens, so the cap only ever touches a runaway generation.

Time guard: jieba's time grows with the square of a run of characters it cannot split (`焦` x 20,000:
~5 s; x 80,000: ~30 s), and the token cap above acts only after jieba has cut the text. So the text is
capped *before* tokenising, at CHARS_PER_TOKEN = 20 characters per allowed token (no real token is longer),
and a space is put after every WORD_RUN characters of a run without spaces or punctuation (real Chinese
or English text has a break far sooner), which bounds each run jieba sees.

BERTScore (bert_score, imported lazily) is optional: without its model (offline) ROUGE is still
reported and the error explains how to get the model.
"""

from __future__ import annotations

import logging
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from emotion_summary.core.json_input import load_json
from emotion_summary.data.records import GOLD_FIELDS

MAX_TOKENS = 1000
CHARS_PER_TOKEN = 20
WORD_RUN = 200
_LONG_RUN = re.compile(rf"\w{{{WORD_RUN}}}")
ROUGE_METRICS = ("rouge-1", "rouge-2", "rouge-l")
BERTSCORE_MODELS = {"en": "roberta-large", "zh": "bert-base-chinese"}
EMPTY_PLACEHOLDER = "-"  # bert_score cannot embed an empty string; such candidates are scored 0
_WORD = re.compile(r"\w")

_jieba = None
_rouge = None


def _cutter():
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        _jieba = jieba
    return _jieba


def tokenize(text: str, max_tokens: int | None = MAX_TOKENS) -> list[str]:
    """Lower-cased jieba tokens without punctuation or whitespace; at most `max_tokens` of them."""
    tokens = []
    if max_tokens is not None:  # cut the text first: jieba is slow on long unbroken runs
        text = _LONG_RUN.sub(lambda m: m.group() + " ", text[: CHARS_PER_TOKEN * max_tokens])
    for token in _cutter().cut(text.lower()):  # a generator: a huge text is cut only up to the cap
        if _WORD.search(token):
            tokens.append(token.strip())
            if max_tokens is not None and len(tokens) >= max_tokens:
                break
    return tokens


def rouge_scores(hypothesis: str, reference: str, max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    """ROUGE-1/2/L F1 of one pair; 0.0 when either side has no tokens (rouge-chinese would raise)."""
    global _rouge
    hyp, ref = tokenize(hypothesis, max_tokens), tokenize(reference, max_tokens)
    if not hyp or not ref:
        return {m: 0.0 for m in ROUGE_METRICS}
    if _rouge is None:
        from rouge_chinese import Rouge

        _rouge = Rouge(metrics=list(ROUGE_METRICS))
    scores = _rouge.get_scores(" ".join(hyp), " ".join(ref))[0]
    return {m: scores[m]["f"] for m in ROUGE_METRICS}


def mean(values: Iterable[float], empty: float | None = 0.0) -> float | None:
    """The arithmetic mean; `empty` when there are no values."""
    values = list(values)
    return sum(values) / len(values) if values else empty


def rouge_report(preds: Mapping[int, Mapping[str, str]], golds: Mapping[int, Mapping[str, str]],
                 progress: bool = True) -> dict:
    """{"per_field": {field: {metric: mean}}, "mean": {metric: mean over fields}, "per_id": ...},
    over the ids of `golds` (every one must be in `preds`)."""
    from tqdm import tqdm

    per_id = {}
    for rid in tqdm(list(golds), desc="ROUGE", unit="report", disable=not progress):
        per_id[rid] = {f: rouge_scores(preds[rid][f], golds[rid][f]) for f in GOLD_FIELDS}
    per_field = {f: {m: mean(per_id[i][f][m] for i in per_id) for m in ROUGE_METRICS} for f in GOLD_FIELDS}
    overall = {m: mean(per_field[f][m] for f in GOLD_FIELDS) for m in ROUGE_METRICS}
    return {"per_field": per_field, "mean": overall, "per_id": per_id, "max_tokens": MAX_TOKENS}


# ---------------------------------------------------------------- BERTScore


class BertScoreUnavailable(RuntimeError):
    """The BERTScore model could not be loaded; the message says how to get it."""


@dataclass
class BertScoreResult:
    f1: list[float]
    model: str
    num_layers: int
    rescaled: bool


def _how_to_get(model: str) -> str:
    return (f"download it on a connected machine (python -c \"from transformers import AutoModel, "
            f"AutoTokenizer; AutoModel.from_pretrained('{model}').save_pretrained('{Path(model).name}'); "
            f"AutoTokenizer.from_pretrained('{model}').save_pretrained('{Path(model).name}')\"), copy the "
            f"folder here and pass --bertscore_model {Path(model).name}; or --bertscore false")


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """transformers retries an unreachable hub for ~50 s per file; a 3 s socket check answers first."""
    import os

    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _num_layers(model: str, num_layers: int | None) -> int:
    if num_layers is not None:
        return int(num_layers)
    from bert_score.utils import model2layers

    if model in model2layers or Path(model).name in model2layers:
        return model2layers.get(model) or model2layers[Path(model).name]
    config = Path(model) / "config.json"
    if config.is_file():  # unknown local model: all its layers
        try:
            return int(load_json(config.read_bytes().decode("utf-8"))["num_hidden_layers"])
        except (OSError, ValueError, KeyError, TypeError) as e:  # a broken folder: ROUGE is still reported
            raise BertScoreUnavailable(f"{config}: not a usable model config ({type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''}); pass a whole model folder "
                                       "or --bertscore false") from None
    raise BertScoreUnavailable(f"{model}: unknown model; pass --bertscore_num_layers")


def _baseline(model: str, lang: str) -> str | None:
    """The package's rescale baseline for this model (by name, so a local copy of roberta-large
    still finds it) and language; None when it has none."""
    import bert_score

    path = Path(bert_score.__file__).parent / "rescale_baseline" / lang / f"{Path(model).name}.tsv"
    return str(path) if path.is_file() else None


def _check_available(model: str) -> None:
    if Path(model).is_dir():
        return
    if Path(model).is_absolute() or model.startswith("."):
        raise BertScoreUnavailable(f"BERTScore model folder {model} does not exist")
    if not _hub_cached(model) and not _hub_reachable():
        raise BertScoreUnavailable(f"BERTScore model '{model}' is not cached and the Hugging Face hub "
                                   f"cannot be reached; {_how_to_get(model)}")


def bertscore_f1(candidates: list[str], references: list[str], lang: str, model: str | None = None,
                 num_layers: int | None = None, batch_size: int = 16) -> BertScoreResult:
    """BERTScore F1 per pair, rescaled with the package's baseline where it has one."""
    model = model or BERTSCORE_MODELS[lang]
    _check_available(model)
    try:
        import bert_score
    except ImportError:
        raise BertScoreUnavailable("bert-score is not installed: pip install -e .[eval]") from None
    layers = _num_layers(model, num_layers)
    baseline = _baseline(model, lang)
    empty = [not c.strip() for c in candidates]
    cands = [EMPTY_PLACEHOLDER if e else c for c, e in zip(candidates, empty)]
    try:
        _, _, f1 = bert_score.score(cands, references, model_type=model, num_layers=layers, lang=lang,
                                    rescale_with_baseline=baseline is not None, baseline_path=baseline,
                                    batch_size=batch_size)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a broken model folder too
        raise BertScoreUnavailable(f"cannot load BERTScore model '{model}' ({(str(e).splitlines() or [type(e).__name__])[0]}); "
                                   f"{_how_to_get(model)}") from None
    scores = [0.0 if e else float(v) for v, e in zip(f1.tolist(), empty)]
    return BertScoreResult(scores, model, layers, baseline is not None)
