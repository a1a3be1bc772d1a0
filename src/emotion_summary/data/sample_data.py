"""The project's own sample reports (written for it): cpu-smoke training data, README examples, tests."""

from pathlib import Path

SAMPLES = Path(__file__).parents[1] / "resources" / "samples"
SAMPLE_EN = SAMPLES / "es_sample_en.jsonl"
SAMPLE_ZH = SAMPLES / "es_sample_zh.jsonl"
SAMPLE_PSYQA = SAMPLES / "psyqa_sample.json"
SMOKE_DATA = [SAMPLE_EN, SAMPLE_ZH]
