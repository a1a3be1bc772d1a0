"""What a simulated step asks of the card, op by op: FLOPs, bytes read and written in device memory,
bytes over PCIe (host <-> device copies), host-side work (a CPU embedding) and kernel launches,
tagged with the phase (forward / backward / optimizer) and the lever that caused it: "recompute"
(a checkpointed layer run again in the backward), "MLP tiles" (a tile recomputed once more after
its layer's recomputation), host <-> device copies (offloaded activations, the CPU embedding). `gpusim.step_time` turns these counts into seconds for a card."""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.utils._pytree import tree_flatten

_VIEW_OPS = {"view", "_unsafe_view", "alias", "t", "transpose", "permute", "expand", "slice", "select",
             "unsqueeze", "squeeze", "as_strided", "detach", "split", "split_with_sizes", "unbind", "chunk",
             "narrow", "reshape", "_reshape_alias", "view_as_real", "view_as_complex", "lift_fresh",
             "diagonal", "unfold", "set_", "resize_", "empty", "empty_like", "empty_strided", "new_empty",
             "new_empty_strided", "_local_scalar_dense", "device", "is_same_size", "sym_size", "sym_stride",
             "sym_numel", "sym_storage_offset", "record_stream", "_has_compatible_shallow_copy_type"}
# The tracker's memory categories say which phase an op belongs to; kernel scratch (dequantised
# weights, attention workspaces) belongs to the phase it occurs in.
_PHASES = {"saved activations": "forward", "logits": "forward", "weights": "forward", "other": "forward",
           "recomputed layer": "backward", "lora + optimizer": "optimizer", "generation": "forward"}


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _devices(tensors) -> set[str]:
    return {t.device.type for t in tensors}


class WorkCounter:
    """Counts each op the tracker dispatches. Rows are aggregated by their cost signature, so the
    28 identical layers of a model are one row with a count of 28 (or more)."""

    def __init__(self):
        self.rows: Counter = Counter()
        self.recomputing_what: list[str] = []
        self.on = True
        self.last_phase = "forward"
        self.micro_batches = 1  # forward + backward passes in the counted work

    # ---- tags ---------------------------------------------------------------------------------
    def lever(self) -> str:
        return self.recomputing_what[-1] if self.recomputing_what else ""

    @contextlib.contextmanager
    def recomputing(self, what: str):
        """Ops inside are a checkpoint's recomputation: "recompute" (a decoder layer) or "MLP tiles"
        (a tile of a tiled MLP, recomputed again after its layer's recomputation ran it once)."""
        self.recomputing_what.append(what)
        try:
            yield
        finally:
            self.recomputing_what.pop()

    # ---- counting -----------------------------------------------------------------------------
    def count(self, func, args, kwargs, out, category: str) -> None:
        if not self.on:
            return
        name = func.overloadpacket.__name__
        if name in _VIEW_OPS or _is_view(func):
            return
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        devices = _devices(ins + outs)
        phase = self.last_phase = _PHASES.get(category, self.last_phase)
        if devices == {"cpu"}:
            self.rows[("host", name, phase, self.lever(), 0, _moved_bytes(name, ins, outs), 0)] += 1
            return
        if devices == {"cpu", "cuda"} and name in ("_to_copy", "copy_", "copy", "to"):
            moved = max(map(_nbytes, outs or ins))
            self.rows[("pcie", name, phase, self.lever(), 0, 0, moved)] += 1
            return
        flops = _flops(func, args, kwargs, out)
        moved = _moved_bytes(name, ins, outs)
        kind = "matmul" if flops else "memory"
        self.rows[(kind, name, phase, self.lever(), flops, moved, 0)] += 1

    def reset(self) -> None:
        self.rows.clear()

    def summary(self) -> dict:
        """JSON-able: what gpusim.step_time reads."""
        return {"rows": self.table(), "micro_batches": self.micro_batches}

    def table(self) -> list[list]:
        """[kind, op, phase, lever, flops, device bytes, pcie/host bytes, count] per distinct op."""
        return [[*k, n] for k, n in sorted(self.rows.items(), key=lambda kv: -kv[0][4] * kv[1])]


_GATHERS = {"embedding", "index_select", "index", "gather", "take"}


def _moved_bytes(name: str, ins, outs) -> int:
    """Bytes a kernel reads and writes: its inputs and outputs, except that a lookup (embedding,
    index_select) reads only the rows it returns, not its whole table."""
    if name in _GATHERS and ins:
        return 2 * sum(map(_nbytes, outs)) + sum(map(_nbytes, ins[1:]))
    return sum(map(_nbytes, ins)) + sum(map(_nbytes, outs))


def _is_view(func) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _flops(func, args, kwargs, out) -> int:
    from torch.utils.flop_counter import flop_registry

    packet = func.overloadpacket
    if packet in flop_registry:
        if packet is torch.ops.aten.addmm:  # addmm.dtype (TRL's chunked log-probs) passes out_dtype 4th,
            args, kwargs = args[:3], {}  # where torch's formula takes the output shape: a plain addmm
        flops = flop_registry[packet](*args, **kwargs, out_val=out)
        return flops // 2 if _causal(func, args, kwargs) else flops
    if func.namespace == "bitsandbytes" and "gemm" in func.__name__:  # A [.., K] x 4-bit B [N, K]
        a, shape_b = args[0], args[2]
        return 2 * (a.numel() // a.shape[-1]) * a.shape[-1] * int(torch.Size(shape_b).numel() // a.shape[-1])
    return 0


def _causal(func, args, kwargs) -> bool:
    """Flash and memory-efficient attention skip the masked half of a causal L x L product."""
    for i, arg in enumerate(func._schema.arguments):
        if arg.name == "is_causal":
            return bool(kwargs.get("is_causal", args[i] if i < len(args) else False))
    return False


def recompute_patches(counter: WorkCounter) -> list:
    """torch.utils.checkpoint's recomputation (non-reentrant) runs under `_recomputation_hook`:
    a subclass of it tells the counter that the ops inside are recomputed forward work."""
    import torch.utils.checkpoint as cp

    base = cp._recomputation_hook

    class Counted(base):
        def __init__(self, target_frame_ref, gid):
            super().__init__(target_frame_ref, gid)
            self._es = counter.recomputing("MLP tiles" if _recomputes_mlp(target_frame_ref()) else "recompute")

        def __enter__(self):
            self._es.__enter__()
            return super().__enter__()

        def __exit__(self, *exc):
            try:
                return super().__exit__(*exc)
            finally:
                self._es.__exit__(*exc)

    return [(cp, "_recomputation_hook", Counted)]


def _recomputes_mlp(frame) -> bool:
    """The checkpointed function of a frame (the `fn` its recompute_fn closes over) is an MLP's
    forward: a tile of `modeling.levers.tile_mlp`."""
    fn = getattr(frame, "recompute_fn", None)
    code = getattr(fn, "__code__", None)
    if code is None or "fn" not in code.co_freevars:
        return False
    inner = fn.__closure__[code.co_freevars.index("fn")].cell_contents
    owner = getattr(inner, "__self__", None)
    return type(owner).__name__.endswith("MLP")
