"""Greedy generation with the KV cache against one-by-one decoding without it (every new token runs
the whole sequence again), on a real model and a real ES prompt: same tokens, seconds each.

  python bench/kv_cache.py --model DIR --data ../shared/data/longemotion/Emotion_Summary_origin_dev.jsonl \
      --prompt_tokens 1024 --new_tokens 32 --out bench/results/kv_cache_cpu.jsonl
"""

from __future__ import annotations

import os
import time

from _common import append_rows, host_info, markdown_table

from emotion_summary.core.cli import run


def kv_cache(model: str, data: str, prompt_tokens: int = 1024, new_tokens: int = 32, compute_dtype: str = "fp32",
             out: str | None = None) -> None:
    """Seconds to generate `new_tokens` greedily after a real report's prompt, with and without the cache.

    Args:
        model: a model directory (or a name the project resolves).
        data: an ES JSONL file; its first report is the prompt, trimmed to --prompt_tokens.
        prompt_tokens: prompt length (the project's prompt through the model's chat template).
        new_tokens: tokens generated (end of turn suppressed until then).
        compute_dtype: fp32 or bf16.
        out: append the JSON rows to this file.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emotion_summary.data.records import read_records
    from emotion_summary.prompting.encode import prompt_token_ids
    from emotion_summary.prompting.prompt import PromptSpec

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[compute_dtype]
    tokenizer = AutoTokenizer.from_pretrained(model)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval()
    ids, _ = prompt_token_ids(tokenizer, PromptSpec(language="en"), read_records(data)[0], prompt_tokens)
    prompt = torch.tensor([ids])
    rows, outputs = [], {}
    for mode in ("kv_cache", "one_by_one"):
        started, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            got = net.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               use_cache=mode == "kv_cache", pad_token_id=tokenizer.eos_token_id)
        outputs[mode] = got[0, len(ids):].tolist()
        rows.append({**host_info(), "bench": "kv_cache", "mode": mode, "model": model, "prompt_tokens": len(ids),
                     "new_tokens": new_tokens, "compute_dtype": compute_dtype,
                     "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
                     "loadavg_1m_after": os.getloadavg()[0]})
    same = outputs["kv_cache"] == outputs["one_by_one"]
    for r in rows:
        r["same_tokens"] = same
    append_rows(out, rows)
    print(markdown_table(["mode", "prompt tokens", "new tokens", "seconds", "CPU seconds", "same tokens"],
                         [[r["mode"], r["prompt_tokens"], r["new_tokens"], f"{r['seconds']:.1f}",
                           f"{r['cpu_seconds']:.1f}", same] for r in rows]))


if __name__ == "__main__":
    run(kv_cache)
