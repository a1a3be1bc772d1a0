"""The labelled records a run trains and validates on, and the language it is prompted in."""

from __future__ import annotations

from emotion_summary.core.errors import ConfigError, UserError
from emotion_summary.data.records import Record, read_records
from emotion_summary.training.presets import default_train_data
from emotion_summary.training.config import TrainConfig


def load_data(cfg: TrainConfig) -> tuple[list[Record], list[Record]]:
    """Training and validation records; every training record must carry the five gold fields."""
    paths = cfg.train_data or default_train_data(cfg.preset)
    train = _capped(_read_labelled(paths), cfg)
    evals = _read_labelled(cfg.eval_data)
    if cfg.folds:
        from emotion_summary.data.folds import split_folds

        train, held = split_folds(train, folds=cfg.folds, fold=cfg.fold)  # same folds as write_fold
        evals += held
    if not train:
        raise UserError("no training records left after the fold split")
    return train, evals


def _capped(records: list[Record], cfg: TrainConfig) -> list[Record]:
    """The first `max_records` training records (before any fold split), said in one line."""
    if not cfg.max_records or len(records) <= cfg.max_records:
        return records
    print(f"max_records={cfg.max_records} (preset {cfg.preset}): using the first {cfg.max_records} of the "
          f"{len(records)} training records, all {len(records)} read and checked; --max_records 0 uses them all")
    return records[: cfg.max_records]


def _read_labelled(paths: list[str]) -> list[Record]:
    """Records of several files; an id in two files is an error naming both."""
    records, first_seen = [], {}
    for path in paths:
        for r in read_records(path, require_gold=True):
            if r.id in first_seen:
                raise UserError(f"{path}: field 'id': id {r.id} is also in {first_seen[r.id]}; "
                                "ids must be unique across the training files")
            first_seen[r.id] = path
            records.append(r)
    return records


def describe_sources(records: list[Record]) -> str:
    from emotion_summary.teacher.label import label_source_counts

    return ", ".join(f"{n} {src}" for src, n in label_source_counts(records).items())


def training_language(language: str, records: list[Record]) -> str:
    """`auto` means: the language the labels are written in. That is the labeller's --language when it
    recorded one, else the gold text's; `auto` is kept when every label is in its report's language."""
    from emotion_summary.data.text import detect_language, record_language
    from emotion_summary.prompting.prompt import LANGUAGE_RULES

    if language != "auto":
        return language
    fits: set[str] | None = None
    for r in records:
        label = (r.label_source or {}).get("language")
        label = label if label in LANGUAGE_RULES else detect_language(" ".join(r.gold().values()))
        ok = {label, "auto"} if label == record_language(r) else {label}
        fits = ok if fits is None else fits & ok
    if fits is None or "auto" in fits:
        return "auto"
    if not fits:
        raise ConfigError("language: the training labels are in more than one language, and not always "
                          "in their report's; pass --language en or --language zh (the prompt says which)")
    chosen = fits.pop()
    print(f"language: {chosen} (--language auto: every training label is in {chosen})")
    return chosen
