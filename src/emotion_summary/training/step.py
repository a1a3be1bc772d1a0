"""One optimizer step of the trainer: micro-batches of encoded examples -> answer-only losses ->
gradients summed over processes -> clipped -> optimizer and schedule stepped. The trainer calls it
once per step; the GPU simulator calls it on fake CUDA to measure a step's memory."""

from __future__ import annotations

import math

from emotion_summary.core import distributed as dist
from emotion_summary.core.errors import UserError


def make_optimizer(cfg, params):
    import torch

    if cfg.optimizer == "paged_adamw_8bit" and torch.cuda.is_available():
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


class TrainingStep:
    """`step(micro, n_micro) -> loss`: one optimizer step of `wrapper` (a Qwen2EmotionSummaryModel
    built `for_training`) over the micro-batches `micro` (lists of indices into `examples`, the
    encoded training examples); `n_micro` is the step's micro-batch count over all processes."""

    def __init__(self, cfg, wrapper, examples: list[dict], optimizer, scheduler):
        self.cfg, self.wrapper, self.examples = cfg, wrapper, examples
        self.optimizer, self.scheduler = optimizer, scheduler

    @classmethod
    def build(cls, cfg, wrapper, examples: list[dict], schedule=None) -> "TrainingStep":
        """With the optimizer of `cfg` over the adapter's weights; `schedule(optimizer)` makes the
        learning-rate schedule (default: constant)."""
        import torch

        optimizer = make_optimizer(cfg, cls.trainable(wrapper))
        scheduler = schedule(optimizer) if schedule else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        return cls(cfg, wrapper, examples, optimizer, scheduler)

    @staticmethod
    def trainable(wrapper) -> list:
        return [p for p in wrapper.model.parameters() if p.requires_grad]

    def batch(self, indices: list[int], examples: list[dict] | None = None) -> dict:
        """The examples `indices`, right-padded into one batch."""
        from emotion_summary.modeling.loss import collate

        examples = self.examples if examples is None else examples
        return collate([examples[i] for i in indices], self.wrapper.tokenizer.pad_token_id)

    def loss_parts(self, indices: list[int], examples: list[dict] | None = None) -> list[tuple[dict, float]]:
        """(batch, weight) pairs whose weighted losses add up to the loss of the micro-batch `indices`.
        Rows of unequal length go one at a time unless the attention kernel pads cheaply (FlashAttention-2):
        SDPA and eager would need a dense [batch, 1, L, L] mask. Each row is weighted by its share
        of the supervised tokens, so the sum is the micro-batch's token mean."""
        from emotion_summary.prompting.encode import IGNORE_INDEX

        examples = self.examples if examples is None else examples
        if len({len(examples[i]["input_ids"]) for i in indices}) == 1:
            return [(self._unpadded(indices, examples), 1.0)]
        if self.wrapper.pads_cheaply:
            return [(self.batch(indices, examples), 1.0)]
        counts = [sum(t != IGNORE_INDEX for t in examples[i]["labels"][1:]) for i in indices]
        return [(self._unpadded([i], examples), n / sum(counts)) for i, n in zip(indices, counts)]

    def _unpadded(self, indices: list[int], examples: list[dict]) -> dict:
        """Rows of one length: no attention mask at all (known here without reading the tensor)."""
        return {**self.batch(indices, examples), "attention_mask": None}

    def __call__(self, micro: list[list[int]], n_micro: int) -> float:
        """One optimizer step over this process's micro-batches, with one host sync (the loss value,
        read once before the weights change)."""
        import torch

        total = torch.zeros(())
        for indices in micro:
            for batch, weight in self.loss_parts(indices):
                loss = self.wrapper.loss(batch) * (weight / n_micro)
                loss.backward()
                total = total.to(loss.device) + loss.detach()
        value = dist.total(total.item())
        if not math.isfinite(value):
            raise UserError(
                f"the loss became {value} (NaN/inf) at step {self.scheduler.last_epoch + 1}. Qwen2 "
                "overflows in fp16, the compute dtype on GPUs without bf16 (T4, V100, RTX 20xx): rerun "
                "with --compute_dtype fp32, or lower --learning_rate.")
        params = self.trainable(self.wrapper)
        dist.sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value
