"""The simulated GPU inside a worker process: torch.cuda answers for a named card, every tensor is a
FakeTensorMode "cuda" tensor (shape, dtype and device, no data), and a MemoryTracker counts them.
Needs the fake-CUDA library loaded before torch (native.preload)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from emotion_summary.gpusim.cards import Card
from emotion_summary.gpusim.tracker import MemoryTracker, Oracle


@dataclass
class _Props:
    name: str
    total_memory: int
    major: int
    minor: int
    multi_processor_count: int
    is_integrated: bool = False
    is_multi_gpu_board: bool = False
    L2_cache_size: int = 0
    uuid: str = "GPU-simulated"

    def __str__(self):
        return f"_CudaDeviceProperties(name='{self.name}', major={self.major}, minor={self.minor}, " \
               f"total_memory={self.total_memory // 1024**2}MB, multi_processor_count={self.multi_processor_count})"


class CudaQueries:
    """What torch.cuda says on the simulated card; memory figures come from the tracker."""

    def __init__(self, card: Card, tracker: MemoryTracker, context_bytes: int):
        self.card, self.tracker, self.context_bytes = card, tracker, context_bytes
        self.props = _Props(card.name, card.total_bytes, *card.capability, card.sms)

    def patches(self) -> dict:
        tr = self.tracker
        props = lambda device=None: self.props  # noqa: E731
        free = lambda device=None: (max(0, self.card.total_bytes - self.context_bytes - tr.now),  # noqa: E731
                                    self.card.total_bytes)
        return {
            "is_available": lambda: True,
            "device_count": lambda: 1,
            "current_device": lambda: 0,
            "set_device": lambda device: None,
            "synchronize": lambda device=None: None,
            "empty_cache": lambda: None,
            "is_initialized": lambda: True,
            "_lazy_init": lambda: None,
            "get_device_properties": props,
            "get_device_capability": lambda device=None: self.card.capability,
            "get_device_name": lambda device=None: self.card.name,
            # bf16 "support" counting emulation, as torch does on a real pre-Ampere card
            "_check_bf16_tensor_supported": lambda device: True,
            "mem_get_info": free,
            "memory_allocated": lambda device=None: tr.now,
            "max_memory_allocated": lambda device=None: tr.peak,
            "memory_reserved": lambda device=None: tr.now,
            "max_memory_reserved": lambda device=None: tr.peak,
            "reset_peak_memory_stats": lambda device=None: tr.reset_peak(),
            "manual_seed": lambda seed: None,
            "manual_seed_all": lambda seed: None,
        }


@contextlib.contextmanager
def patched(target, name: str, value):
    had = hasattr(target, name)
    old = getattr(target, name, None)
    setattr(target, name, value)
    try:
        yield
    finally:
        if had:
            setattr(target, name, old)
        else:
            delattr(target, name)


@contextlib.contextmanager
def patch_all(pairs):
    with contextlib.ExitStack() as stack:
        for target, name, value in pairs:
            stack.enter_context(patched(target, name, value))
        yield


def _tensor_via_cpu(real_tensor):
    """torch.tensor(data, device="cuda") builds its tensor on the device below the dispatcher's
    modes, which a CPU build cannot; build it on the CPU and move it (a fake copy)."""
    def tensor(data, *args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            return real_tensor(data, *args, **kwargs).to(device)
        return real_tensor(data, *args, device=device, **kwargs)
    return tensor


def _tolist_as_zeros(real_tolist):
    """A host read of a whole fake tensor (generated ids read back) answers zeros: ids that are
    never a stop token, so every row runs to its length (the oracle ends generation)."""
    from torch._subclasses.fake_tensor import FakeTensor

    def tolist(self):
        if not isinstance(self, FakeTensor):
            return real_tolist(self)
        zero = False if self.dtype == torch.bool else 0.0 if self.dtype.is_floating_point else 0
        out = zero
        for size in reversed(self.shape):
            out = [out] * size if not isinstance(out, list) else [list(out) for _ in range(size)]
        return out
    return tolist


def _swap_ignoring_weakrefs(real_swap):
    """Module.to() swaps fake parameters in place; torch refuses when a weakref points at one,
    and fake tensors always have one (the fake mode's own bookkeeping)."""
    import weakref

    def swap_tensors(t1, t2):
        if t1 is t2:
            return
        real_getweakrefs = weakref.getweakrefs
        weakref.getweakrefs = lambda obj: []
        try:
            real_swap(t1, t2)
        finally:
            weakref.getweakrefs = real_getweakrefs
    return swap_tensors


@contextlib.contextmanager
def simulated_gpu(card: Card, context_bytes: int, oracle: Oracle | None = None):
    """Inside: torch.cuda is `card`, new tensors are fake, CUDA storages are tracked (yields the tracker)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from emotion_summary.gpusim import native

    if not native.hooks_active():
        raise RuntimeError("the fake-CUDA library is not active in this process (see gpusim.native)")
    tracker = MemoryTracker(oracle)
    queries = CudaQueries(card, tracker, context_bytes)
    cuda_patches = [(torch.cuda, k, v) for k, v in queries.patches().items()]
    cuda_patches += [(torch.cuda.memory, k, v) for k, v in queries.patches().items()
                     if hasattr(torch.cuda.memory, k)]
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    tracker.fake_mode = fake
    extra = [(torch, "tensor", _tensor_via_cpu(torch.tensor)),
             (torch.utils, "swap_tensors", _swap_ignoring_weakrefs(torch.utils.swap_tensors)),
             (torch.Tensor, "tolist", _tolist_as_zeros(torch.Tensor.tolist))]
    with patch_all(cuda_patches + extra), fake, tracker:
        yield SimpleNamespace(tracker=tracker, fake_mode=fake, queries=queries)
