"""The raw-reply store `<output>.raw.jsonl`: one line per reply, appended as soon as it exists, so a
killed run loses at most the replies in flight.

A saved reply is reused only for the very same request: its key is a hash of everything that shapes
the reply (backend, endpoint, model and weights, the exact prompt after trimming, max_new_tokens,
decoding), so a changed endpoint, prompt, model, answer language or budget asks again instead of reusing
a stale answer. A saved reply that is not usable text (see client.garbled_text) is dropped on load and
asked again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from emotion_summary.core.atomic_io import append_jsonl, read_jsonl_tolerant, repair_jsonl_tail
from emotion_summary.teacher.client import garbled_text


def side_file_for(output: str | Path) -> Path:
    return Path(f"{output}.raw.jsonl")


def request_key(request: dict) -> str:
    """A hash of the exact request (canonical JSON: key order and spacing do not matter)."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class Replies(dict):
    """Raw text per id; `refused` holds the endpoint's error for the ids it refused (their text is "")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refused: dict[int, str] = {}

    def add(self, rid: int, raw: str, error: str | None = None) -> None:
        self[rid] = raw
        if error:
            self.refused[rid] = error
        else:
            self.refused.pop(rid, None)


class ReplyStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self, keys: dict[int, str]) -> tuple[Replies, int]:
        """(saved replies to exactly these requests, by id (last one wins); how many saved replies to
        these ids were for another request)."""
        done, stale = Replies(), set()
        for row in read_jsonl_tolerant(self.path):
            rid, raw = (row.get("id"), row.get("raw")) if isinstance(row, dict) else (None, None)
            if rid not in keys or garbled_text(raw):  # a bad reply saved by an older version: asked again
                continue
            if row.get("key") == keys[rid]:
                done.add(rid, raw, row.get("error"))
            else:
                stale.add(rid)
        return done, len(stale - set(done))

    def append(self, rid: int, key: str, backend: str, raw: str, error: str | None = None,
               trimmed_tokens: int = 0) -> None:
        """One reply; `trimmed_tokens`: how many tokens its report lost to fit the model's window."""
        row = {"id": rid, "key": key, "backend": backend, "raw": raw}
        row |= {"trimmed_tokens": trimmed_tokens} if trimmed_tokens else {}
        append_jsonl(self.path, {**row, "error": error} if error else row)

    def repair(self) -> None:
        repair_jsonl_tail(self.path)
