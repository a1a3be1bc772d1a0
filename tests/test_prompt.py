import json

from emotion_summary.data.text import detect_language
from emotion_summary.prompting.prompt import (TRIM_MARKER, PromptSpec, answer_text, build_prompt,
                                    parse_answer)
from emotion_summary.data.records import GOLD_FIELDS, record_from_dict

REC = record_from_dict({
    "id": 5, "case_description": ["A 30-year-old teacher."],
    "consultation_process": ["word " * 400, "Short paragraph."],
    "experience_and_reflection": "The counsellor reflected.",
})


def words(text: str) -> int:
    return len(text.split())


def test_prompt_carries_the_three_sections_and_the_language_rule():
    user = build_prompt(PromptSpec(), REC).messages[1]["content"]
    for heading in ("## Case description", "## Consultation process", "## Experience and reflection"):
        assert heading in user
    assert "Write the summary in English." in user
    assert "请用中文" in build_prompt(PromptSpec(language="zh"), REC).messages[1]["content"]


def test_long_reports_are_trimmed_in_the_middle_of_the_longest_paragraph():
    prompt = build_prompt(PromptSpec(), REC, max_prompt_tokens=300, count_tokens=words)
    text = " ".join(m["content"] for m in prompt.messages)
    assert words(text) <= 300 and prompt.trimmed_tokens > 0
    assert TRIM_MARKER.split("{")[0].strip() in text  # the visible marker
    assert "Short paragraph." in text and "The counsellor reflected." in text  # others untouched


def test_a_report_that_fits_is_untouched():
    prompt = build_prompt(PromptSpec(), REC, max_prompt_tokens=10_000, count_tokens=words)
    assert prompt.trimmed_tokens == 0 and prompt.messages == build_prompt(PromptSpec(), REC).messages


def test_answer_text_parses_back():
    fields = {f: f"{f} value with \"quotes\" and\nnewline" for f in GOLD_FIELDS}
    parsed = parse_answer(answer_text(fields))
    assert parsed.fields == fields and parsed.complete and parsed.parsed_json


def test_parser_tolerates_fences_prose_trailing_commas_and_missing_keys():
    reply = 'Here you go:\n```json\n{"Causes": "work stress", "symptoms": ["insomnia", "worry"],}\n```\nThanks'
    parsed = parse_answer(reply)
    assert parsed.fields["causes"] == "work stress"
    assert parsed.fields["symptoms"] == "insomnia worry"
    assert parsed.missing == ["treatment_process", "characteristics_of_illness", "treatment_effect"]


def test_parser_recovers_fields_from_a_cut_off_reply():
    reply = '{"causes": "loss of a parent", "symptoms": "low mood", "treatment_process": "CBT over six'
    parsed = parse_answer(reply)
    assert not parsed.parsed_json
    assert parsed.fields["causes"] == "loss of a parent" and parsed.fields["symptoms"] == "low mood"


def test_prompt_spec_round_trips_through_a_checkpoint_dir(tmp_path):
    spec = PromptSpec(language="en")
    spec.save(tmp_path)
    assert PromptSpec.load(tmp_path) == spec
    assert json.loads((tmp_path / "prompt.json").read_text())["version"] == "es-v1"


def test_language_detection():
    assert detect_language("The client felt anxious.") == "en"
    assert detect_language("来访者感到焦虑，失眠。") == "zh"


def test_reports_of_many_short_paragraphs_lose_whole_paragraphs_from_the_middle():
    many = record_from_dict({"id": 6, "case_description": ["A client."],
                             "consultation_process": [f"Paragraph {i} is short." for i in range(150)],
                             "experience_and_reflection": "Closing reflection."})
    prompt = build_prompt(PromptSpec(), many, max_prompt_tokens=300, count_tokens=words)
    text = prompt.messages[1]["content"]
    assert words(prompt.messages[0]["content"]) + words(text) <= 300
    assert "Paragraph 0 is short." in text and "Closing reflection." in text
    assert "Paragraph 75 is short." not in text and "paragraphs)" in text


def test_an_answer_is_complete_once_every_field_has_a_closed_value():
    from emotion_summary.prompting.prompt import answer_complete

    whole = answer_text({k: f'{k} "quoted" text' for k in GOLD_FIELDS})
    assert answer_complete(whole) and answer_complete(whole[:-1])  # the closing brace is not needed
    cut = whole[: whole.rindex('"')]  # the last value still open
    assert not answer_complete(cut)
    repeated = whole[:-1] + ',\n "treatment_process": "again'  # a small model going on after the fifth field
    assert answer_complete(repeated)
