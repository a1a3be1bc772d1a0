"""`python -m emotion_summary.gpusim.worker`: reads a list of jobs (JSON) on stdin, runs each on
the simulated GPU, writes one JSON result per line on stdout. A fresh process because the
fake-CUDA library must be loaded before torch."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from emotion_summary.gpusim import native

    native.preload()
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    # Before torch.cuda is patched: bitsandbytes would load its CUDA backend if it saw a GPU.
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from emotion_summary.gpusim.session import job_from_dict, run_job

    jobs = json.loads(sys.stdin.read())
    for spec in jobs:
        try:
            result = run_job(job_from_dict(spec))
        except Exception as e:  # reported per job; the parent decides
            result = {"error": f"{type(e).__name__}: {str(e)[:500]}", "traceback": _short_traceback()}
        print(json.dumps(result), flush=True)


def _short_traceback() -> str:
    import traceback

    lines = traceback.format_exc().splitlines()
    keep = [l for l in lines if l.startswith("  File") or l.startswith("    ")][-30:]
    return "\n".join(keep + [lines[-1][:1000]])


if __name__ == "__main__":
    main()
