"""The torch wheel that can use this machine's NVIDIA GPU: read `nvidia-smi`, the platform and the pinned
torch version, choose PyPI, a CUDA index of download.pytorch.org or the CPU build, run pip, then check
that torch (and bitsandbytes) really use the GPU nvidia-smi saw.

Light: stdlib only, torch is imported only by the checks. It runs before the requirements are
installed (fresh venv, no fire yet), so its CLI is argparse, not `cli.run`.
"""

from __future__ import annotations

import os
import platform as platform_module
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from emotion_summary.core.errors import UserError
from emotion_summary.core.paths import refuse_unreadable

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements_qwen2.txt"
WHEEL_INDEX = "https://download.pytorch.org/whl"
CPU_INDEX = f"{WHEEL_INDEX}/cpu"
PLATFORMS = ("win32", "linux", "darwin")

# CUDA builds per torch release, from pytorch/pytorch at the release tag,
# .github/scripts/generate_binary_build_matrix.py: torch 2.13.0 has CUDA_ARCHES 12.6, 12.9, 13.0, 13.2
# and CUDA_STABLE 13.0 (the build PyPI serves on Linux x86_64: its metadata pins cuda-toolkit 13.0.3);
# the Windows branch drops 12.9 (list_without(CUDA_ARCHES, ["12.9"])). RELEASE.md's compatibility
# matrix lists 13.2 as *experimental* for 2.13, so it is left out: a user gets a stable build.
PUBLISHED_CUDA = {
    "2.13.0": {"linux": ((12, 6), (12, 9), (13, 0)), "win32": ((12, 6), (13, 0))},
}
PYPI_LINUX_CUDA = {"2.13.0": (13, 0)}
# Driver minimums, from NVIDIA's "CUDA Minor Version Compatibility" table
# (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html): a build for CUDA 13.x
# runs on drivers >= 580, one for 12.x on drivers >= 525 (< 580 is 12.x-only). nvidia-smi's
# "CUDA Version" is the newest CUDA the driver supports, so a build fits when its major matches.
DRIVER_MINIMUM = {12: "525", 13: "580"}


@dataclass
class Gpu:
    name: str
    memory_mib: int | None = None


@dataclass
class NvidiaSmi:
    """What the plain `nvidia-smi` table says; `message` is its text when it lists no GPU."""
    driver_version: str | None = None
    cuda_version: tuple[int, int] | None = None
    gpus: list[Gpu] = field(default_factory=list)
    message: str = ""

    def describe(self) -> str:
        cuda = ".".join(map(str, self.cuda_version)) if self.cuda_version else "unknown"
        names = ", ".join(g.name + (f" ({g.memory_mib} MiB)" if g.memory_mib else "") for g in self.gpus)
        return f"{names}; driver {self.driver_version}, CUDA Version: {cuda}"


@dataclass
class Choice:
    """The wheel to install: `spec` for pip, `index_url` None for PyPI, `reason` for the user."""
    spec: str
    index_url: str | None
    reason: str
    exact_version: str | None = None


GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off|WDDM|TCC|MCDM|N/A)\s*\|")  # persistence / driver model
MEMORY = re.compile(r"(\d+)MiB\s*/\s*(\d+)MiB")
# A table line is ~90 characters; the regexes above backtrack quadratically on a long one (a
# 60,000-character line took 27 s), so each line is cut to this before it is matched.
MAX_LINE = 400


def parse_nvidia_smi(text: str) -> NvidiaSmi:
    """Driver version, 'CUDA Version: X.Y', and each GPU's name and total memory from the plain table."""
    smi = NvidiaSmi()
    lines = [line[:MAX_LINE] for line in text.splitlines()]
    header = "\n".join(lines)
    if m := re.search(r"Driver Version:\s*([\d.]+)", header):
        smi.driver_version = m.group(1)
    if m := re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header):
        smi.cuda_version = (int(m.group(1)), int(m.group(2)))
    for line in lines:
        if "MIG devices:" in line or "Processes:" in line:  # their rows look like GPU rows: GPUs come first
            break
        if m := GPU_ROW.match(line):
            smi.gpus.append(Gpu(m.group(2).strip()))
        elif (m := MEMORY.search(line)) and smi.gpus and smi.gpus[-1].memory_mib is None:
            smi.gpus[-1].memory_mib = int(m.group(2))
    if not smi.gpus:
        smi.message = " ".join(text.split())[:200] or "nvidia-smi printed nothing"
    return smi


def read_nvidia_smi(path: str | None = None) -> NvidiaSmi:
    """A recorded table from `path`, else the output of running `nvidia-smi` (absent: no GPU)."""
    if path:
        return parse_nvidia_smi(Path(path).read_text(encoding="utf-8", errors="replace"))
    try:
        done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, PermissionError):
        return NvidiaSmi(message="nvidia-smi: command not found")
    except subprocess.TimeoutExpired:
        return NvidiaSmi(message="nvidia-smi did not answer within 60 s")
    return parse_nvidia_smi(done.stdout + done.stderr)


def pinned_torch_version(requirements: Path = REQUIREMENTS) -> str:
    for line in Path(requirements).read_text(encoding="utf-8").splitlines():
        if m := re.match(r"\s*torch\s*==\s*([\w.]+)\s*(#.*)?$", line):
            return m.group(1)
    raise UserError(f"{requirements}: no 'torch==VERSION' line to read the pinned torch version from")


def normalise_platform(name: str) -> str:
    name = "win32" if name.startswith("win") or name == "cygwin" else name
    if name not in PLATFORMS:
        raise UserError(f"platform {name!r}: choose one of {', '.join(PLATFORMS)}")
    return name


def cuda_tag(cuda: tuple[int, int]) -> str:
    return f"cu{cuda[0]}{cuda[1]}"


def dotted(cuda: tuple[int, int]) -> str:
    return f"{cuda[0]}.{cuda[1]}"


def fitting_cuda(driver_cuda: tuple[int, int], published: tuple[tuple[int, int], ...]) -> tuple[int, int] | None:
    """The newest published CUDA not newer than the driver's; else the oldest of the driver's major,
    which runs through minor-version compatibility; None when the driver is older than every build."""
    not_newer = [c for c in published if c <= driver_cuda]
    if not_newer:
        return max(not_newer)
    same_major = [c for c in published if c[0] == driver_cuda[0]]
    return min(same_major) if same_major else None


def choose_wheel(smi: NvidiaSmi, platform: str, torch_version: str, index_url: str | None = None,
                 machine: str = "x86_64") -> Choice:
    """PyPI where PyPI's build fits, else the CUDA index for the driver, CPU without an NVIDIA GPU."""
    spec = f"torch=={torch_version}"
    if index_url:
        return Choice(spec, index_url, "TORCH_INDEX_URL / --index_url given")
    if platform == "darwin":
        return Choice(spec, None, "macOS: PyPI's build (CPU/MPS; there are no CUDA builds for macOS)",
                      torch_version)
    if "NVIDIA-SMI has failed" in smi.message:
        raise UserError(f"nvidia-smi is installed but failed ({smi.message}); repair the NVIDIA driver "
                        f"and run this again, or set TORCH_INDEX_URL={CPU_INDEX} to install the CPU build")
    if smi.driver_version and not smi.gpus:
        raise UserError(f"nvidia-smi shows Driver Version {smi.driver_version} but no GPU row this installer can "
                        f"read; paste its output into an issue, or set TORCH_INDEX_URL={WHEEL_INDEX}/cuXXX for "
                        f"your CUDA (TORCH_INDEX_URL={CPU_INDEX} for the CPU build)")
    if not smi.gpus:
        return Choice(f"{spec}+cpu", CPU_INDEX, f"no NVIDIA GPU ({smi.message}): CPU build",
                      f"{torch_version}+cpu")
    if smi.cuda_version is None:
        raise UserError(f"nvidia-smi lists {smi.gpus[0].name} but no 'CUDA Version'; "
                        "paste its output into an issue, or set TORCH_INDEX_URL")
    if torch_version not in PUBLISHED_CUDA:
        raise UserError(f"torch {torch_version}: its CUDA builds are not in install_torch.PUBLISHED_CUDA "
                        f"(known: {', '.join(PUBLISHED_CUDA)}); add them from pytorch.org, or set "
                        f"TORCH_INDEX_URL={WHEEL_INDEX}/cuXXX")
    pypi_cuda = PYPI_LINUX_CUDA.get(torch_version)
    if (platform == "linux" and machine.lower() in ("x86_64", "amd64") and pypi_cuda
            and smi.cuda_version >= pypi_cuda):
        return Choice(spec, None, f"PyPI's build (CUDA {dotted(pypi_cuda)}) fits the driver "
                      f"({smi.driver_version}, CUDA {dotted(smi.cuda_version)})", torch_version)
    published = PUBLISHED_CUDA[torch_version][platform]
    cuda = fitting_cuda(smi.cuda_version, published)
    if cuda is None:
        oldest = min(published)
        raise UserError(
            f"the NVIDIA driver {smi.driver_version} supports CUDA {dotted(smi.cuda_version)}, older than "
            f"every CUDA build of torch {torch_version} ({', '.join(map(dotted, published))}); update the "
            f"driver to >= {DRIVER_MINIMUM.get(oldest[0], '?')} (https://www.nvidia.com/drivers) and run "
            f"this again, or set TORCH_INDEX_URL={CPU_INDEX} to install the CPU build knowingly")
    tag = cuda_tag(cuda)
    return Choice(f"{spec}+{tag}", f"{WHEEL_INDEX}/{tag}",
                  f"driver {smi.driver_version} supports CUDA {dotted(smi.cuda_version)}: the CUDA "
                  f"{dotted(cuda)} build" + (" (minor-version compatibility)" if cuda > smi.cuda_version else ""),
                  f"{torch_version}+{tag}")


def pip_command(choice: Choice, python: str, installed: str | None = None) -> list[str]:
    """pip for `choice`; --force-reinstall where pip would keep an installed torch of another build
    (a spec without a local label, such as PyPI's `torch==2.13.0`, is satisfied by `2.13.0+cpu`)."""
    command = [python, "-m", "pip", "install", choice.spec]
    if choice.index_url:
        command += ["--index-url", choice.index_url]
    if installed and "+" not in choice.spec and installed != choice.exact_version:
        command.append("--force-reinstall")
    return command


def format_command(command: list[str], platform: str) -> str:
    return subprocess.list2cmdline(command) if platform == "win32" else shlex.join(command)


def installed_torch_version() -> str | None:
    """The installed torch's version with its local label (2.13.0+cu126), read without importing it."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def fix_command(smi: NvidiaSmi, platform: str, requirements: Path = REQUIREMENTS) -> str:
    """The command that installs the fitting torch here, or the reason none can."""
    try:
        choice = choose_wheel(smi, platform, pinned_torch_version(requirements),
                              machine=platform_module.machine())
    except UserError as e:
        return str(e)
    return format_command(pip_command(choice, sys.executable, installed_torch_version()), platform)


def torch_problem(smi: NvidiaSmi, platform: str, requirements: Path = REQUIREMENTS) -> str | None:
    """One message when nvidia-smi lists a GPU and the installed torch cannot use it (imports torch)."""
    if not smi.gpus:
        return None
    try:
        import torch
    except ImportError:
        return (f"nvidia-smi shows {smi.describe()} but torch is not installed; run: "
                f"{fix_command(smi, platform, requirements)}")
    if torch.version.cuda and torch.cuda.is_available():
        return None
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    override = os.environ.get("TORCH_INDEX_URL")
    note = f" (TORCH_INDEX_URL={override} chose it)" if override else ""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch.version.cuda and hidden is not None and hidden.strip() in ("", "-1"):
        return (f"nvidia-smi shows {smi.describe()}, but CUDA_VISIBLE_DEVICES={hidden!r} hides it from torch "
                f"{torch.__version__}; unset CUDA_VISIBLE_DEVICES")
    return (f"nvidia-smi shows {smi.describe()}, but the installed torch {torch.__version__} is {build}"
            f"{note} and cannot use the GPU (torch.cuda.is_available() is False); fix: "
            f"{fix_command(smi, platform, requirements)}")


def bitsandbytes_problem(smi: NvidiaSmi) -> str | None:
    """A message when bitsandbytes is installed but its CUDA library did not load on the GPU."""
    if not smi.gpus:
        return None
    from importlib.util import find_spec

    reinstall = f"{sys.executable} -m pip install --force-reinstall --no-deps bitsandbytes"
    if find_spec("bitsandbytes") is None:
        return None
    try:
        from bitsandbytes.cextension import lib
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to see, in one line
        return f"bitsandbytes does not import ({type(e).__name__}: {e}); reinstall it: " + reinstall
    if getattr(lib, "compiled_with_cuda", False):
        return None
    from importlib import metadata

    detail = " ".join(str(getattr(lib, "error_msg", "")).split())[:300]
    return (f"bitsandbytes {metadata.version('bitsandbytes')} loaded no CUDA library for "
            f"{smi.gpus[0].name} ({detail or 'CPU library only'}); with torch using the GPU, reinstall it: "
            f"{reinstall}; "
            f"`{sys.executable} -m bitsandbytes` prints its diagnosis")


def gpu_visible_but_unusable() -> str | None:
    """nvidia-smi lists a GPU while torch cannot use it: the message, else None (for --preset auto).
    Without an nvidia-smi listing a GPU it returns None before importing torch."""
    smi = read_nvidia_smi()
    if not smi.gpus:
        return None
    return torch_problem(smi, normalise_platform(sys.platform))


def post_install_check(smi: NvidiaSmi, platform: str, requirements: Path = REQUIREMENTS) -> str:
    """The post-install check: raises UserError naming every problem, else a one-line summary."""
    problem = torch_problem(smi, platform, requirements) or bitsandbytes_problem(smi)  # bnb needs CUDA torch
    if problem:
        raise UserError(problem)
    if not smi.gpus:
        return f"no NVIDIA GPU seen ({smi.message}); a CPU torch is right here"
    return f"torch uses the GPU: {smi.describe()}"


def install(smi: NvidiaSmi, platform: str, index_url: str | None, requirements: Path, dry_run: bool) -> None:
    choice = choose_wheel(smi, platform, pinned_torch_version(requirements), index_url,
                          machine=platform_module.machine())
    installed = installed_torch_version()
    command = pip_command(choice, sys.executable, installed)
    print(f"torch: {choice.reason}", file=sys.stderr)
    if dry_run:
        print(format_command(command, platform))
        return
    if installed and installed == choice.exact_version:
        print(f"torch {installed} is already installed", file=sys.stderr)
    else:
        print(format_command(command, platform), file=sys.stderr)
        if subprocess.run(command).returncode != 0:
            raise UserError(f"pip failed: {format_command(command, platform)}")
    print(post_install_check(smi, platform, requirements), file=sys.stderr)


def install_torch(dry_run: bool = False, check: bool = False, nvidia_smi_output: str | None = None,
                  platform: Literal["win32", "linux", "darwin"] | None = None, index_url: str | None = None,
                  requirements: str = str(REQUIREMENTS)) -> None:
    """Install the torch build that fits this machine's GPU, then check that torch (and bitsandbytes) use it.

    Args:
        dry_run: print the pip command instead of running it.
        check: only the post-install check: does torch (and bitsandbytes) use the GPU?
        nvidia_smi_output: a recorded plain `nvidia-smi` table instead of running nvidia-smi.
        platform: the platform to choose for (default: this one).
        index_url: install torch from this index (default: $TORCH_INDEX_URL, else chosen).
        requirements: the requirements file whose torch==VERSION is installed.
    """
    refuse_unreadable({"--nvidia_smi_output": nvidia_smi_output, "--requirements": requirements})
    platform = normalise_platform(platform or sys.platform)
    smi = read_nvidia_smi(nvidia_smi_output)
    given = ("--index_url", index_url) if index_url else ("TORCH_INDEX_URL", os.environ.get("TORCH_INDEX_URL"))
    if check:
        if note := index_url_note(*given, installed_torch_version(), platform):
            print(note, file=sys.stderr)
        print(post_install_check(smi, platform, Path(requirements)), file=sys.stderr)
    else:
        install(smi, platform, given[1] or None, Path(requirements), dry_run)


def index_url_note(name: str, index_url: str | None, installed: str | None, platform: str) -> str | None:
    """The launchers install torch only when it is missing, so an index given beside an installed torch
    is not read: one line saying so (None when the installed build is the index's own, e.g. +cu126
    from .../cu126, or when either is absent)."""
    if not index_url or not installed:
        return None
    build = installed.partition("+")[2]
    if build and index_url.rstrip("/").rsplit("/", 1)[-1] == build:
        return None
    script = REQUIREMENTS.parent / "scripts" / "install_torch.py"
    return (f"{name}={index_url} is read only when torch is missing, and torch {installed} is installed; to "
            f"reinstall it from that index run: "
            f"{format_command([sys.executable, str(script), '--index_url', index_url], platform)}")
