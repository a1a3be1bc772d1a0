"""Fetch the public data: LongEmotion's ES files from the Hugging Face Hub, PsyQA's sample from GitHub.

Every file is fetched (or found) and validated (ES files with `read_records`, PsyQA with the converter)
before any is written, atomically, under `out_dir`: one bad or partial file and none lands there.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from emotion_summary.core.atomic_io import atomic_write_bytes
from emotion_summary.core.errors import UserError
from emotion_summary.core.paths import refuse_overwrite
from emotion_summary.data.records import read_records

HF_REPO = "LongEmotion/LongEmotion"
PSYQA_URL = "https://raw.githubusercontent.com/thu-coai/PsyQA/main/PsyQA_example.json"
EXAMPLE_URL = ("https://raw.githubusercontent.com/LongEmotion/LongEmotion/"
               "c631a79850d12cb848118b5971d7c45d42693cd5/LongEmotion/data/Emotion_Summary_example.jsonl")
FULL_PSYQA_NOTE = (
    "The full PsyQA (22K questions, 56K answers) is not public: request it from thu-coai "
    "(https://github.com/thu-coai/PsyQA) by signing their user agreement; it is licensed for "
    "non-commercial research only. Convert it like the sample: "
    "python scripts/download_and_convert_psyqa.py --input PsyQA_full.json --output data/psyqa/psyqa_es.jsonl"
)


@dataclass(frozen=True)
class DataFile:
    name: str
    subdir: str  # under out_dir
    kind: str  # "es" or "psyqa": how it is validated
    hf_paths: tuple[str, ...] = ()  # candidate paths inside the HF dataset repo, tried in order
    url: str | None = None
    required: bool = True  # for --from_dir: a missing optional file is skipped with a note


def _hf_candidates(name: str) -> tuple[str, ...]:
    # The dataset card lists "Emotion Summary/<name>"; the others cover a re-organised repo.
    return (f"Emotion Summary/{name}", f"Emotion_Summary/{name}", name, f"data/{name}")


FILES = (
    DataFile("Emotion_Summary.jsonl", "longemotion", "es", _hf_candidates("Emotion_Summary.jsonl")),
    DataFile("Emotion_Summary_origin.jsonl", "longemotion", "es",
             _hf_candidates("Emotion_Summary_origin.jsonl"), required=False),
    # The three gold examples the README scores against: the LongEmotion repository's early example
    # file, pinned to the commit that has it (later commits moved the data to the Hub).
    DataFile("Emotion_Summary_example.jsonl", "longemotion", "es", url=EXAMPLE_URL, required=False),
    DataFile("PsyQA_example.json", "psyqa", "psyqa", url=PSYQA_URL),
)
SUBDIRS = tuple(dict.fromkeys(f.subdir for f in FILES))


class NotInRepo(Exception):
    """The dataset repo has no file at this path (as opposed to a network or permission failure)."""


def _hf_download(repo_path: str, cache_dir: str | None) -> str:
    from huggingface_hub import errors, hf_hub_download

    # LocalEntryNotFoundError (offline, not cached) is also an EntryNotFoundError: not a missing file.
    remote_missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    try:
        return hf_hub_download(HF_REPO, repo_path, repo_type="dataset", cache_dir=cache_dir)
    except remote_missing as e:
        if isinstance(e, errors.LocalEntryNotFoundError):
            raise
        raise NotInRepo(repo_path) from None


def fetch_from_hub(f: DataFile, cache_dir: str | None = None) -> Path | None:
    """Download `f` from the HF dataset, trying each candidate path; say which ones failed.
    None when an optional file is at none of them."""
    failed = []
    for repo_path in f.hf_paths:
        try:
            return Path(_hf_download(repo_path, cache_dir))
        except NotInRepo:
            failed.append(repo_path)
        except Exception as e:
            first_line = (str(e).splitlines() or [""])[0]
            raise UserError(f"downloading {HF_REPO}/{repo_path} from the Hugging Face Hub failed: "
                            f"{type(e).__name__}: {first_line}. Offline? Copy the files by hand into a folder "
                            "and pass --from_dir FOLDER") from None
    message = f"{f.name}: not found in the dataset {HF_REPO}; tried {', '.join(failed)}"
    if not f.required:
        print(f"{message}; skipped (optional)", file=sys.stderr)
        return None
    raise UserError(f"{message}. Download it by hand and use --from_dir.")


def _url_download(url: str, dest: Path) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out)


def fetch_url(f: DataFile, tmp_dir: Path) -> Path | None:
    """The downloaded file; None when an optional file could not be fetched (said on stderr)."""
    dest = tmp_dir / f.name
    try:
        _url_download(f.url, dest)
    except OSError as e:
        message = f"downloading {f.url} failed: {getattr(e, 'reason', e)}"
        if not f.required:
            print(f"{f.name}: {message}; skipped (optional)", file=sys.stderr)
            return None
        raise UserError(message) from None
    return dest


def validate(f: DataFile, path: Path) -> str:
    """Raise RecordError naming the file, line/item and field; else a one-line description."""
    if f.kind == "psyqa":
        from emotion_summary.data.psyqa import convert_items, load_psyqa

        items = load_psyqa(path)
        convert_items(items, path)
        return f"{len(items)} PsyQA questions"
    records = read_records(path)
    gold = sum(r.has_gold for r in records)
    return f"{len(records)} records, {gold} with gold fields"


def install_all(found: list[tuple[DataFile, Path]], out_dir: Path) -> list[Path]:
    """Validate every file first, then copy each atomically to out_dir/subdir/name."""
    described = [validate(f, path) for f, path in found]
    done = []
    for (f, path), what in zip(found, described):
        dest = atomic_write_bytes(out_dir / f.subdir / f.name, path.read_bytes())
        print(f"{dest}: {what}")
        done.append(dest)
    return done


def find_local(f: DataFile, from_dir: Path) -> Path | None:
    """`from_dir/name`, `from_dir/<subdir>/name`, or the first match anywhere below from_dir."""
    for p in (from_dir / f.name, from_dir / f.subdir / f.name):
        if p.is_file():
            return p
    return next(iter(sorted(from_dir.rglob(f.name))), None)


def _copy_local(from_dir: Path, out_dir: Path) -> list[Path]:
    found, missing = [], []
    for f in FILES:
        src = find_local(f, from_dir)
        if src is None and f.required:
            missing.append(f.name)
        elif src is None:
            print(f"{f.name}: not in {from_dir}; skipped (optional)")
        elif src.resolve() != (out_dir / f.subdir / f.name).resolve():
            found.append((f, src))
    if missing:
        raise UserError(f"{from_dir}: missing {', '.join(missing)} (copied nothing)")
    return install_all(found, out_dir)


def _download(out_dir: Path, cache_dir: str | None) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix=".download.", dir=out_dir) as tmp:
        found = []
        for f in FILES:
            path = fetch_from_hub(f, cache_dir) if f.hf_paths else fetch_url(f, Path(tmp)) if f.url else None
            if path is not None:
                found.append((f, path))
        return install_all(found, out_dir)


def download_data(out_dir: str = "data", from_dir: str | None = None, cache_dir: str | None = None) -> None:
    """Fetch LongEmotion's ES files (Hugging Face) and PsyQA's public sample (GitHub) into out_dir.

    Args:
        out_dir: where to write longemotion/ and psyqa/ (relative to the current directory).
        from_dir: copy (and validate) local copies from this folder instead of downloading.
        cache_dir: Hugging Face cache folder (default: the hub's own, ~/.cache/huggingface).
    """
    out = Path(out_dir)
    refuse_overwrite({}, {}, dirs={"--out_dir": out})
    refuse_overwrite({}, {}, dirs={f"--out_dir/{sub}": out / sub for sub in SUBDIRS})
    if from_dir and not Path(from_dir).is_dir():
        raise UserError(f"--from_dir {from_dir}: no such directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        done = _copy_local(Path(from_dir), out) if from_dir else _download(out, cache_dir)
    except BaseException:
        if created and not any(out.iterdir()):  # a failed first download leaves no empty folder behind
            out.rmdir()
        raise
    print(f"{len(done)} files in {out}/")
    _warn_overlap(out / "longemotion")
    print(FULL_PSYQA_NOTE)


def _warn_overlap(folder: Path) -> None:
    """Labelled LongEmotion files may hold the very reports the leaderboard scores: say so."""
    scored = folder / "Emotion_Summary.jsonl"
    if not scored.is_file():
        return
    test = {r.fingerprint() for r in read_records(scored)}
    for name in ("Emotion_Summary_origin.jsonl", "Emotion_Summary_example.jsonl"):
        if (folder / name).is_file():
            shared = sum(r.fingerprint() in test for r in read_records(folder / name))
            if shared:
                print(f"WARNING: {shared} reports in {name} are also in Emotion_Summary.jsonl, the set "
                      "the leaderboard scores; training on them leaks the test set (inference's "
                      "leakage guard then refuses to predict them).", file=sys.stderr)
