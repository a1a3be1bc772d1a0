import json

import pytest

from emotion_summary.core.atomic_io import append_jsonl, atomic_write_text, read_jsonl_tolerant, repair_jsonl_tail
from emotion_summary.data.records import GOLD_FIELDS, RecordError, read_records, write_records

GOOD = {"id": 1, "case_description": ["Client, 30."], "consultation_process": ["Session one."],
        "experience_and_reflection": "Reflection."}


def write_lines(path, *rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reads_jsonl_and_json_array_alike(tmp_path):
    a = read_records(write_lines(tmp_path / "a.jsonl", GOOD, {**GOOD, "id": 2}))
    (tmp_path / "b.json").write_text(json.dumps([GOOD, {**GOOD, "id": 2}]))
    b = read_records(tmp_path / "b.json")
    assert a == b and [r.id for r in a] == [1, 2]
    assert a[0].source == "longemotion" and not a[0].has_gold


def test_accepts_case_description_as_one_string(tmp_path):
    rec = read_records(write_lines(tmp_path / "a.jsonl", {**GOOD, "case_description": "One string."}))[0]
    assert rec.case_description == ("One string.",)


def test_gold_fields_round_trip(tmp_path):
    gold = {f: f"{f} text\nwrapped" for f in GOLD_FIELDS}
    path = write_records(tmp_path / "out.jsonl", read_records(write_lines(tmp_path / "a.jsonl", {**GOOD, **gold})))
    rec = read_records(path, require_gold=True)[0]
    assert rec.has_gold and rec.gold() == gold


@pytest.mark.parametrize("content, where, message", [
    ('{"id": 1, "case_description": ["a"]', "line 1", "invalid JSON"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "consultation_process"}), "line 1",
     "field 'consultation_process': is missing"),
    (json.dumps({**GOOD, "consultation_process": "not a list"}), "line 1",
     "field 'consultation_process': expected a list of strings, got str"),
    (json.dumps({**GOOD, "id": "7"}), "line 1", "field 'id': expected an integer"),
    (json.dumps({**GOOD, "case_description": ["ok", 3]}), "line 1", "field 'case_description[1]'"),
    (json.dumps({**GOOD, "causes": 5}), "line 1", "field 'causes': expected a string"),
    (json.dumps(GOOD) + "\n\n" + json.dumps(GOOD), "line 3", "field 'id': duplicate id 1 (first at line 1)"),
])
def test_bad_input_names_file_line_and_field(tmp_path, content, where, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(RecordError) as e:
        read_records(path)
    assert f"bad.jsonl:{where}" in str(e.value) and message in str(e.value)


def test_empty_file_and_non_utf8_bytes(tmp_path):
    (tmp_path / "empty.jsonl").write_text("  \n")
    with pytest.raises(RecordError, match="empty.jsonl: file is empty"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"id": 2, "x": "caf\xe9"}\n')
    with pytest.raises(RecordError, match=r"latin.jsonl:line 2: is not valid UTF-8"):
        read_records(tmp_path / "latin.jsonl")


def test_require_gold_names_the_first_missing_field(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", {**GOOD, **{f: "x" for f in GOLD_FIELDS}, "symptoms": ""})
    with pytest.raises(RecordError, match=r"a.jsonl:line 1: field 'symptoms': gold field is missing"):
        read_records(path, require_gold=True)


def test_fingerprint_ignores_whitespace_and_case_but_not_content():
    from emotion_summary.data.records import record_from_dict

    a = record_from_dict(GOOD)
    b = record_from_dict({**GOOD, "consultation_process": ["  session   ONE. "], "id": 99})
    c = record_from_dict({**GOOD, "consultation_process": ["Session two."]})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")

    class Boom:
        def encode(self, _):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_text(path, Boom())
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_torn_last_line_is_skipped_by_reading_and_cut_by_the_owner_before_appending(tmp_path):
    path = tmp_path / "side.jsonl"
    append_jsonl(path, {"id": 1})
    with open(path, "a") as f:
        f.write('{"id": 2, "raw": "cut of')  # a killed run
    before = path.read_bytes()
    assert read_jsonl_tolerant(path) == [{"id": 1}]
    assert path.read_bytes() == before  # a reader never writes: another process may be appending
    repair_jsonl_tail(path)
    append_jsonl(path, {"id": 3})
    assert read_jsonl_tolerant(path) == [{"id": 1}, {"id": 3}]


def test_repair_keeps_a_whole_last_row_that_lacks_its_newline(tmp_path):
    path = tmp_path / "side.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}')
    repair_jsonl_tail(path)
    append_jsonl(path, {"id": 3})
    assert read_jsonl_tolerant(path) == [{"id": 1}, {"id": 2}, {"id": 3}]
    repair_jsonl_tail(tmp_path / "absent.jsonl")  # nothing to repair
    assert not (tmp_path / "absent.jsonl").exists()


@pytest.mark.shared
def test_official_files_load(shared_data):
    inputs = read_records(shared_data / "longemotion" / "Emotion_Summary.jsonl")
    assert len(inputs) == 150 and not any(r.has_gold for r in inputs)
    examples = read_records(shared_data / "longemotion" / "Emotion_Summary_example.jsonl", require_gold=True)
    assert len(examples) == 3 and all(r.has_gold for r in examples)


def test_a_directory_given_as_records_is_called_a_directory(tmp_path):
    from emotion_summary.data.records import RecordError, read_records

    with pytest.raises(RecordError, match=r": is a directory$"):
        read_records(tmp_path)


def test_user_facing_errors_of_records_and_architectures_are_the_projects_error_type():
    from emotion_summary.modeling.architectures import qwen2_config
    from emotion_summary.core.errors import ConfigError, UserError
    from emotion_summary.data.records import Record, check_unique_ids

    twice = [Record(id=1, case_description=("a",), consultation_process=("b",), experience_and_reflection="c")] * 2
    with pytest.raises(UserError, match="duplicate id 1"):
        check_unique_ids(twice)
    with pytest.raises(ConfigError, match="--arch: unknown arch 'huge'"):
        qwen2_config("huge")
