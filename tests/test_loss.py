import pytest
import torch
import torch.nn.functional as F

from emotion_summary.prompting.encode import IGNORE_INDEX, build_labels
from emotion_summary.modeling.loss import answer_only_loss, collate


def test_build_labels_masks_every_prompt_token_and_keeps_the_answer():
    ids, labels = build_labels([10, 11, 12], [20, 21])
    assert ids == [10, 11, 12, 20, 21]
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 20, 21]


def test_collate_right_pads_and_masks_padding():
    batch = collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                     {"input_ids": [4, 5], "labels": [-100, 5]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def tiny_causal_lm(vocab=97):
    from transformers import Qwen2ForCausalLM

    from emotion_summary.modeling.architectures import qwen2_config

    torch.manual_seed(0)
    return Qwen2ForCausalLM(qwen2_config("tiny", vocab_size=vocab, hidden_size=32, intermediate_size=64)).eval()


def two_answer_batch() -> dict:
    """Two right-padded rows: prompts of 6 and 3 tokens, answers of 3 and 4."""
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    answers = [[20, 21, 22], [30, 31, 32, 33]]
    return collate([dict(zip(("input_ids", "labels"), build_labels(p, a))) for p, a in zip(prompts, answers)],
                   pad_id=0)


def test_answer_only_loss_equals_full_logits_loss():
    model = tiny_causal_lm()
    batch = two_answer_batch()
    full = model(**batch).loss  # transformers' causal-LM loss over all logits, same labels
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    ours = answer_only_loss(hidden, model.lm_head, batch["labels"])
    assert ours.item() == pytest.approx(full.item(), abs=1e-5)


def test_answer_only_loss_runs_the_lm_head_on_answer_positions_only():
    model = tiny_causal_lm()
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    ids, labels = build_labels(list(range(1, 41)), [50, 51, 52])  # 40 prompt tokens, 3 answer tokens
    batch = collate([{"input_ids": ids, "labels": labels}], pad_id=0)
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    answer_only_loss(hidden, model.lm_head, batch["labels"]).backward()
    assert seen == [3]  # 3 logit rows, not 43


def test_answer_only_loss_ignores_prompt_logits_gradient():
    """Changing a prompt token's label cannot matter: only answer positions contribute."""
    hidden = torch.randn(1, 6, 8, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=False)
    labels = torch.tensor([[IGNORE_INDEX] * 3 + [1, 2, 3]])
    answer_only_loss(hidden, head, labels).backward()
    # position t predicts t+1: positions 0 and 1 predict prompt tokens, so get no gradient
    assert torch.all(hidden.grad[0, :2] == 0)
    assert torch.all(hidden.grad[0, 2:5].abs().sum(-1) > 0)
    assert torch.all(hidden.grad[0, 5] == 0)  # the last position predicts nothing


def test_answer_only_loss_matches_manual_cross_entropy():
    torch.manual_seed(1)
    hidden = torch.randn(2, 4, 8)
    head = torch.nn.Linear(8, 11, bias=False)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4, 5], [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX]])
    logits = head(hidden)
    expected = F.cross_entropy(torch.stack([logits[0, 1], logits[0, 2], logits[1, 0]]), torch.tensor([4, 5, 7]))
    assert answer_only_loss(hidden, head, labels).item() == pytest.approx(expected.item(), abs=1e-6)


def test_final_norm_on_the_gathered_rows_gives_transformers_full_logits_loss():
    """The decoder runs without its final RMSNorm; the norm runs on the supervised rows alone."""
    from emotion_summary.modeling.levers import final_norm_deferred

    model = tiny_causal_lm()
    batch = two_answer_batch()
    full = model(**batch).loss
    with final_norm_deferred(model.model) as norm:
        raw = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert isinstance(model.model.norm, type(norm))  # put back
    normed = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert not torch.allclose(raw, normed)
    rows = []
    norm.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    ours = answer_only_loss(raw, model.lm_head, batch["labels"], norm=norm)
    assert rows == [7]  # 3 + 4 answer rows went through the norm, not 2 x 9
    assert ours.item() == pytest.approx(full.item(), abs=1e-6)
    assert torch.equal(ours, answer_only_loss(normed, model.lm_head, batch["labels"]))
