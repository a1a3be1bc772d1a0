"""The README's end-to-end route on project-written data: PsyQA -> records -> teacher labels (a fake
teacher on 127.0.0.1) -> training (cpu-smoke) -> inference -> evaluation on a held-out fold."""

import json

import pytest

from emotion_summary.data.records import GOLD_FIELDS, read_records
from emotion_summary.data.sample_data import SAMPLE_EN, SAMPLE_PSYQA
from tests.chat_server import FakeChatServer

pytestmark = pytest.mark.slow


def teacher(messages):
    """Answers in English with words taken from the report, as a real teacher would summarise."""
    report = messages[-1]["content"]
    assert "Write the summary in English." in report
    return json.dumps({f: f"The client ({f.replace('_', ' ')}) felt anxious about school." for f in GOLD_FIELDS})


def test_psyqa_to_labelled_training_to_scored_submission(tmp_path):
    from emotion_summary.scoring.evaluate import evaluate
    from emotion_summary.data.folds import write_fold
    from emotion_summary.predicting.predict import infer
    from emotion_summary.teacher.label import label_with_teacher
    from emotion_summary.data.psyqa import convert_psyqa
    from emotion_summary.training.command import train

    records = tmp_path / "psyqa_es.jsonl"
    convert_psyqa(str(SAMPLE_PSYQA), str(records))
    labelled = tmp_path / "psyqa_labelled.jsonl"
    with FakeChatServer(teacher) as server:
        label_with_teacher(str(records), str(labelled), endpoint=server.endpoint, model="teacher-model", language="en")
    train_records = read_records(labelled, require_gold=True)
    assert len(train_records) == 4 and train_records[0].label_source["model"] == "teacher-model"

    run_dir = train(preset="cpu-smoke", train_data=str(labelled), folds=0, max_steps=2,
                    output_dir=str(tmp_path / "run"))
    # English labels of Chinese reports: --language auto trains the prompt that asks for English
    assert json.loads((tmp_path / "run" / "prompt.json").read_text())["language"] == "en"
    _, heldout = write_fold(str(SAMPLE_EN), str(tmp_path / "folds"), folds=3, fold=0)
    submission = tmp_path / "Emotion_Summary_Result.jsonl"
    infer(input=heldout, output=str(submission), model_path=run_dir, max_new_tokens=8)
    evaluate(pred=str(submission), gold=heldout, out_dir=str(tmp_path / "scores"), bertscore=False)
    scores = json.loads(next((tmp_path / "scores").glob("*.json")).read_text())
    assert "rouge" in json.dumps(scores).lower()
    assert sum(1 for _ in submission.open()) == len(read_records(heldout))


def test_predicting_the_training_reports_is_refused(tmp_path):
    from emotion_summary.core.errors import UserError
    from emotion_summary.predicting.predict import infer
    from emotion_summary.training.command import train

    data = SAMPLE_EN
    run_dir = train(preset="cpu-smoke", train_data=str(data), folds=0, max_steps=1, output_dir=str(tmp_path / "r"))
    with pytest.raises(UserError, match="LEAKAGE: 6 of 6"):
        infer(input=str(data), output=str(tmp_path / "sub.jsonl"), model_path=run_dir)
    assert not (tmp_path / "sub.jsonl").exists()
