"""Shared by the benchmark scripts (imported as `_common`: Python puts a script's own folder on sys.path)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

GB = 1e9


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict:
    """What ran the benchmark, without touching CUDA (a CUDA context in the parent would skew the
    children's memory numbers)."""
    from emotion_summary.training.trainer import library_versions

    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "platform": platform.platform(),
            "versions": library_versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            # Other processes on the machine slow the timings (memory numbers are per process).
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def gpu_info() -> dict:
    """Call only in a process that already uses the GPU."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_total_bytes": props.total_memory,
            "cuda": torch.version.cuda}


def append_rows(path: str | os.PathLike | None, rows: list[dict]) -> None:
    """One fsynced append per line (O_APPEND: concurrent writers never interleave a line)."""
    if not path:
        return
    from emotion_summary.core.atomic_io import append_jsonl

    for row in rows:
        append_jsonl(path, row)


def gb(n: float | int | None, digits: int = 2) -> str:
    return "-" if n is None else f"{n / GB:.{digits}f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def read_status_kb(key: str) -> int | None:
    """VmRSS / VmHWM of this process in bytes (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to clear_refs) so the next peak is this phase's alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
