"""Every CUDA storage a simulated run creates, from creation to release: a TorchDispatchMode sees
each op's outputs, a weakref on each new storage sees its release. Gives the allocation log for
the allocator replay, the peak of live bytes, and what was live at the peak by category.

It also answers the few questions fake tensors cannot (a tensor's value read on the host): see
`Oracle`."""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from emotion_summary.gpusim.allocator import round_size


class Oracle:
    """Host reads of fake values, answered as the simulated run would on a GPU: `.item()` or
    `bool()` of a one-element tensor made by op `name` from a tensor made by op `inner` (every
    op output is tagged with its op) ->
    `answers["name(inner)"]`, else `answers["name"]` (default: True / 1; a callable is called for
    each read); the True count of a
    boolean mask (nonzero, x[mask]) -> `nonzero_rows`."""

    def __init__(self):
        self.answers: dict[str, object] = {}
        self.nonzero_rows: int | None = None

    def note(self, func, args, out) -> None:
        if isinstance(out, torch.Tensor):
            name = func.overloadpacket.__name__
            first = next((a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)), None)
            inner = getattr(first, "_es_made_by", None) if out.numel() == 1 else None
            out._es_made_by = f"{name}({inner.split('(')[0]})" if inner else name

    def scalar(self, tensor: torch.Tensor):
        made_by = getattr(tensor, "_es_made_by", "")
        value = self.answers.get(made_by, self.answers.get(made_by.split("(")[0], True))
        if callable(value):
            value = value()
        if tensor.dtype == torch.bool:
            return bool(value)
        return float(value) if tensor.dtype.is_floating_point else int(value)


class MemoryTracker(TorchDispatchMode):
    def __init__(self, oracle: Oracle | None = None):
        super().__init__()
        self.oracle = oracle or Oracle()
        self.events: list[tuple[int, int]] = []  # (handle, bytes) allocated, (handle, -1) freed
        self.live: dict[int, tuple[int, str]] = {}  # handle -> (rounded bytes, category)
        self.host_live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}
        self._next = 0
        self.now = self.peak = self.host_now = self.host_peak = 0
        self.peak_by_category: dict[str, int] = {}
        self.category_name = "other"
        self.fake_mode = None
        self.by_category: Counter = Counter()  # live bytes by category
        self.made_by: dict[int, str] = {}  # handle -> the op that created the storage
        self.category_of: dict[int, str] = {}  # handle -> its category (kept after release)
        self.work = None  # a gpusim.work.WorkCounter: FLOPs and bytes of every op, for step_time
        self.peak_event = 0  # len(events) when the peak was reached
        self.reset_event = 0  # len(events) at the last reset_peak

    # ---- categories -------------------------------------------------------------------------
    @contextlib.contextmanager
    def category(self, name: str):
        before, self.category_name = self.category_name, name
        try:
            yield
        finally:
            self.category_name = before

    def recategorise(self, tensor: torch.Tensor, name: str) -> None:
        handle = getattr(tensor.untyped_storage(), "_es_handle", None)
        if handle in self.live:
            nbytes, old = self.live[handle]
            self.live[handle] = (nbytes, name)
            self.category_of[handle] = name
            self.by_category[old] -= nbytes
            self.by_category[name] += nbytes

    def reset_peak(self) -> None:
        self.peak = self.now
        self.peak_by_category = self.live_by_category()
        self.peak_event = self.reset_event = len(self.events)
        self.host_peak = self.host_now

    def live_by_category(self) -> dict[str, int]:
        return {k: v for k, v in self.by_category.items() if v}

    def largest_since_reset(self) -> tuple[int, str, str]:
        """The largest storage allocated since `reset_peak` (the measured phase): (rounded bytes,
        category, op that made it); (0, "", "") when none was."""
        sizes = [(round_size(nbytes), h) for h, nbytes in self.events[self.reset_event:] if nbytes >= 0]
        if not sizes:
            return 0, "", ""
        size, handle = max(sizes)
        return size, self.category_of.get(handle, "?"), self.made_by.get(handle, "?")

    def largest_at_peak(self, n: int = 5) -> list[tuple[int, str, str]]:
        """The `n` largest storages live at the peak: (rounded bytes, category, op that made it),
        found by replaying the allocation log up to the peak."""
        live: dict[int, int] = {}
        for handle, nbytes in self.events[: self.peak_event]:
            if nbytes >= 0:
                live[handle] = round_size(nbytes)
            else:
                live.pop(handle, None)
        biggest = sorted(live.items(), key=lambda kv: -kv[1])[:n]
        return [(size, self.category_of.get(h, "?"), self.made_by.get(h, "?")) for h, size in biggest]

    # ---- tracking ---------------------------------------------------------------------------
    def track(self, tensor: torch.Tensor, category: str | None = None, made_by: str = "?") -> None:
        st = tensor.untyped_storage()
        if getattr(st, "_es_handle", None) is not None:
            return
        handle = self._next
        self._next += 1
        nbytes = st.nbytes()
        st._es_handle = handle
        if tensor.device.type == "cuda":
            self.events.append((handle, nbytes))
            cat = category or self.category_name
            self.live[handle] = (round_size(nbytes), cat)
            self.category_of[handle], self.made_by[handle] = cat, made_by
            self.by_category[cat] += round_size(nbytes)
            self.now += round_size(nbytes)
            if self.now > self.peak:
                self.peak = self.now
                self.peak_by_category = self.live_by_category()
                self.peak_event = len(self.events)
            self._refs[handle] = weakref.ref(st, lambda _, h=handle: self._release(h))
        elif tensor.device.type == "cpu" and nbytes:
            self.host_live[handle] = nbytes
            self.host_now += nbytes
            self.host_peak = max(self.host_peak, self.host_now)
            self._refs[handle] = weakref.ref(st, lambda _, h=handle: self._release(h))

    def _prepare(self, args, kwargs):
        """Real tensors (constants made outside fake mode) become fake; and ops that touch CUDA
        forget their inputs' constant values, or fake mode would run them for real on a CPU build."""
        from torch._subclasses.fake_tensor import FakeTensor

        flat, spec = tree_flatten((args, kwargs))
        cuda = any((isinstance(x, torch.Tensor) and x.device.type == "cuda")
                   or (isinstance(x, torch.device) and x.type == "cuda") for x in flat)
        changed = False
        for i, x in enumerate(flat):
            if isinstance(x, torch.Tensor):
                if not isinstance(x, FakeTensor) and x.device.type == "cpu":
                    flat[i], changed = self.fake_mode.from_tensor(x), True
                elif cuda and getattr(x, "constant", None) is not None:
                    x.constant = None
        return tree_unflatten(flat, spec) if changed else (args, kwargs)

    def _boolean_index_as_rows(self, indices):
        """x[mask] with a boolean mask: the mask's True count is data; the oracle gives it."""
        out = []
        for i in indices:
            if i is not None and i.dtype == torch.bool:
                rows = torch.empty((self.oracle.nonzero_rows, i.dim()), dtype=torch.long, device=i.device)
                self.track(rows)
                out += list(rows.unbind(1))
            else:
                out.append(i)
        return out

    def _release(self, handle: int) -> None:
        self._refs.pop(handle, None)
        if handle in self.live:
            nbytes, cat = self.live.pop(handle)
            self.now -= nbytes
            self.by_category[cat] -= nbytes
            self.events.append((handle, -1))
        elif handle in self.host_live:
            self.host_now -= self.host_live.pop(handle)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            return self.oracle.scalar(args[0])
        if func is torch.ops.aten.nonzero.default and self.oracle.nonzero_rows is not None:
            out = torch.empty((self.oracle.nonzero_rows, args[0].dim()), dtype=torch.long, device=args[0].device)
            self.track(out)
            return out
        if func is torch.ops.aten.index.Tensor and self.oracle.nonzero_rows is not None \
                and any(i is not None and i.dtype == torch.bool for i in args[1]):
            args = (args[0], self._boolean_index_as_rows(args[1]))
        if self.fake_mode is not None:
            args, kwargs = self._prepare(args, kwargs)
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t, made_by=func.__name__)
        if self.work is not None:
            self.work.count(func, args, kwargs, out, self.category_name)
        self.oracle.note(func, args, out)
        return out
