"""The fake-CUDA native library: a no-op CUDA device guard and CUDA hooks that say "built" but
"no CUDA" (fake_cuda.cpp), so autograd runs backward on FakeTensorMode "cuda" tensors in a CPU-only
torch. torch caches its CUDA hooks the first time anything asks for them (already during
`import torch`), so the library is loaded with ctypes BEFORE torch is imported: simulations run in
a fresh process (see worker.py). Built once with torch.utils.cpp_extension into the cache root."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from emotion_summary.core.errors import UserError

SOURCE = Path(__file__).with_name("fake_cuda.cpp")
LIB_NAME = "es_fake_cuda"
_loaded: ctypes.CDLL | None = None


class NoCompilerError(UserError):
    """No C++ compiler: the fake-CUDA library cannot be built."""


def build_dir() -> Path:
    from emotion_summary.modeling.architectures import cache_root

    tag = f"{_torch_version()}-{hash_source()}"
    return cache_root() / "gpusim" / tag


def hash_source() -> str:
    import hashlib

    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


def _torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


def library_path() -> Path:
    return build_dir() / f"{LIB_NAME}.so"


def check_compiler() -> None:
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        raise NoCompilerError("the GPU simulator needs a C++ compiler to build its fake-CUDA library "
                              "(~20 s, once): install one with `apt-get install g++` (or set CXX)")


def ensure_built() -> Path:
    """Build the library unless a build of this source for this torch exists (in a subprocess:
    building imports torch, and this process may still need to load the library before torch)."""
    path = library_path()
    if path.is_file():
        return path
    check_compiler()
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    code = ("import sys\nfrom torch.utils.cpp_extension import load\n"
            f"load({LIB_NAME!r}, [{str(SOURCE)!r}], build_directory={str(out)!r}, "
            "is_python_module=False, verbose=False)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
        raise RuntimeError("building the fake-CUDA library failed:\n" + "\n".join(tail))
    return path


def preload() -> None:
    """Load the library into this process; must run before `import torch` (idempotent)."""
    global _loaded
    if _loaded is not None:
        return
    if "torch" in sys.modules:
        raise RuntimeError("the fake-CUDA library must be loaded before torch is imported; "
                           "run simulations through emotion_summary.gpusim (a fresh worker process)")
    path = ensure_built()
    torch_lib = Path(importlib.util.find_spec("torch").submodule_search_locations[0]) / "lib"
    for dep in ("libc10.so", "libtorch_cpu.so"):
        ctypes.CDLL(str(torch_lib / dep), mode=ctypes.RTLD_GLOBAL)
    _loaded = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)


def hooks_active() -> bool:
    return _loaded is not None and bool(_loaded.es_fake_cuda_hooks_built())


def prepare_worker() -> None:
    """Before anything imports torch: the fake-CUDA library; then the libraries the runs use, before
    torch.cuda is patched (bitsandbytes would load its CUDA backend if it saw a GPU)."""
    import os
    import warnings

    preload()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
