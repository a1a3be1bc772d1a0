"""One simulated run inside a worker process. It drives the project through its public functions
only: `Qwen2EmotionSummaryModel.for_training(cfg, loaded=<fake base>)` then a `TrainingStep`
(answer-only loss, backward, clip, optimizer step), or `Qwen2EmotionSummaryModel.for_inference`
then `generate_ids` (generation groups by free memory, chunked prefill, CPU embedding); or a
benchmark's own runner ("module:function", given the `Simulation`) on the same fake base model."""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
from types import SimpleNamespace

import torch

from emotion_summary.gpusim.cards import Card
from emotion_summary.gpusim.job import Job

_SESSION = None
FAKE_TOKENIZER = dict(pad_token_id=151643, eos_token_id=151645, pad_token="<|endoftext|>",
                      convert_tokens_to_ids=lambda t: 151643,
                      # generation's stop rule reads the replies: fake ids decode to nothing, never complete
                      batch_decode=lambda ids, **kwargs: [""] * len(ids))


def current_session():
    return _SESSION


def current_tracker():
    return _SESSION.tracker if _SESSION is not None else None


def job_card(job: Job) -> Card:
    c = dict(job.card)
    c["capability"] = tuple(c["capability"])
    return Card(**c)


def job_config(job: Job):
    """The TrainConfig simulated: the preset's, at the job's length and batch, with its overrides."""
    from emotion_summary.training.config import resolve_config

    overrides = {"max_seq_len": max(job.seq_lens), "batch_size": len(job.seq_lens), **job.overrides}
    return resolve_config(job.preset, None, **overrides)


class Simulation:
    """One job on the simulated card, as a job's runner sees it: `job`, `config` (its TrainConfig),
    `tracker` (every CUDA storage; `category(name)` files new ones under a name, `reset_peak()`
    starts the measured phase) and `base_model()`, the base the project's loader would build."""

    def __init__(self, job: Job, tracker):
        self.job, self.tracker, self.config = job, tracker, job_config(job)
        self.real_tokens = sum(job.seq_lens)  # tokens that are not padding (flash-attn's varlen path)
        self.started = time.time()

    def category(self, name: str):
        return self.tracker.category(name)

    def reset_peak(self) -> None:
        """Start the measured phase: peak memory and the op counter (FLOPs, bytes) from here."""
        self.tracker.reset_peak()
        self.tracker.work.reset()

    def base_model(self, quantization: str | None = None, attn: str | None = None, lm_head_4bit: bool | None = None):
        """(model, tokenizer) as `load_base_model` places them on the GPU for this job's config
        (quantisation, compute dtype, attention, 4-bit LM head), with fake weights."""
        from emotion_summary.gpusim.archs import yarn_scaling
        from emotion_summary.gpusim.build import build_base_model
        from emotion_summary.modeling.device import attn_implementation, compute_dtype, device
        from emotion_summary.modeling.loading import disable_cpu_weight_repacking

        cfg, job = self.config, self.job
        dtype = compute_dtype(cfg.compute_dtype)
        with self.category("weights"):
            base = build_base_model(job.arch, job.layers, quantization or cfg.quantization, dtype,
                                    attn_implementation(attn or cfg.attn_implementation, dtype),
                                    cfg.lm_head_4bit if lm_head_4bit is None else lm_head_4bit, device(),
                                    yarn_scaling(job.arch) if job.yarn else None)
        disable_cpu_weight_repacking(base)
        return base, SimpleNamespace(**FAKE_TOKENIZER)

    def file_as(self, params, name: str) -> None:
        """File `params` (and, for trainable ones, their gradients as they appear) under `name`."""
        for p in params:
            self.tracker.recategorise(p, name)
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda p: self.tracker.recategorise(p.grad, name))

    def optimizer_as_lora(self, optimizer) -> None:
        """What `optimizer.step()` allocates (its state) is filed under "lora + optimizer"."""
        _categorise_optimizer_step(optimizer, self.tracker)

    def result(self, cfg=None) -> dict:
        return _result(self.job, cfg, job_card(self.job), self.tracker, self.started)


@contextlib.contextmanager
def simulation(job: Job):
    """The simulated card of `job` with the patches every run needs (attention kernels, bitsandbytes'
    CUDA helpers, gemm_4bit's scratch); yields the Simulation."""
    global _SESSION
    from emotion_summary.gpusim.attention import install
    from emotion_summary.gpusim.runtime import patch_all, simulated_gpu
    from emotion_summary.gpusim.work import WorkCounter, recompute_patches

    with simulated_gpu(job_card(job), job.context_bytes) as gpu:
        gpu.tracker.work = WorkCounter()
        sim = Simulation(job, gpu.tracker)
        padded = len(set(job.seq_lens)) > 1
        # "all(eq)": transformers' packed-sequence check on the position ids (`(... == 0).all()`):
        # never packed. "all": the attention mask has no padding (a padded job's masks do).
        gpu.tracker.oracle.answers.update({"all": not padded, "all(eq)": True, "eq(sum)": not padded,
                                           "isfinite": True})
        _SESSION = sim
        try:
            with patch_all(install(job.flash_attn) + _bnb_patches() + _dispatch_extras(gpu.tracker)
                           + recompute_patches(gpu.tracker.work)):
                yield sim
        finally:
            _SESSION = None


def run_job(spec: dict) -> dict:
    """A job dict (see gpusim.api.job) -> its result dict. The worker's target."""
    job = Job(**spec)
    runs = {"train": simulate_training_step, "generate": simulate_generation, "run": run_runner}
    if job.kind not in runs:
        raise ValueError(f"unknown job kind {job.kind!r}")
    with simulation(job) as sim:
        return runs[job.kind](sim)


def _examples(job: Job) -> list[dict]:
    out = []
    for n in job.seq_lens:
        ans = min(job.answer_tokens, n - 1)
        out.append({"input_ids": [0] * n, "labels": [-100] * (n - ans) + [0] * ans})
    return out


def _file_loss_as_logits(decoder, tracker) -> None:
    """What runs after the decoder's forward (final norm, LM head, cross-entropy: the loss) is filed
    under "logits"; the decoder's forward itself under "saved activations"."""
    decoder.register_forward_pre_hook(lambda *_: setattr(tracker, "category_name", "saved activations"))
    decoder.register_forward_hook(lambda *_: setattr(tracker, "category_name", "logits"))


def simulate_training_step(sim: Simulation) -> dict:
    """The steady state of the project's trainer: the optimizer state exists (one optimizer step on
    zero gradients creates it, as a first real step would), then one `TrainingStep` over two
    micro-batches (the first one's gradients live through the second)."""
    from emotion_summary.gpusim.runtime import patch_all
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
    from emotion_summary.training.step import TrainingStep

    job, cfg, tracker = sim.job, sim.config, sim.tracker
    tracker.oracle.nonzero_rows = sum(min(job.answer_tokens, n - 1) for n in job.seq_lens)
    wrapper = Qwen2EmotionSummaryModel.for_training(cfg, loaded=sim.base_model())
    params = TrainingStep.trainable(wrapper)
    sim.file_as(params, "lora + optimizer")
    built = tracker.live_by_category()
    step = TrainingStep.build(cfg, wrapper, _examples(job))
    sim.optimizer_as_lora(step.optimizer)
    _file_loss_as_logits(wrapper.model.get_base_model().model, tracker)
    wrapper.model.train()
    sim.reset_peak()
    _init_optimizer_state(step.optimizer, params)
    tracker.work.reset()  # count the steady step only: two micro-batches and one optimizer step
    tracker.work.micro_batches = 2
    backward = torch.Tensor.backward
    batch = list(range(len(job.seq_lens)))
    with patch_all([(torch.Tensor, "backward", _categorised(tracker, "recomputed layer", backward))]):
        step([batch, batch], 2)
    base = wrapper.model.get_base_model()
    return {**sim.result(cfg), "weights_gb": built.get("weights", 0) / 1e9,
            "lora_gb": built.get("lora + optimizer", 0) / 1e9, "lora_params": sum(p.numel() for p in params),
            "adapter_dtype": str(params[0].dtype).replace("torch.", ""),
            "compute_dtype": str(base.dtype).replace("torch.", ""),
            "attn_implementation": base.config._attn_implementation}


def simulate_generation(sim: Simulation) -> dict:
    """The wrapper's `generate_ids` (prompts grouped by the free memory, left-padded, prefilled in
    chunks, greedy with a KV cache) on the model `load` builds for an adapter directory of the
    preset (embedding in CPU RAM where training kept it there); every row runs `max_new_tokens`."""
    from emotion_summary.modeling.adapters import lora_config
    from emotion_summary.modeling.summary_model import Qwen2EmotionSummaryModel
    from emotion_summary.prompting.prompt import PromptSpec

    job, cfg, tracker = sim.job, sim.config, sim.tracker
    wrapper = Qwen2EmotionSummaryModel.for_inference(sim.base_model(), cfg, PromptSpec(), adapter=lora_config(cfg))
    sim.file_as(wrapper.model.parameters(), "weights")
    groups, last_batch = [], [0]
    wrapper.model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: last_batch.__setitem__(0, kwargs["input_ids"].shape[0]), with_kwargs=True)
    tracker.oracle.answers.update({"max": 1, "eq(max)": _finished_after(job.max_new_tokens,
                                                                       lambda: groups.append(last_batch[0]))})
    sim.reset_peak()
    with sim.category("generation"):
        new_ids = wrapper.generate_ids([[0] * n for n in job.seq_lens], job.max_new_tokens)
    return {**sim.result(cfg), "decode_steps": max(len(ids) for ids in new_ids), "generate_groups": groups}


def run_runner(sim: Simulation) -> dict:
    """Kind "run": the job's runner ("module:function", its module importable in the worker) gets
    the Simulation and returns what it adds to the result."""
    module, _, name = sim.job.runner.partition(":")
    info = getattr(importlib.import_module(module), name)(sim) or {}
    return {**sim.result(), **info}


def _finished_after(steps: int, on_finish=lambda: None):
    """generate() asks once per decoding step whether every sequence has finished
    (`unfinished_sequences.max() == 0`): no sequence stops early, all stop after `steps` tokens,
    in every generate call."""
    asked = [0]

    def finished() -> bool:
        asked[0] += 1
        if asked[0] < steps:
            return False
        asked[0] = 0
        on_finish()
        return True
    return finished


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
                    self.track(scratch, made_by="gemm_4bit (dequantised weight)")
                    out = original(self, func, types, args, kwargs)
                del scratch
                return out
        if func.namespace == "bitsandbytes" and "dequantize" in func.__name__:
            with self.category("kernel scratch"):
                return original(self, func, types, args, kwargs)
        return original(self, func, types, args, kwargs)

    return [(tracker.__class__, "__torch_dispatch__", dispatch)]


def _result(job: Job, cfg, card: Card, tracker, started: float) -> dict:
    from emotion_summary.gpusim.allocator import first_unserved_request, smallest_pool

    pool = smallest_pool(tracker.events)
    need = pool + job.context_bytes
    setter = first_unserved_request(tracker.events)
    return {
        "kind": job.kind, "preset": job.preset, "arch": job.arch, "layers": job.layers,
        "seq_len": max(job.seq_lens), "seq_lens": list(job.seq_lens), "batch_size": len(job.seq_lens),
        "card": card.name, "vram_gb": card.total_bytes / 1e9, "vram_gib": card.total_bytes / 2**30,
        "flash_attn": job.flash_attn, "overrides": job.overrides,
        "peak_allocated_gb": tracker.peak / 1e9, "min_pool_gb": pool / 1e9,
        "context_gb": job.context_bytes / 1e9, "estimated_need_gb": need / 1e9,
        "fits": need <= card.total_bytes, "headroom_gb": (card.total_bytes - need) / 1e9,
        "breakdown_gb": {k: v / 1e9 for k, v in sorted(tracker.peak_by_category.items())},
        "largest_at_peak": [{"gb": size / 1e9, "category": cat, "made_by": op}
                            for size, cat, op in tracker.largest_at_peak()],
        "largest_new": _largest_new(tracker),
        "pool_set_by": _request(tracker, setter),
        "host_peak_gb": tracker.host_peak / 1e9, "events": len(tracker.events),
        "work": tracker.work.summary() if tracker.work is not None else None,
        "sim_seconds": round(time.time() - started, 1),
        "config": {k: getattr(cfg, k) for k in ("max_seq_len", "batch_size", "offload_activations",
                                                 "mlp_tile_tokens", "embedding_on_cpu", "lm_head_4bit",
                                                 "lora_r", "lora_dropout", "optimizer")} if cfg else job.overrides,
    }


def _largest_new(tracker) -> dict:
    """The largest storage of the measured phase (a dense L x L attention mask would show here)."""
    size, category, made_by = tracker.largest_since_reset()
    return {"gb": size / 1e9, "category": category, "made_by": made_by}


def _request(tracker, setter) -> dict | None:
    """The first request a pool of the peak's size cannot serve: its size, op, category, and what
    was allocated then (why the smallest pool is larger than the peak)."""
    if setter is None:
        return None
    index, allocated = setter
    handle, nbytes = tracker.events[index]
    return {"gb": nbytes / 1e9, "made_by": tracker.made_by.get(handle, "?"),
            "category": tracker.category_of.get(handle, "?"), "allocated_gb": allocated / 1e9}
