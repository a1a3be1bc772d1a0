"""Loss only on the answer, with logits computed only where the loss is taken.

Qwen2's vocabulary is 152,064 tokens: fp32 logits cost 0.6 MB per token, 5 GB for an 8K prompt,
while the ~200-token answer needs 0.12 GB. So the LM head runs on the answer positions alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emotion_summary.prompting.encode import IGNORE_INDEX


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked in attention and in the labels."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attn[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def answer_only_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor,
                     norm: torch.nn.Module | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised positions; hidden is [batch, seq, dim].

    Position t predicts token t+1, so the hidden states drop their last position and the labels
    their first, as in transformers' own causal-LM loss (which it computes over all logits). `norm`
    (the decoder's final RMSNorm, when `hidden` is taken before it) runs on the gathered rows alone:
    it works row by row, so that is the same number. The gather index is built where the labels are
    (on the CPU no GPU sync is needed to size it).
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    rows, positions = keep.nonzero(as_tuple=True)
    picked = hidden[rows.to(hidden.device, non_blocking=True), positions.to(hidden.device, non_blocking=True)]
    if norm is not None:
        picked = norm(picked)
    logits = lm_head(picked).float()
    return F.cross_entropy(logits, targets[keep].to(logits.device, non_blocking=True))
