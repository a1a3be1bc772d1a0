"""A small OpenAI-compatible chat client (stdlib only): vLLM, LMDeploy, or a hosted API.

Shared by the `openai` inference backend, the teacher labeller and the LLM judge. Retries transient
failures (connection errors, cut-off or garbled replies, the per-request deadline, 429 and 5xx) with
exponential back-off; other errors are final. A redirect is refused (the key would follow it), and
no message or file shows the key or a password given in the URL.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from emotion_summary.cli import at_least
from emotion_summary.errors import UserError

T = TypeVar("T")
R = TypeVar("R")


class EndpointError(UserError, RuntimeError):
    """`status` is the HTTP status of the final failure, None for connection errors and timeouts."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# 4xx statuses about the key, the URL, the model name or a proxy (or the load), not about one request.
_NOT_ABOUT_THE_REQUEST = {401, 403, 404, 407, 408, 429}


def is_refusal(error: EndpointError) -> bool:
    """The endpoint refused this one request for good (e.g. a report too long for the served context):
    asking again gets the same 4xx. Anything else (network, 5xx, 429, a bad key) is about the endpoint."""
    return error.status is not None and 400 <= error.status < 500 and error.status not in _NOT_ABOUT_THE_REQUEST


def public_url(url: str) -> str:
    """`url` fit to print or store: a password (user:pass@) and a query string (?key=...) become ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", parts.fragment))


def check_endpoint(endpoint: str) -> None:
    """A one-line UserError unless `endpoint` is an http(s) URL with a host."""
    parts = urlsplit(str(endpoint))
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--endpoint: expected an http:// or https:// URL such as http://127.0.0.1:8000/v1, "
                        f"got {public_url(str(endpoint))!r}")


class _Transport(Exception):
    """The request did not get a whole, readable reply (cut off, garbled, too slow): retried."""


@dataclass
class ChatClient:
    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0  # the whole request, from connecting to the last byte of the reply
    max_retries: int = 4
    backoff_s: float = 1.0
    requests_per_minute: float = 0.0  # 0: no rate limit

    def __post_init__(self):
        check_endpoint(self.endpoint)
        self.timeout_s = at_least(self.timeout_s, "timeout_s", float, 0, strict=True)
        self.max_retries = at_least(self.max_retries, "max_retries", int, 0)
        self.backoff_s = at_least(self.backoff_s, "backoff_s", float, 0)
        self.requests_per_minute = at_least(self.requests_per_minute, "requests_per_minute", float, 0)
        self._lock = threading.Lock()
        self._next_slot = 0.0

    @property
    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    @property
    def public_url(self) -> str:
        return public_url(self.url)

    def _wait_for_rate_limit(self) -> None:
        if self.requests_per_minute <= 0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 60.0 / self.requests_per_minute
        time.sleep(max(0.0, slot - now))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        parts = urlsplit(self.url)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif parts.username is not None:  # http://user:pass@host/v1
            headers["Authorization"] = _basic(parts.username, parts.password)
        return headers

    def _redact(self, text: str) -> str:
        """`text` without the key or the URL's password, should the server or a library echo them."""
        secrets = [os.environ.get(self.api_key_env), urlsplit(self.url).password]
        for secret in filter(None, secrets):
            text = text.replace(secret, "***")
        return text

    def _connection(self) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        """(connection, request target, headers): straight to the endpoint, or through the proxy the
        environment names (http_proxy, https_proxy, no_proxy), as urllib would."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = urllib.request.getproxies().get(parts.scheme)
        if not proxy or urllib.request.proxy_bypass(parts.hostname):
            return connection(parts.hostname, parts.port, timeout=self.timeout_s), path, self._headers()
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        auth = {"Proxy-Authorization": _basic(via.username, via.password)} if via.username is not None else {}
        conn = connection(via.hostname, via.port, timeout=self.timeout_s)
        if parts.scheme == "https":  # a CONNECT tunnel: the proxy sees neither the key nor the request
            conn.set_tunnel(parts.hostname, parts.port, headers=auth)
            return conn, path, self._headers()
        port = f":{parts.port}" if parts.port else ""
        return conn, f"http://{parts.hostname}{port}{path}", {**self._headers(), **auth}

    def _post(self, payload: dict) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one POST, all of it within `timeout_s`; redirects are not followed
        (the key would go wherever the Location says). Raises _Transport or OSError."""
        conn, target, headers = self._connection()
        cut, read, lock = threading.Event(), threading.Event(), threading.Lock()

        def cut_off() -> None:  # the deadline: a server dripping bytes never resets it
            with lock:
                if read.is_set():  # the whole reply arrived just in time
                    return
                cut.set()
                sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.timeout_s, cut_off)
        timer.daemon = True
        timer.start()
        too_slow = f"timed out: no whole reply within --timeout_s {self.timeout_s:g} s"
        try:
            conn.request("POST", target, body=json.dumps(payload).encode("utf-8"), headers=headers)
            resp = conn.getresponse()
            status, headers, body = resp.status, dict(resp.getheaders()), resp.read()
            with lock:
                read.set()
        except (http.client.HTTPException, OSError) as e:
            if cut.is_set() or isinstance(e, TimeoutError):
                raise TimeoutError(too_slow) from None
            if isinstance(e, http.client.HTTPException):
                raise _Transport(f"cut-off or garbled reply from {self.public_url}: {type(e).__name__}: "
                                 f"{self._redact(str(e))[:200]}") from None
            raise
        finally:
            timer.cancel()
            conn.close()
        if cut.is_set():  # cut off mid-reply: what was read is not the whole reply
            raise TimeoutError(too_slow)
        return status, headers, body

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> str:
        """The reply text of a 2xx; EndpointError for a final status; _Transport for a retryable one."""
        if 300 <= status < 400:
            where = public_url(headers.get("Location", headers.get("location", "?")))
            raise EndpointError(f"HTTP {status} from {self.public_url}: redirected to {where}; redirects are not "
                                "followed (the API key would go along): use the final URL as --endpoint", status)
        text = body.decode("utf-8", errors="replace")
        if not 200 <= status < 300:
            message = f"HTTP {status} from {self.public_url}: {self._redact(text[:200])}"
            if status == 429 or status >= 500:
                raise _Transport(message, status)
            raise EndpointError(message, status)
        try:
            return reply_text(json.loads(body.decode("utf-8")))
        except (ValueError, KeyError, IndexError, TypeError) as e:  # not UTF-8, not JSON, not a chat reply
            raise _Transport(f"unexpected reply from {self.public_url}: {self._redact(repr(e))[:200]}") from None

    def chat(self, messages: list[dict], max_tokens: int = 1024, temperature: float = 0.0,
             top_p: float | None = None) -> str:
        """The assistant's reply text; raises EndpointError after the retries are spent."""
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                   "temperature": temperature, **({"top_p": top_p} if top_p is not None else {})}
        last, status = "", None
        for attempt in range(self.max_retries + 1):
            self._wait_for_rate_limit()
            try:
                return self._answer(*self._post(payload))
            except _Transport as e:
                last, status = str(e.args[0]), (e.args[1] if len(e.args) > 1 else None)
            except OSError as e:  # refused, reset, DNS, TLS, the deadline
                last, status = f"cannot reach {self.public_url}: {self._redact(str(getattr(e, 'reason', e)))}", None
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise EndpointError(f"{last} (gave up after {self.max_retries + 1} tries)", status)


def _basic(user: str, password: str | None) -> str:
    pair = f"{unquote(user)}:{unquote(password or '')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def reply_text(body: dict) -> str:
    """The assistant's text in an OpenAI chat reply; `content` may be a list of parts (joined)."""
    content = body["choices"][0]["message"]["content"]
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part if isinstance(part, str) else part.get("text") or "" for part in content)
    if not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}")
    return content


def run_pool_with_bar(items: list[T], work: Callable[[T], R], on_result: Callable[[R], None],
                      concurrency: int, desc: str, unit: str = "report") -> None:
    """`run_pool` with a progress bar that advances as each result is handled."""
    from tqdm import tqdm

    with tqdm(total=len(items), desc=desc, unit=unit) as bar:
        def handled(result: R) -> None:
            on_result(result)
            bar.update(1)

        run_pool(items, work, handled, concurrency)


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
