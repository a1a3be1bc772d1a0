"""A small OpenAI-compatible chat client (stdlib only): vLLM, LMDeploy, or a hosted API.

Shared by the `openai` inference backend, the teacher labeller and the LLM judge. Retries transient
failures (connection errors, timeouts, 429 and 5xx) with exponential back-off; other errors are final.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, TypeVar

from emotion_summary.errors import UserError

T = TypeVar("T")
R = TypeVar("R")


class EndpointError(UserError, RuntimeError):
    """`status` is the HTTP status of the final failure, None for connection errors and timeouts."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# 4xx statuses about the key, the URL or the model name (or the load), not about one request.
_NOT_ABOUT_THE_REQUEST = {401, 403, 404, 408, 429}


def is_refusal(error: EndpointError) -> bool:
    """The endpoint refused this one request for good (e.g. a report too long for the served context):
    asking again gets the same 4xx. Anything else (network, 5xx, 429, a bad key) is about the endpoint."""
    return error.status is not None and 400 <= error.status < 500 and error.status not in _NOT_ABOUT_THE_REQUEST


@dataclass
class ChatClient:
    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0
    requests_per_minute: float = 0.0  # 0: no rate limit

    def __post_init__(self):
        self._lock = threading.Lock()
        self._next_slot = 0.0

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def _wait_for_rate_limit(self) -> None:
        if self.requests_per_minute <= 0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 60.0 / self.requests_per_minute
        time.sleep(max(0.0, slot - now))

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode("utf-8"), headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def chat(self, messages: list[dict], max_tokens: int = 1024, temperature: float = 0.0) -> str:
        """The assistant's reply text; raises EndpointError after the retries are spent."""
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                   "temperature": temperature}
        last, status = None, None
        for attempt in range(self.max_retries + 1):
            self._wait_for_rate_limit()
            try:
                body = self._post(payload)
                return body["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last, status = f"HTTP {e.code} from {self.url}: {e.read()[:200].decode('utf-8', 'replace')}", e.code
                if e.code != 429 and e.code < 500:
                    raise EndpointError(last, status) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                status = None
                last = f"cannot reach {self.url}: {getattr(e, 'reason', e)}"
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
                status = None
                last = f"unexpected reply from {self.url}: {e!r}"
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise EndpointError(f"{last} (gave up after {self.max_retries + 1} tries)", status)


def run_pool(items: Iterable[T], work: Callable[[T], R], on_result: Callable[[R], None],
             concurrency: int = 1) -> None:
    """`work(item)` for every item, at most `concurrency` at once; `on_result` runs in this thread.

    Items are handed to the pool only as workers free up, so nothing paid for waits in a queue. The
    first error from `work`, or Ctrl-C, stops new work; requests already in flight finish and are
    still handed to `on_result` (they are paid for); then that error is raised. Ctrl-C while they
    finish, or an error from `on_result`, stops at once.
    """
    if concurrency <= 1:
        for item in items:
            on_result(work(item))
        return
    todo = iter(items)
    pool = ThreadPoolExecutor(max_workers=concurrency)
    running = {pool.submit(work, item) for item in islice(todo, concurrency)}
    first_error: BaseException | None = None
    try:
        while running:
            try:
                first_error = _step(running, on_result, first_error)
                if first_error is None:
                    running |= {pool.submit(work, item) for item in islice(todo, concurrency - len(running))}
            except KeyboardInterrupt as e:
                if first_error is not None:
                    raise
                first_error = e
                print(f"interrupted: waiting for {len(running)} requests in flight (Ctrl-C again to drop "
                      "them)", file=sys.stderr)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if first_error is not None:
        raise first_error


def _step(running: set[Future], on_result: Callable, first_error: BaseException | None):
    """Wait for some of `running`, hand their results over and drop them from it; the first error."""
    done, _ = wait(running, return_when=FIRST_COMPLETED)
    for future in done:
        running.discard(future)  # before on_result: a result is never handed over twice
        try:
            result = future.result()
        except BaseException as e:  # noqa: BLE001 - the worker's error: raised once the pool has drained
            first_error = first_error or e
            continue
        on_result(result)
    return first_error
