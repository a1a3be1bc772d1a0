import json
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_summary.predicting.extractive import report_sentences
from emotion_summary.data.psyqa import ID_OFFSET, convert_items, convert_psyqa, load_psyqa
from emotion_summary.data.records import RecordError, read_records, record_from_dict
from emotion_summary.data.text import split_sentences

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "download_and_convert_psyqa.py"


def _source_texts(item: dict) -> list[str]:
    return [item["question"], item.get("description") or ""] + [a["answer_text"] for a in item["answers"]]


def assert_only_source_text(rows: list[dict], items: list[dict]) -> None:
    """Every string in every output record must be a substring of its own PsyQA question."""
    by_id = {ID_OFFSET + int(it["questionID"]): it for it in items}
    for row in rows:
        texts = _source_texts(by_id[row["id"]])
        labels = {s["type"] for a in by_id[row["id"]]["answers"] for s in a.get("labels_sequence") or []}
        strings = [*row["case_description"], *row["consultation_process"], row["experience_and_reflection"]]
        for s in strings:
            assert any(s in t for t in texts), (row["id"], s)
        assert set(row.get("strategy_labels", [])) <= labels


def test_tiny_fixture_converts_faithfully(fixtures, tmp_path):
    out = tmp_path / "es.jsonl"
    convert_psyqa(str(fixtures / "psyqa_tiny.json"), str(out))
    items = json.loads((fixtures / "psyqa_tiny.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert_only_source_text(rows, items)
    records = read_records(out)
    assert [r.id for r in records] == [ID_OFFSET + 17, ID_OFFSET + 18]
    assert all(r.source == "psyqa" and not r.has_gold and r.experience_and_reflection == "" for r in records)

    labelled, unlabelled = rows
    # the labelled answer (second) is chosen over the first; the uncovered final "。" stays attached
    assert labelled["strategy_labels"] == ["Approval and Reassurance", "Restatement", "Interpretation",
                                           "Direct Guidance"]
    assert "".join(labelled["consultation_process"]) == items[0]["answers"][1]["answer_text"]
    assert labelled["consultation_process"][-1].endswith("手机。")
    # unlabelled: first answer, sentences; an empty description is dropped
    assert unlabelled["case_description"] == [items[1]["question"]]
    assert "strategy_labels" not in unlabelled
    assert unlabelled["consultation_process"] == [
        "It sounds tiring to always measure yourself against her.",
        "What do you value in your own life?",
        "Try writing down one thing each day that you did for yourself.",
        "Give it two weeks!",
    ]


def test_sentences_keep_every_character():
    text = "第一句。第二句！“第三句？”\n\nFourth one. Fifth"
    parts = split_sentences(text)
    assert parts == ["第一句。", "第二句！", "“第三句？”", "Fourth one.", "Fifth"]
    assert all(p in text for p in parts)


def test_closing_quotes_and_repeated_marks_stay_with_their_sentence():
    text = 'She said, "I overthink." How did it start?! It was forced!! 3.5 hours.'
    assert split_sentences(text) == ['She said, "I overthink."', "How did it start?!", "It was forced!!", "3.5 hours."]


def test_the_baseline_splits_reports_as_the_converter_does():
    text = '来访者说：“我睡不着。”她很焦虑。\nHomework:\nShe said, "I overthink." Why?!'
    record = record_from_dict({"id": 1, "case_description": [text], "consultation_process": ["x"],
                               "experience_and_reflection": ""})
    assert [s.text for s in report_sentences(record)][:-1] == split_sentences(text)
    assert split_sentences(text)[2] == 'Homework:\nShe said, "I overthink."'  # a heading is no sentence


def _item(**over):
    item = {"question": "q?", "description": "d", "questionID": 1,
            "answers": [{"answer_text": "abcdef", "has_label": True,
                         "labels_sequence": [{"start": 0, "end": 3, "type": "Information"},
                                             {"start": 3, "end": 6, "type": "Others"}]}]}
    item.update(over)
    return item


@pytest.mark.parametrize("bad, where, field", [
    ({"question": None}, "item 1", "question"),
    ({"question": "  "}, "item 1", "question"),
    ({"questionID": "x"}, "item 1", "questionID"),
    ({"answers": []}, "item 1", "answers"),
    ({"answers": [{"answer_text": "abc", "has_label": True,
                   "labels_sequence": [{"start": 0, "end": 9, "type": "Others"}]}]},
     "item 1", "answers[0].labels_sequence[0]"),
    ({"answers": [{"answer_text": "abcdef", "has_label": True,
                   "labels_sequence": [{"start": 0, "end": 4, "type": "Others"},
                                       {"start": 2, "end": 6, "type": "Others"}]}]},
     "item 1", "answers[0].labels_sequence[1]"),
    ({"answers": [{"answer_text": "", "has_label": False, "labels_sequence": None}]},
     "item 1", "answers[0].answer_text"),
])
def test_bad_items_name_item_and_field(bad, where, field):
    with pytest.raises(RecordError) as e:
        convert_items([_item(questionID=0), _item(**bad)], "x.json")
    assert (e.value.where, e.value.field) == (where, field)
    assert "x.json:item 1" in str(e.value)


def test_duplicate_question_ids_rejected():
    with pytest.raises(RecordError, match="duplicate questionID 1"):
        convert_items([_item(), _item()], "x.json")


def test_not_a_list(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('{"question": "q"}', encoding="utf-8")
    with pytest.raises(RecordError, match="expected a JSON array"):
        load_psyqa(p)


def test_script_exits_2_and_writes_nothing_on_bad_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([_item(answers="nope")]), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--input", str(bad),
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "item 0: field 'answers'" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_project_sample_converts():
    from importlib.resources import files

    path = files("emotion_summary") / "resources" / "samples" / "psyqa_sample.json"
    items = load_psyqa(str(path))
    rows = convert_items(items, str(path))
    assert len(rows) == len(items)
    assert_only_source_text(rows, items)


@pytest.mark.shared
def test_shared_psyqa_example_gives_100_valid_records(shared_data, tmp_path):
    src = shared_data / "psyqa" / "PsyQA_example.json"
    out = tmp_path / "psyqa.jsonl"
    convert_psyqa(str(src), str(out))
    records = read_records(out)
    assert len(records) == 100
    assert all(r.id > 1_000_000 for r in records)  # far above LongEmotion's small ids
    longemotion = read_records(shared_data / "longemotion" / "Emotion_Summary.jsonl")
    assert not {r.id for r in records} & {r.id for r in longemotion}
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert_only_source_text(rows, load_psyqa(src))
