"""Generation batching: how many records per generate call and how long each prefill chunk is."""

from __future__ import annotations

import torch

from emotion_summary.modeling.device import device

DEFAULT_CPU_BATCH = 4  # records per generate call on the CPU (RAM is not the limit there)
MAX_GPU_BATCH = 16  # records per generate call when the free GPU memory would allow more
PREFILL_CHUNK_TOKENS = 4096  # prompt tokens (over the whole batch) per prefill forward pass
GPU_MEMORY_USABLE = 0.9  # share of the free memory planned for; the rest absorbs fragmentation


def free_gpu_bytes() -> int | None:
    """Memory this process can still get on its GPU: the device's free memory plus what the caching
    allocator holds unused. None without a GPU."""
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device())
    return free + torch.cuda.memory_reserved(device()) - torch.cuda.memory_allocated(device())


def prefill_chunk_tokens(batch: int) -> int:
    """Prompt tokens per row per prefill pass: the batch shares PREFILL_CHUNK_TOKENS."""
    return max(256, PREFILL_CHUNK_TOKENS // batch)


def generation_groups(lengths: list[int], max_new_tokens: int, kv_bytes_per_token: int,
                      prefill_bytes_per_token: int, free_bytes: int | None,
                      max_batch: int | None = None) -> list[list[int]]:
    """Consecutive prompt indices per generate call. On a GPU a group holds as many prompts as the KV
    cache of the group (padded to its longest prompt, plus the new tokens) fits beside one prefill
    chunk's activations in the free memory; a prompt too long for that alone still goes alone."""
    if free_bytes is None:
        size = max_batch or DEFAULT_CPU_BATCH
        return [list(range(i, min(i + size, len(lengths)))) for i in range(0, len(lengths), size)]
    budget = GPU_MEMORY_USABLE * free_bytes - PREFILL_CHUNK_TOKENS * prefill_bytes_per_token
    cap = max_batch or MAX_GPU_BATCH
    groups: list[list[int]] = []
    group: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        kv_cache = (len(group) + 1) * (max(longest, n) + max_new_tokens) * kv_bytes_per_token
        if group and (len(group) == cap or kv_cache > budget):
            groups.append(group)
            group, longest = [], 0
        group.append(i)
        longest = max(longest, n)
    if group:
        groups.append(group)
    return groups


def strip_padding(row: list[int], stop: list[int]) -> list[int]:
    """New ids up to and including the first stop token (generate pads finished rows after it)."""
    for i, token in enumerate(row):
        if token in stop:
            return row[: i + 1]
    return row


def dtype_bytes(model) -> int:
    return model.get_input_embeddings().weight.dtype.itemsize


def sampling(temperature: float = 0.0, top_p: float = 1.0) -> dict:
    """generate() arguments: greedy at temperature 0, else sampling with that temperature and top_p."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}
