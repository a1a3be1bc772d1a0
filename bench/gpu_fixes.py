"""Simulated GPU memory of the GPU-path fixes (issue 16): each preset's training step at its own
length and batch, a padded batch, the T4 path, and generation through the wrapper's `generate_ids`.
Runs the project's own code on fake CUDA tensors (emotion_summary.gpusim); every row is labelled
"simulated" and carries its command and the git commit of the code it simulated.

  python bench/gpu_fixes.py --rows train-8gb,train-12gb --label after --out bench/results/simulated.jsonl

"before" rows: the same command with PYTHONPATH at a checkout of the code before the fixes (with
the gpusim package copied in), `--label before`; `generate-by-memory` needs the fixed wrapper.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import append_rows, host_info

from emotion_summary.core.cli import comma_list, run
from emotion_summary.core.errors import UserError

# name -> (kind, preset, sequence lengths, card, extra job fields)
ROWS = {
    "train-8gb": ("train", "8gb", [8192], "rtx4060", {}),
    "train-12gb": ("train", "12gb", [32768], "rtx3060", {}),
    "train-24gb": ("train", "24gb", [32768, 32768], "rtx4090", {}),
    "train-24gb-padded": ("train", "24gb", [32768, 20000], "rtx4090", {}),
    "train-12gb-t4": ("train", "12gb", [32768], "t4", {}),
    # inference's default 4 records of the longest official report (~7.7K prompt tokens) on an 8 GB card.
    # 64 new tokens simulated (each decode step is a full fake forward); 512 would add 448 x 57,344 B
    # = 26 MB of KV cache per row.
    "generate-8gb-batch4": ("generate_plain", "8gb", [7700] * 4, "rtx4060", {"max_new_tokens": 64}),
    "generate-by-memory-8gb": ("generate_ids", "8gb", [7700] * 4, "rtx4060", {"max_new_tokens": 64}),
    "generate-12gb-32k": ("generate_plain", "12gb", [32000], "rtx3060", {"max_new_tokens": 64}),
    "generate-by-memory-12gb-32k": ("generate_ids", "12gb", [32000], "rtx3060", {"max_new_tokens": 64}),
}
WORKER_KINDS = ("generate_plain", "generate_ids")


def gpu_fixes(rows: str = "train-12gb", label: str = "after", out: str | None = None,
              lora_dropout: float | None = None) -> None:
    """Simulate the named rows (comma-separated; see ROWS) and print/append one JSON line each.

    Args:
        rows: comma-separated names from ROWS.
        label: before or after (the code being simulated).
        out: append the rows to this JSONL file.
        lora_dropout: override the preset's LoRA dropout.
    """
    names = comma_list(rows, "rows")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UserError(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    from emotion_summary.gpusim.api import job, resolve_card, run_jobs

    specs = []
    for name in names:
        kind, preset, lens, card, extra = ROWS[name]
        overrides = {} if lora_dropout is None else {"lora_dropout": float(lora_dropout)}
        specs.append(job(kind, preset, lens, resolve_card(card), overrides=overrides, **extra))
    custom = [i for i, n in enumerate(names) if ROWS[n][0] in WORKER_KINDS]
    plain = [i for i in range(len(names)) if i not in custom]
    results: dict[int, dict] = {}
    if plain:
        results.update(zip(plain, run_jobs([specs[i] for i in plain])))
    if custom:
        results.update(zip(custom, _run_in_worker([specs[i] for i in custom])))
    host = host_info()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    out_rows = []
    for i, name in enumerate(names):
        r = results[i]
        row = {"bench": "gpu_fixes", "simulated": True, "row": name, "label": label,
               "code": _code_version(), "commit_of_bench": commit, **{k: host[k] for k in ("command", "date")},
               **{k: v for k, v in r.items() if k != "traceback"}}
        out_rows.append(row)
        print(json.dumps(row), flush=True)
    append_rows(out, out_rows)


def _code_version() -> str:
    """The emotion_summary source that was simulated (its directory: the branch or the old checkout)."""
    import emotion_summary

    return str(Path(emotion_summary.__file__).resolve().parent)


def _run_in_worker(specs: list[dict]) -> list[dict]:
    import os

    from emotion_summary.gpusim import native

    native.ensure_built()
    env = dict(os.environ)
    done = subprocess.run([sys.executable, __file__, "--worker"], input=json.dumps(specs), capture_output=True,
                          text=True, env=env, timeout=7200)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(results) != len(specs):
        raise RuntimeError("generate_ids worker failed:\n" + "\n".join(done.stderr.splitlines()[-20:]))
    return results


def simulate_generate_plain(job) -> dict:
    """The old wrapper's generate call (`_generate_batch` before the fixes): all prompts of the job in
    one left-padded `model.generate`, no prefill chunks, on the model the old `load` built (embedding
    on the GPU, adapters as peft casts them): the package's simulate_generation."""
    from emotion_summary.gpusim.session import simulate_generation

    result = simulate_generation(job)
    result.update(kind="generate_plain", generate_groups=[len(job.seq_lens)])
    return result


def simulate_generate_ids(job) -> dict:
    """The wrapper's `generate_ids` on the model `load` builds for an adapter directory of `job.preset`
    (embedding kept on the CPU where training kept it), prompts of `job.seq_lens` tokens, no batch cap:
    the free memory decides the groups; prefill in chunks."""
    import time

    import torch
    from peft import get_peft_model

    from emotion_summary.modeling import summary_model as project
    from emotion_summary.gpusim.runtime import patch_all, simulated_gpu
    from emotion_summary.gpusim.session import _card, _common_patches, _config, _finished_after, _result, _session
    from emotion_summary.prompting.prompt import PromptSpec

    card, cfg = _card(job), _config(job)
    started = time.time()
    groups: list[int] = []
    with simulated_gpu(card, job.context_bytes) as gpu, _session(job, gpu.tracker, sum(job.seq_lens)):
        tracker = gpu.tracker
        tracker.oracle.answers.update({"all": True, "eq(sum)": True, "isfinite": True, "max": 1})
        with patch_all(_common_patches(job, tracker)), torch.no_grad():
            base, tok = project.load_base_model(cfg.model_name_or_path, cfg.quantization, cfg.compute_dtype,
                                                cfg.attn_implementation, cfg.lm_head_4bit)
            if cfg.embedding_on_cpu:
                project.keep_embedding_on_cpu(base)
            with tracker.category("weights"):
                model = get_peft_model(base, project.lora_config(cfg),
                                       autocast_adapter_dtype=not project.adapters_in_compute_dtype(base.dtype))
            wrapper = project.Qwen2EmotionSummaryModel(model, tok, PromptSpec(), cfg)

            def counted(prompts, *args):  # _generate_group without reading the fake ids back
                groups.append(len(prompts))
                tracker.oracle.answers["all"] = len({len(p) for p in prompts}) == 1
                tracker.oracle.answers["eq(max)"] = _finished_after(job.max_new_tokens)
                wrapper._generate_tensor(prompts, *args)
                return [[] for _ in prompts]

            wrapper._generate_group = counted
            tracker.reset_peak()
            with tracker.category("generation"):
                wrapper.generate_ids([[0] * n for n in job.seq_lens], job.max_new_tokens,
                                     min_new_tokens=job.max_new_tokens)
        result = _result(job, cfg, card, tracker, started)
    result.update(kind="generate_ids", generate_groups=groups,
                  prefill_chunk_tokens=[project.prefill_chunk_tokens(g) for g in groups])
    return result



def _worker() -> None:
    from emotion_summary.gpusim import native

    native.preload()
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from emotion_summary.gpusim.session import job_from_dict

    for spec in json.loads(sys.stdin.read()):
        try:
            job = job_from_dict(spec)
            result = (simulate_generate_ids if job.kind == "generate_ids" else simulate_generate_plain)(job)
        except Exception as e:
            import traceback

            result = {"error": f"{type(e).__name__}: {str(e)[:500]}", "traceback": "\n".join(l for l in traceback.format_exc().splitlines() if "transformers/" in l or "emotion_summary" in l or "peft/" in l)[-4000:]}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker()
    else:
        run(gpu_fixes)
