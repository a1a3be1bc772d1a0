"""A small OpenAI-compatible chat client (stdlib only): vLLM, LMDeploy, or a hosted API.

Shared by the `openai` inference backend, the teacher labeller and the LLM judge. Retries transient
failures (connection errors, timeouts, 429 and 5xx) with exponential back-off; other errors are final.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


class EndpointError(RuntimeError):
    """`status` is the HTTP status of the final failure, None for connection errors and timeouts."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


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
