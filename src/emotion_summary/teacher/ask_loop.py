"""Ask a model, validate its reply, re-ask saying what was wrong: the one loop of labelling and
synthesis (shaped for the judge too), with the one writer of their output, rejects and resume state.

- `ask` sends one request, validates the reply, and re-asks up to `max_reasks` times with the
  complaint appended to the conversation. A refused request (a 4xx about it, or garbage try after
  try) ends it as a rejected `Outcome`; any other endpoint error propagates (the run stops; a rerun
  resumes). A validator beaten by hostile text (RecursionError, a 5,000-digit number) is a garbled
  reply, re-asked like any other bad one.
- `request_key` is the hash of everything that shapes a reply: endpoint, model, the messages and any
  decoding settings. A changed endpoint, model or prompt asks again instead of reusing an answer.
- `ResumableOutput` appends accepted rows to the output as they arrive and the others to
  `<output stem>.rejects.jsonl` with the reason, so a killed run loses only the replies in flight;
  when the run ends the rejects keep the latest reason per id and drop ids accepted since.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from emotion_summary.core.atomic_io import append_jsonl, atomic_write_jsonl, read_jsonl_tolerant, repair_jsonl_tail
from emotion_summary.teacher.client import ChatClient, EndpointError, is_refusal, public_url
from emotion_summary.prompting.replies import request_key as hash_request

Validate = Callable[[str], "tuple[Any | None, str]"]  # reply -> (value, "") or (None, what is wrong)
Reask = Callable[[str, str], "list[dict]"]  # (reply, what is wrong) -> turns appended to the first messages
LAST_REPLY_CHARS = 2000  # of a rejected reply, kept in the rejects file to see what went wrong


@dataclass
class Outcome:
    item: Any  # what was asked about: a record, a synthesis job, a judged field
    id: int
    value: Any | None  # the validated reply; None: rejected
    reason: str = ""
    attempts: int = 0
    last_reply: str = ""
    refused: bool = False  # the endpoint refused the request, rather than answering badly
    key: str = ""


def request_key(client: ChatClient, messages: list[dict], **settings) -> str:
    """The key a reply is saved under: endpoint (without secrets), model, messages, settings."""
    return hash_request({"endpoint": public_url(client.endpoint), "model": client.model, "messages": messages,
                         **settings})


def reask_turns(complaint: Callable[[str], str]) -> Reask:
    """The usual re-ask: the model's reply, then the user's complaint about it."""
    return lambda reply, problem: [{"role": "assistant", "content": reply},
                                   {"role": "user", "content": complaint(problem)}]


def ask(client: ChatClient, item: Any, item_id: int, messages: list[dict], validate: Validate, reask: Reask,
        max_reasks: int, max_tokens: int, temperature: float = 0.0) -> Outcome:
    """Ask, validate, re-ask up to `max_reasks` times; an EndpointError other than a refusal propagates."""
    key = request_key(client, messages, max_tokens=max_tokens, temperature=temperature)
    convo, reply, problem = messages, "", ""
    for attempt in range(1, max_reasks + 2):
        try:
            reply = client.chat(convo, max_tokens=max_tokens, temperature=temperature)
        except EndpointError as e:
            if not is_refusal(e):
                raise
            return Outcome(item, item_id, None, f"endpoint refused the request: {e}", attempt, refused=True, key=key)
        try:
            value, problem = validate(reply)
        except (RecursionError, ValueError, OverflowError) as e:  # a parser beaten by hostile text
            value, problem = None, f"garbled reply ({type(e).__name__})"
        if value is not None:
            return Outcome(item, item_id, value, attempts=attempt, last_reply=reply, key=key)
        convo = messages + reask(reply, problem)
    return Outcome(item, item_id, None, problem, max_reasks + 1, reply, key=key)


def rejects_path(output: str | Path) -> Path:
    return Path(output).with_suffix(".rejects.jsonl")


def finish_rejects(path: Path, accepted: set[int]) -> int:
    """Keep the latest reason per id, drop ids accepted since; return how many remain."""
    latest = {row["id"]: row for row in read_jsonl_tolerant(path) if isinstance(row, dict) and "id" in row}
    keep = [row for rid, row in latest.items() if rid not in accepted]
    if keep:
        atomic_write_jsonl(path, keep)
    elif path.exists():
        path.unlink()
    return len(keep)


def ids_in(path: Path) -> set[int]:
    return {row["id"] for row in read_jsonl_tolerant(path) if isinstance(row, dict) and "id" in row}


@dataclass
class ResumableOutput:
    """The output and its rejects file for one run; `provenance` (teacher, endpoint, prompt version,
    date ...) goes into every reject row."""

    output: Path
    provenance: dict
    accepted: int = 0
    rejected: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # rejections by gate, e.g. {"duplicate": 2}

    @property
    def rejects(self) -> Path:
        return rejects_path(self.output)

    def repair(self) -> None:
        """Cut a line torn by a killed run, before anything is appended."""
        repair_jsonl_tail(self.output)
        repair_jsonl_tail(self.rejects)

    def accept(self, row: dict) -> None:
        append_jsonl(self.output, row)
        self.accepted += 1

    def reject(self, outcome: Outcome, reason: str | None = None, gate: str = "", **extra) -> None:
        """A reject row: why, after how many tries, the start of the last reply. `gate` names a
        quality gate that dropped a usable reply (asking again would pay for the same answer)."""
        row = {"id": outcome.id, "reason": reason or outcome.reason, "attempts": outcome.attempts,
               "last_reply": outcome.last_reply[:LAST_REPLY_CHARS], **extra}
        if gate:
            row["gate"] = gate
            self.counts[gate] = self.counts.get(gate, 0) + 1
        else:
            self.rejected += 1
        append_jsonl(self.rejects, {**row, **self.provenance})

    def finish(self) -> int:
        """Rejects of ids accepted since are dropped; the number of rejects left."""
        return finish_rejects(self.rejects, ids_in(self.output))
