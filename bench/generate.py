"""Output tokens/s of batched, length-sorted generation against one record at a time (same model, same run).

The model is loaded through the real inference loader (`Qwen2EmotionSummaryModel.load`): `--model_path`
(an adapter or a merged directory), or for `--arch tiny|qwen2-7b` an untrained LoRA adapter on the
random-weight model of that shape (see train_step.py), saved once under the bench cache. Prompts are
built exactly as the wrapper's `generate` builds them (chat template, trimmed to max_seq_len -
max_new_tokens, left-padded), but generation is forced to `max_new_tokens` new tokens
(min_new_tokens = max_new_tokens): a random model may otherwise stop at an end-of-turn token early,
and tokens/s would not compare.

  python bench/generate.py --arch tiny --n_records 12 --batch_size 4 --max_new_tokens 64
  python bench/generate.py --arch qwen2-7b --n_records 16 --batch_size 8 --max_new_tokens 256   # GPU
  python bench/generate.py --model_path model/qwen2-es-12gb --n_records 16 --batch_size 8 --max_new_tokens 512
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path

from _common import append_rows, gb, gpu_info, host_info, markdown_table

from emotion_summary.cli import comma_list, run
from emotion_summary.errors import UserError
from emotion_summary.sample_data import SAMPLE_EN

SAMPLE = SAMPLE_EN
MODES = ("batched", "single")


def generate(
    arch: str = "tiny",
    model_path: str | None = None,
    data: str | None = None,
    n_records: int = 6,
    batch_size: int = 4,
    max_new_tokens: int = 64,
    modes: str = "batched,single",
    repeats: int = 1,
    out: str | None = None,
) -> None:
    """Tokens/s of batched, length-sorted generation against one record at a time.

    Args:
        arch: tiny or qwen2-7b (GPU only): an untrained LoRA adapter on the random-weight model of
            that shape, built once (ignored with --model_path).
        model_path: adapter or merged model directory written by the trainer / merge_adapter.
        data: ES records to summarise (default: the project's 6 English sample reports).
        n_records: how many records (the file is cycled when it has fewer).
        batch_size: records per generate call in the batched mode.
        max_new_tokens: new tokens per record, forced (end-of-turn suppressed until then).
        modes: comma-separated: batched, single.
        repeats: runs of each mode, interleaved; seconds and tokens/s are the median run's.
        out: append the JSON lines to this file (fsynced, one append per line).
    """
    import torch

    from emotion_summary.model import Qwen2EmotionSummaryModel, device
    from emotion_summary.records import read_records

    chosen = comma_list(modes, "modes")
    if not chosen or any(m not in MODES for m in chosen):
        raise UserError(f"--modes: comma-separated from {', '.join(MODES)}, got {modes!r}")
    if min(n_records, batch_size, max_new_tokens, repeats) <= 0:
        raise UserError("--n_records, --batch_size, --max_new_tokens and --repeats must be positive")
    if model_path is None and arch not in ("tiny", "qwen2-7b"):
        raise UserError(f"--arch: tiny or qwen2-7b, got {arch!r}")
    if model_path is None and arch == "qwen2-7b" and not torch.cuda.is_available():
        raise UserError("--arch qwen2-7b needs a CUDA GPU; use --arch tiny on CPU")
    source = Path(data) if data else SAMPLE
    pool = read_records(source)
    if not pool:
        raise UserError(f"{source}: no records")
    records = list(itertools.islice(itertools.cycle(pool), n_records))

    host = host_info()
    wrapper = Qwen2EmotionSummaryModel.load(model_path or untrained_adapter(arch))
    cuda = device().type == "cuda"
    base = {"bench": "generate", **host, **(gpu_info() if cuda else {}),
            "model_path": model_path or f"{arch} (untrained adapter)", "data": str(source),
            "n_records": n_records, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "device": str(device()), "torch_threads": torch.get_num_threads()}
    prompts = [prompt_ids(wrapper, r, max_new_tokens) for r in records]
    lengths = [len(p) for p in prompts]
    base.update(prompt_tokens_mean=sum(lengths) / len(lengths), prompt_tokens_max=max(lengths))

    forced(wrapper, prompts[:1], 2)  # warm-up: first-call costs belong to neither mode
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    plans = {"batched": [order[i: i + batch_size] for i in range(0, len(order), batch_size)],
             "single": [[i] for i in range(len(prompts))]}
    times: dict[str, list[float]] = {m: [] for m in chosen}
    texts: dict[str, dict[int, list[int]]] = {}
    peaks: dict[str, int] = {}
    for _ in range(repeats):  # modes interleaved: a slow spell on a shared machine hits both
        for mode in chosen:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            outputs: dict[int, list[int]] = {}
            for group in plans[mode]:
                outputs.update(zip(group, forced(wrapper, [prompts[i] for i in group], max_new_tokens)))
            if cuda:
                torch.cuda.synchronize()
                peaks[mode] = max(peaks.get(mode, 0), torch.cuda.max_memory_allocated())
            times[mode].append(time.perf_counter() - t0)
            texts[mode] = outputs
    rows = []
    for mode in chosen:
        groups, outputs = plans[mode], texts[mode]
        new_tokens = sum(len(v) for v in outputs.values())
        seconds = statistics.median(times[mode])
        row = {**base, "mode": mode, "batch_size": batch_size if mode == "batched" else 1,
               "calls": len(groups), "repeats": repeats, "new_tokens": new_tokens, "seconds": seconds,
               "seconds_each": [round(t, 4) for t in times[mode]], "tokens_per_s": new_tokens / seconds,
               "pad_tokens": sum(max(lengths[i] for i in g) * len(g) - sum(lengths[i] for i in g) for g in groups),
               "all_forced_to_max": all(len(v) == max_new_tokens for v in outputs.values())}
        if cuda:
            row["peak_allocated_bytes"] = peaks[mode]
        rows.append(row)
    if len(texts) == 2:
        same = sum(texts["batched"][i] == texts["single"][i] for i in range(len(prompts)))
        tps = {r["mode"]: r["tokens_per_s"] for r in rows}
        speedup = tps["batched"] / tps["single"]
        for row in rows:  # greedy: identical unless padding changes the numerics slightly
            row.update(identical_outputs=same, batched_over_single=speedup)
    for row in rows:
        print(json.dumps(row, ensure_ascii=False), flush=True)
    append_rows(out, rows)
    print(report(rows))


def adapter_complete(path: Path) -> bool:
    """train_config.json is what `Qwen2EmotionSummaryModel.save` writes last (adapter_config.json first)."""
    return (path / "train_config.json").is_file()


def untrained_adapter(arch: str) -> Path:
    """An untrained LoRA adapter (B = 0: the base model's outputs) on the random-weight model of
    `arch`, saved once like a trainer's output, so the real inference loader reads it back. Saved into
    a temporary directory and renamed (atomic_dir): a killed build never leaves one that looks finished."""
    import gc

    import torch
    from train_step import ensure_model_dir

    from emotion_summary.architectures import cache_root
    from emotion_summary.atomic_io import atomic_dir
    from emotion_summary.config import resolve_config
    from emotion_summary.model import Qwen2EmotionSummaryModel

    path = cache_root() / f"{arch}-untrained-adapter"
    if adapter_complete(path):
        return path
    torch.manual_seed(0)
    cfg = (resolve_config("cpu-smoke") if arch == "tiny"
           else resolve_config("24gb", model_name_or_path=ensure_model_dir(arch, {}, 3600)))
    wrapper = Qwen2EmotionSummaryModel.for_training(cfg)
    with atomic_dir(path, adapter_complete) as tmp:
        wrapper.save(tmp)
    del wrapper
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return path


def prompt_ids(wrapper, record, max_new_tokens: int) -> list[int]:
    from emotion_summary.encode import prompt_token_ids

    return prompt_token_ids(wrapper.tokenizer, wrapper.prompt, record, wrapper.max_prompt_tokens(max_new_tokens))[0]


def forced(wrapper, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """The wrapper's `_generate_batch` (left padding, greedy, KV cache, its stop tokens), with exactly
    `max_new_tokens` new tokens per row; returns the new token ids.

    A copy, not a call: `_generate_batch` has no min_new_tokens to force the length, and decodes to text."""
    import torch

    from emotion_summary.model import device

    wrapper.model.eval()
    tok = wrapper.tokenizer
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device())
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device())
    stop = [tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")]
    with torch.no_grad():
        gen = wrapper.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                     min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                     eos_token_id=stop, use_cache=True)
    return [row.tolist() for row in gen[:, width:]]


def report(rows: list[dict]) -> str:
    header = ["mode", "records", "batch", "calls", "new tokens", "seconds (median)", "tokens/s", "pad tokens",
              "peak GPU GB"]
    table = [[r["mode"], r["n_records"], r["batch_size"], r["calls"], r["new_tokens"], f"{r['seconds']:.2f}",
              f"{r['tokens_per_s']:.1f}", r["pad_tokens"], gb(r.get("peak_allocated_bytes"))] for r in rows]
    text = markdown_table(header, table)
    if rows and "batched_over_single" in rows[0]:
        text += (f"\n\nbatched/single tokens/s: {rows[0]['batched_over_single']:.2f}x; identical greedy "
                 f"outputs: {rows[0]['identical_outputs']}/{rows[0]['n_records']}")
    return text


if __name__ == "__main__":
    run(generate)
