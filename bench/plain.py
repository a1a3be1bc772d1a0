"""The "plain" baseline every benchmark compares the project against: the textbook transformers + peft
QLoRA recipe, written once here.

  4-bit NF4 base (AutoModelForCausalLM.from_pretrained with the project's BitsAndBytesConfig, its
  16-bit LM head) -> peft.prepare_model_for_kbit_training (every 16-bit weight upcast to fp32,
  non-reentrant gradient checkpointing) -> get_peft_model with the project's LoRA of the preset ->
  step: `model(input_ids, attention_mask, labels).loss` (full fp32 logits over the sequence),
  backward, torch AdamW.

Knobs for the published recipes the simulator is calibrated on (bench/simulate.py): `upcast=False`
(a GPTQ base, Qwen's Q-LoRA: peft leaves 16-bit weights alone), `loss="qwen1"` (cross-entropy on the
16-bit shifted logits, as Qwen(1)'s modelling code), `optimizer="adamw8bit"` (bitsandbytes' 8-bit AdamW).

Runs for real (`load_plain`: bench/train_step.py, bench/peers.py) and on the simulated GPU
(`simulate_plain`: a gpusim runner, job kind "run")."""

from __future__ import annotations


def prepare(model, upcast: bool = True):
    """peft's k-bit preparation with non-reentrant checkpointing; `upcast=False`: a GPTQ base."""
    from peft import prepare_model_for_kbit_training

    if upcast:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    model.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    return model


def with_lora(model, cfg):
    from peft import get_peft_model

    from emotion_summary.modeling.adapters import lora_config

    return get_peft_model(model, lora_config(cfg))


def loss_fn(model, kind: str = "hf"):
    """batch -> loss: transformers' own (fp32 logits) or Qwen(1)'s (16-bit shifted logits)."""
    import torch

    def hf(batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss

    def qwen1(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift = logits[..., :-1, :].contiguous()
        return torch.nn.functional.cross_entropy(shift.view(-1, shift.shape[-1]),
                                                 batch["labels"][..., 1:].contiguous().view(-1))

    return {"hf": hf, "qwen1": qwen1}[kind]


def optimizer(model, lr: float, kind: str = "adamw"):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)


def load_plain(cfg):
    """The plain model of a real checkpoint (cfg.model_name_or_path), on the GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM

    from emotion_summary.modeling.device import attn_implementation, compute_dtype
    from emotion_summary.modeling.loading import quantization_config, resolve_model_path

    dtype = compute_dtype(cfg.compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg.model_name_or_path), dtype=dtype, quantization_config=quantization_config(cfg.quantization, dtype),
        attn_implementation=attn_implementation(cfg.attn_implementation),
        device_map={"": 0} if torch.cuda.is_available() else "cpu")
    return with_lora(prepare(model), cfg)


def simulate_plain(sim) -> dict:
    """gpusim runner: one steady-state plain step (optimizer state created first) on the simulated
    card; `sim.job.params` may set upcast, loss and optimizer (see the module docstring)."""
    import torch

    o, cfg, job = sim.job.params, sim.config, sim.job
    base, _ = sim.base_model(quantization="nf4", lm_head_4bit=False)
    with sim.category("weights"):
        model = prepare(base, o.get("upcast", True))
    weights = sim.tracker.live_by_category().get("weights", 0)
    with sim.category("lora + optimizer"):
        model = with_lora(model, cfg)
        opt = optimizer(model, cfg.learning_rate, o.get("optimizer", "adamw"))
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()  # creates the optimizer state, as the first real step would
        opt.zero_grad(set_to_none=True)
    sim.file_as(params, "lora + optimizer")
    sim.optimizer_as_lora(opt)
    model.train()
    width = max(job.seq_lens)
    ids = torch.zeros((len(job.seq_lens), width), dtype=torch.long, device="cuda")
    labels = torch.full_like(ids, -100)
    labels[:, width - job.answer_tokens:] = 0
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    sim.tracker.oracle.nonzero_rows = ids.numel()
    sim.reset_peak()
    with sim.category("saved activations"):
        loss = loss_fn(model, o.get("loss", "hf"))(batch)
    with sim.category("recomputed layer"):
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"recipe": "plain", "weights_gb": weights / 1e9, "optimizer": type(opt).__name__, "adapter_dtype": str(params[0].dtype),
            "lm_head_dtype": str(model.get_base_model().lm_head.weight.dtype)}
