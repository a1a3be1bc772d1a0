"""Decoding aids for small models: a repetition penalty on the reply's own tokens, and a stop once
the answer holds all five fields.

A 135M model decoding greedily falls into loops ("She feels that ... She feels that ..."), and the
reply never reaches its next JSON key. transformers' `repetition_penalty` also penalises every token
of the prompt, i.e. the report's words a faithful summary should reuse; this one looks at the
generated tokens only.
"""

from __future__ import annotations

import torch


def reply_repetition_penalty(prompt_width: int, penalty: float):
    """A LogitsProcessor: the logits of tokens already generated (positions after `prompt_width`) are
    divided by `penalty` when positive and multiplied by it when negative (as in CTRL)."""
    from transformers import LogitsProcessor

    class ReplyRepetitionPenalty(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            generated = input_ids[:, prompt_width:]
            if generated.shape[1] == 0:
                return scores
            seen = scores.gather(1, generated)
            return scores.scatter(1, generated, torch.where(seen > 0, seen / penalty, seen * penalty))

    return ReplyRepetitionPenalty()


def stop_when_answer_complete(tokenizer, prompt_width: int, prefix: str = ""):
    """A StoppingCriteria: a row stops once its reply (after `prefix`, the prompt's answer opening) has a
    closed value for every field (prompt.answer_complete). A model that closes its JSON stops a few
    tokens early (the parser closes the brace); one that goes on repeating keys stops there."""
    from transformers import StoppingCriteria

    from emotion_summary.prompting.prompt import answer_complete

    class AnswerComplete(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            return torch.tensor([answer_complete(prefix + t) for t in texts], device=input_ids.device)

    return AnswerComplete()
