"""Jobs in a fresh Python process: the parent writes a JSON list of job dicts on the child's stdin,
the child calls a function on each and writes one JSON result per line on stdout (after MARK). Used where a run
must own its process: the GPU simulator (its fake-CUDA library is loaded before torch) and the
benchmarks (each peak-memory figure is one process's own). Light: no torch.

  run_in_worker("package.module:function", [job, ...], paths=[folder], prepare="package.module:function")

The child: `python -m emotion_summary.core.subprocess_jobs TARGET [PREPARE]`."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback


MARK = "@job-result "  # a result line on the child's stdout (the job's own prints may go there too)


class WorkerDied(RuntimeError):
    """The child process ended (crashed, killed, timed out) before answering every job."""

    def __init__(self, message: str, results: list[dict]):
        super().__init__(message)
        self.results = results  # the answers it gave before it died


def run_in_worker(target: str, jobs: list[dict], timeout_s: float = 3600, paths=(), prepare: str | None = None,
                  env: dict | None = None) -> list[dict]:
    """`target` ("module:function", the function takes a job dict and returns a JSON-able dict) on
    each job in one fresh process; a job that raised gives {"error", "traceback"}. `paths`: folders
    put first on the child's PYTHONPATH (a benchmark's own folder); `prepare` ("module:function"):
    called once in the child before anything else is imported."""
    env = dict(os.environ if env is None else env)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in paths if p), src]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, "-m", "emotion_summary.core.subprocess_jobs", target] + ([prepare] if prepare else [])
    try:
        done = subprocess.run(cmd, input=json.dumps(jobs), capture_output=True, text=True, env=env,
                              timeout=timeout_s)
        stdout, stderr, rc = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr, rc = _text(e.stdout), _text(e.stderr), f"timeout after {timeout_s:g} s"
    results = [json.loads(line[len(MARK):]) for line in stdout.splitlines() if line.startswith(MARK)]
    if len(results) != len(jobs):
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise WorkerDied(f"the worker process ({target}) stopped after {len(results)} of {len(jobs)} jobs "
                         f"(exit {rc}):\n{tail}", results)
    return results


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _function(name: str):
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _short_traceback() -> str:
    lines = traceback.format_exc().splitlines()
    keep = [line for line in lines if line.startswith("  File") or line.startswith("    ")][-30:]
    return "\n".join(keep + [lines[-1][:1000]])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _function(argv[1])()
    target = _function(argv[0])
    for job in json.loads(sys.stdin.read()):
        try:
            result = target(job)
        except Exception as e:  # reported per job; the parent decides
            result = {"error": f"{type(e).__name__}: {str(e)[:500]}", "traceback": _short_traceback()}
        print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
    # The results are out; skip interpreter teardown, where the simulator's fake CUDA device's
    # threads sometimes abort the process ("terminate called without an active exception", exit -6).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
