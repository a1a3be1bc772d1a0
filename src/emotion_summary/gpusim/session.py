"""One simulated run inside a worker process: the project's own `for_training` -> `Trainer._optimizer_step`
(answer-only loss, backward, clip, optimizer step) or its generate call, on the simulated card."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict
from types import SimpleNamespace

import torch

from emotion_summary.gpusim.cards import Card
from emotion_summary.gpusim.job import Job

CATEGORIES = ("weights", "lora + optimizer", "saved activations", "logits", "recomputed layer",
              "kernel scratch", "generation")
_SESSION = None


def current_session():
    return _SESSION


def current_tracker():
    return _SESSION.tracker if _SESSION is not None else None


def _card(job: Job) -> Card:
    c = dict(job.card)
    c["capability"] = tuple(c["capability"])
    return Card(**c)


@contextlib.contextmanager
def _session(job: Job, tracker, real_tokens: int):
    global _SESSION
    _SESSION = SimpleNamespace(job=job, tracker=tracker, real_tokens=real_tokens)
    try:
        yield _SESSION
    finally:
        _SESSION = None


def _fake_loader(job: Job, tracker):
    """Stands in for model.load_base_model: the same model and placement, fake weights."""
    from emotion_summary.gpusim.archs import yarn_scaling
    from emotion_summary.gpusim.build import build_base_model
    from emotion_summary.modeling import device as project
    from emotion_summary.modeling.loading import disable_cpu_weight_repacking

    def load_base_model(name_or_path, quantization="nf4", dtype_name="auto", attn="auto", lm_head_4bit=False,
                        **_ignored):
        dtype = project.compute_dtype(dtype_name)
        with tracker.category("weights"):
            base = build_base_model(job.arch, job.layers, quantization, dtype, project.attn_implementation(attn),
                                    lm_head_4bit, project.device(), yarn_scaling(job.arch) if job.yarn else None)
        disable_cpu_weight_repacking(base)
        tok = SimpleNamespace(pad_token_id=151643, eos_token_id=151645, pad_token="<|endoftext|>",
                              convert_tokens_to_ids=lambda t: 151643)
        return base, tok

    return load_base_model


def _bnb_patches() -> list:
    """Paged optimizer state is plain GPU memory here (it lives on the GPU while it fits), and the
    helpers that call the CUDA library directly become their torch equivalents."""
    import bitsandbytes.functional as F

    def get_paged(*shape, dtype=torch.float32, device=None):
        return torch.empty(shape, dtype=dtype, device=device or "cuda")

    def fill(A, value, device=None, prefetch=True):
        A.fill_(value)

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    real_map = F.create_dynamic_map

    @functools.cache
    def create_dynamic_map(*args, **kwargs):  # it calls .tolist(): computed on real tensors
        with unset_fake_temporarily():
            return real_map(*args, **kwargs)

    return [(F, "get_paged", get_paged), (F, "fill", fill), (F, "prefetch_tensor", lambda *a, **k: None),
            (F, "create_dynamic_map", create_dynamic_map)]


def _categorised(tracker, name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with tracker.category(name):
            return fn(*args, **kwargs)
    return wrapper


def _categorise_optimizer_step(optimizer, tracker) -> None:
    saved = []

    def pre(*_):
        saved.append(tracker.category_name)
        tracker.category_name = "lora + optimizer"

    def post(*_):
        tracker.category_name = saved.pop()

    optimizer.register_step_pre_hook(pre)
    optimizer.register_step_post_hook(post)


def _init_optimizer_state(optimizer, params) -> None:
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _gemm_dequant_threshold():
    """bitsandbytes' CUDA gemm_4bit materialises the whole weight in the compute dtype past 1,536 rows."""
    return 1536


def _dispatch_extras(tracker):
    """Kernel scratch the fake kernels hide: gemm_4bit's dequantised weight on its fallback path."""
    gemm = torch.ops.bitsandbytes.gemm_4bit.default
    threshold = _gemm_dequant_threshold()
    original = tracker.__class__.__torch_dispatch__

    def dispatch(self, func, types, args=(), kwargs=None):
        if func is gemm:
            a, shape_b = args[0], args[2]
            rows = a.numel() // a.shape[-1]
            if rows > threshold:
                with self.category("kernel scratch"):
                    scratch = torch.empty(tuple(shape_b), dtype=a.dtype, device=a.device)
                    self.track(scratch)
                    out = original(self, func, types, args, kwargs)
                del scratch
                return out
        if func.namespace == "bitsandbytes" and "dequantize" in func.__name__:
            with self.category("kernel scratch"):
                return original(self, func, types, args, kwargs)
        return original(self, func, types, args, kwargs)

    return [(tracker.__class__, "__torch_dispatch__", dispatch)]


def _examples(job: Job) -> list[dict]:
    out = []
    for n in job.seq_lens:
        ans = min(job.answer_tokens, n - 1)
        out.append({"input_ids": [0] * n, "labels": [-100] * (n - ans) + [0] * ans})
    return out


def run_job(job: Job) -> dict:
    if job.kind == "train":
        return simulate_training_step(job)
    if job.kind == "generate":
        return simulate_generation(job)
    if job.kind == "plain":
        return simulate_plain_training(job)
    raise ValueError(f"unknown job kind {job.kind!r}")


def _config(job: Job):
    from emotion_summary.training.config import resolve_config

    overrides = {"max_seq_len": max(job.seq_lens), "batch_size": len(job.seq_lens), **job.overrides}
    return resolve_config(job.preset, None, **overrides)


def _common_patches(job, tracker):
    import peft

    from emotion_summary.modeling import summary_model as project
    from emotion_summary.gpusim.attention import install
    from emotion_summary.gpusim.work import WorkCounter, recompute_patches

    tracker.work = tracker.work or WorkCounter()
    return (install(job.flash_attn) + _bnb_patches() + _dispatch_extras(tracker) + recompute_patches(tracker.work)
            + [(project, "load_base_model", _fake_loader(job, tracker)),
               (peft, "get_peft_model", _categorised(tracker, "lora + optimizer", peft.get_peft_model)),
               (project, "answer_only_loss", _categorised(tracker, "logits", project.answer_only_loss))])


def simulate_training_step(job: Job) -> dict:
    """The steady state of the project's Trainer: the optimizer state exists (one optimizer step on
    zero gradients creates it, as a first real step would), then `Trainer._optimizer_step` over two
    micro-batches (the first one's gradients live through the second)."""
    from emotion_summary.gpusim.runtime import patch_all, simulated_gpu
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
    from emotion_summary.training.trainer import Trainer, make_optimizer

    card, cfg = _card(job), _config(job)
    padded = len(set(job.seq_lens)) > 1
    started = time.time()
    with simulated_gpu(card, job.context_bytes) as gpu, _session(job, gpu.tracker, sum(job.seq_lens)):
        tracker = gpu.tracker
        tracker.oracle.answers.update({"all": not padded, "eq(sum)": not padded, "isfinite": True})
        tracker.oracle.nonzero_rows = sum(min(job.answer_tokens, n - 1) for n in job.seq_lens)
        with patch_all(_common_patches(job, tracker)):
            wrapper = Qwen2EmotionSummaryModel.for_training(cfg)
            built = tracker._by_category()
            trainer = Trainer.__new__(Trainer)
            trainer.cfg, trainer.wrapper, trainer.train_examples = cfg, wrapper, _examples(job)
            params = [p for p in wrapper.model.parameters() if p.requires_grad]
            trainer.optimizer = make_optimizer(cfg, params)
            _categorise_optimizer_step(trainer.optimizer, tracker)
            trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
            for p in params:
                p.register_post_accumulate_grad_hook(lambda p: tracker.recategorise(p.grad, "lora + optimizer"))
            backward = torch.Tensor.backward
            wrapper.model.train()
            tracker.reset_peak()
            batch = list(range(len(job.seq_lens)))
            _init_optimizer_state(trainer.optimizer, params)
            tracker.work.reset()  # count the steady step only: two micro-batches and one optimizer step
            tracker.work.micro_batches = 2
            with tracker.category("saved activations"), patch_all(
                    [(torch.Tensor, "backward", _categorised(tracker, "recomputed layer", backward))]):
                trainer._optimizer_step([batch, batch], 2)
        result = _result(job, cfg, card, tracker, started)
        result.update(weights_gb=built.get("weights", 0) / 1e9, lora_gb=built.get("lora + optimizer", 0) / 1e9,
                      lora_params=sum(p.numel() for p in params),
                      adapter_dtype=str(params[0].dtype).replace("torch.", ""),
                      compute_dtype=str(wrapper.model.get_base_model().dtype).replace("torch.", ""),
                      attn_implementation=wrapper.model.get_base_model().config._attn_implementation)
        return result


def simulate_generation(job: Job) -> dict:
    """The generate call of Qwen2EmotionSummaryModel._generate_batch (left-padded prompts, greedy,
    KV cache), on the model `load` builds for an adapter directory (base + LoRA)."""
    from peft import get_peft_model

    from emotion_summary.gpusim.runtime import patch_all, simulated_gpu
    from emotion_summary.modeling import summary_model as project

    card, cfg = _card(job), _config(job)
    padded = len(set(job.seq_lens)) > 1
    started = time.time()
    with simulated_gpu(card, job.context_bytes) as gpu, _session(job, gpu.tracker, sum(job.seq_lens)):
        tracker = gpu.tracker
        tracker.oracle.answers.update({"all": not padded, "eq(sum)": not padded, "isfinite": True,
                                       "eq(max)": _finished_after(job.max_new_tokens), "max": 1})
        with patch_all(_common_patches(job, tracker)), torch.no_grad():
            base, tok = project.load_base_model(cfg.model_name_or_path, cfg.quantization, cfg.compute_dtype,
                                                cfg.attn_implementation, cfg.lm_head_4bit)
            with tracker.category("weights"):
                model = get_peft_model(base, project.lora_config(cfg))
            model.eval()
            tracker.reset_peak()
            tracker.work.reset()
            width, dev = max(job.seq_lens), project.device()
            ids = torch.zeros((len(job.seq_lens), width), dtype=torch.long, device=dev)
            attn = torch.ones((len(job.seq_lens), width), dtype=torch.long, device=dev)
            with tracker.category("generation"):
                out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=job.max_new_tokens,
                                     min_new_tokens=job.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=[tok.eos_token_id, 151643],
                                     use_cache=True)
        result = _result(job, cfg, card, tracker, started)
        result["decode_steps"] = out.shape[1] - width
        return result


def simulate_plain_training(job: Job) -> dict:
    """The textbook transformers + peft QLoRA step the published tables measure (calibration only):
    prepare_model_for_kbit_training (16-bit weights upcast to fp32; overrides upcast=False skips it,
    as peft does for a GPTQ base), checkpointing, LoRA on all linear layers (lora_r, lora_alpha),
    flash-attn, `model(ids, labels=ids).loss` over full fp32 logits (loss="qwen1": cross-entropy on
    the 16-bit shifted logits, as Qwen(1)'s modelling code does), 8-bit AdamW (optimizer="adamw":
    torch's fp32 AdamW, the transformers Trainer default). Not the project's code: the project's step is simulate_training_step."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from emotion_summary.gpusim.build import build_base_model
    from emotion_summary.gpusim.runtime import patch_all, simulated_gpu

    card, started = _card(job), time.time()
    o = job.overrides
    with simulated_gpu(card, job.context_bytes) as gpu, _session(job, gpu.tracker, sum(job.seq_lens)):
        tracker = gpu.tracker
        tracker.oracle.answers.update({"all": True, "eq(sum)": True, "isfinite": True})
        with patch_all(_common_patches(job, tracker)):
            with tracker.category("weights"):
                base = build_base_model(job.arch, job.layers, "nf4", torch.bfloat16, "flash_attention_2", False,
                                        torch.device("cuda", 0))
                if o.get("upcast", True):
                    base = prepare_model_for_kbit_training(
                        base, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
                else:  # a GPTQ base (Qwen's Q-LoRA): peft leaves the 16-bit weights alone
                    from emotion_summary.modeling.levers import enable_checkpointing

                    base.requires_grad_(False)
                    enable_checkpointing(base)
                    base.enable_input_require_grads()
            with tracker.category("lora + optimizer"):
                model = get_peft_model(base, LoraConfig(r=o.get("lora_r", 32), lora_alpha=o.get("lora_alpha", 32),
                                                        lora_dropout=0.0, target_modules="all-linear",
                                                        task_type="CAUSAL_LM"))
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = (torch.optim.AdamW(params, lr=1e-4) if o.get("optimizer") == "adamw"
                         else bnb.optim.AdamW8bit(params, lr=1e-4))
            _categorise_optimizer_step(optimizer, tracker)
            for p in params:
                p.register_post_accumulate_grad_hook(lambda p: tracker.recategorise(p.grad, "lora + optimizer"))
            _init_optimizer_state(optimizer, params)
            tracker.work.reset()
            model.train()
            tracker.reset_peak()
            ids = torch.zeros((len(job.seq_lens), max(job.seq_lens)), dtype=torch.long, device="cuda")
            tracker.oracle.nonzero_rows = ids.numel()
            with tracker.category("saved activations"):
                if o.get("loss", "hf") == "hf":  # transformers' loss: fp32 logits
                    loss = model(input_ids=ids, labels=ids).loss
                else:  # Qwen(1)'s own modelling code: cross-entropy on the 16-bit shifted logits
                    logits = model(input_ids=ids).logits
                    shift = logits[..., :-1, :].contiguous()
                    loss = torch.nn.functional.cross_entropy(shift.view(-1, shift.shape[-1]),
                                                             ids[..., 1:].contiguous().view(-1))
                    del logits, shift
            with tracker.category("recomputed layer"):
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return _result(job, None, card, tracker, started)


def _finished_after(steps: int):
    """generate() asks once per decoding step whether every sequence has finished
    (`unfinished_sequences.max() == 0`): no sequence stops early, all stop after `steps` tokens."""
    asked = [0]

    def finished() -> bool:
        asked[0] += 1
        return asked[0] >= steps
    return finished


def _result(job: Job, cfg, card: Card, tracker, started: float) -> dict:
    from emotion_summary.gpusim.allocator import smallest_pool

    pool = smallest_pool(tracker.events)
    need = pool + job.context_bytes
    return {
        "kind": job.kind, "preset": job.preset, "arch": job.arch, "layers": job.layers,
        "seq_len": max(job.seq_lens), "seq_lens": list(job.seq_lens), "batch_size": len(job.seq_lens),
        "card": card.name, "vram_gb": card.total_bytes / 1e9, "vram_gib": card.total_bytes / 2**30,
        "flash_attn": job.flash_attn, "overrides": job.overrides,
        "peak_allocated_gb": tracker.peak / 1e9, "min_pool_gb": pool / 1e9,
        "context_gb": job.context_bytes / 1e9, "estimated_need_gb": need / 1e9,
        "fits": need <= card.total_bytes, "headroom_gb": (card.total_bytes - need) / 1e9,
        "breakdown_gb": {k: v / 1e9 for k, v in sorted(tracker.peak_by_category.items())},
        "host_peak_gb": tracker.host_peak / 1e9, "events": len(tracker.events),
        "work": tracker.work.summary() if tracker.work is not None else None,
        "sim_seconds": round(time.time() - started, 1),
        "config": {k: getattr(cfg, k) for k in ("max_seq_len", "batch_size", "offload_activations",
                                                 "mlp_tile_tokens", "embedding_on_cpu", "lm_head_4bit",
                                                 "lora_r", "lora_dropout", "optimizer")} if cfg else job.overrides,
    }


def job_from_dict(d: dict) -> Job:
    return Job(**d)


def job_to_dict(job: Job) -> dict:
    return asdict(job)
