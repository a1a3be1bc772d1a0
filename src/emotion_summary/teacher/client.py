"""A small OpenAI-compatible chat client (stdlib only): vLLM, LMDeploy, or a hosted API.

Shared by the `openai` inference backend, the teacher labeller, synthesis and the LLM judge. Retries
transient failures (connection errors, cut-off or garbled replies, the per-request deadline, 429 and
5xx) with exponential back-off, at most MAX_WAIT_S a wait, or what a Retry-After header asks; other
errors are final. A redirect is refused (the key would follow it). A reply is read up to
--max_reply_mb and its text must be a plain string a parser can take (no lone surrogates, no absurd
nesting or digit runs), else it is garbled. Every message and every reply text is redacted before it
is cut, stored or printed: no file or terminal shows the key, a fragment of it, or a URL password.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import os
import re
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

from emotion_summary.core.cli import EndpointOptions, number_problem
from emotion_summary.core.errors import ConfigError, UserError

T = TypeVar("T")
R = TypeVar("R")


class EndpointError(UserError, RuntimeError):
    """`status` is the HTTP status of the final failure, None for connection errors and timeouts;
    `garbled`: every try got a reply that could not be read (too large, not a chat reply, bad text)."""

    def __init__(self, message: str, status: int | None = None, garbled: bool = False):
        super().__init__(message)
        self.status = status
        self.garbled = garbled


# 4xx statuses about the key, the URL, the model name or a proxy (or the load), not about one request.
_NOT_ABOUT_THE_REQUEST = {401, 403, 404, 407, 408, 429}


def is_refusal(error: EndpointError) -> bool:
    """The endpoint refused this one request for good (e.g. a report too long for the served context):
    asking again gets the same 4xx; or it answered it only with garbage, try after try (counted like a
    refusal, so one hostile reply does not stop the run). Anything else (network, 5xx, 429, a bad key)
    is about the endpoint."""
    if error.garbled:
        return True
    return error.status is not None and 400 <= error.status < 500 and error.status not in _NOT_ABOUT_THE_REQUEST


def public_url(url: str) -> str:
    """`url` fit to print or store: a password (user:pass@) and a query string (?key=...) become ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", parts.fragment))


def endpoint_problem(endpoint: str) -> str | None:
    """Why `endpoint` cannot be used as a base URL (one line), or None for an http(s) URL with a host."""
    expected = "--endpoint: expected an http:// or https:// URL such as http://127.0.0.1:8000/v1"
    text = str(endpoint)
    if not text.isascii() or any(c.isspace() or ord(c) < 32 for c in text):
        return (f"{expected}, got {ascii(text)[:120]}: it holds non-ASCII, space or control characters "
                "(percent-encode them; a host name in its xn-- form)")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:  # '[::1' (an unclosed IPv6 bracket), a port that is not a number
        return f"{expected}, got {public_url_safe(text)!r} ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{expected}, got {public_url_safe(text)!r}"
    if parts.fragment or text.endswith("#"):
        return f"--endpoint: {public_url_safe(text)!r} has a #fragment, which is never sent to a server; remove it"
    return None


def public_url_safe(url: str) -> str:
    try:
        return public_url(url)
    except ValueError:
        return "<unreadable URL>"


def check_endpoint(endpoint: str) -> None:
    """A one-line UserError unless `endpoint` is an http(s) URL with a host."""
    if problem := endpoint_problem(endpoint):
        raise UserError(problem)


MAX_WAIT_S = 60.0  # the longest back-off between two tries; a longer Retry-After is final
_FRAGMENT = 8  # a run of this many characters of a secret is redacted wherever it appears


def redact(text: str, secrets) -> str:
    """`text` without any secret: each secret whole, and any run of _FRAGMENT or more of its characters
    (a server or a proxy may echo a key cut short, e.g. in `Bearer sk-abc...`). Redact, then cut."""
    hidden = bytearray(len(text))
    for secret in {s for s in secrets if s}:
        spans = [secret] if len(secret) < _FRAGMENT else {secret[i:i + _FRAGMENT]
                                                           for i in range(len(secret) - _FRAGMENT + 1)}
        for piece in spans:
            start = text.find(piece)
            while start != -1:
                hidden[start:start + len(piece)] = b"\1" * len(piece)
                start = text.find(piece, start + 1)
    if not any(hidden):
        return text
    out, i = [], 0
    while i < len(text):  # hidden runs become one *** each
        if hidden[i]:
            j = hidden.find(b"\0", i)
            out.append("***")
        else:
            j = hidden.find(b"\1", i)
            out.append(text[i:len(text) if j == -1 else j])
        i = len(text) if j == -1 else j
    return "".join(out)


_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGIT_RUN = re.compile(r"\d{1000}")
MAX_NESTING = 64  # a report, a summary or a score is nested 3 deep; 100,000 '[' is an attack


def garbled_text(content) -> str | None:
    """Why a reply's text cannot be used (not a string, lone surrogates, nesting or digit runs that
    would crash a JSON parser), or None. The check every reply and every saved reply passes."""
    if not isinstance(content, str):
        return f"reply content is {'null' if content is None else type(content).__name__}, not text"
    if _SURROGATE.search(content):
        return "reply text holds a lone surrogate (not valid Unicode)"
    if _DIGIT_RUN.search(content):
        return "reply text holds a run of 1,000 or more digits"
    depth = deepest = 0
    for c in re.findall(r"[\[\]{}]", content):
        depth = depth + 1 if c in "[{" else max(0, depth - 1)
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            return f"reply text is nested more than {MAX_NESTING} brackets deep"
    return None


class _Transport(Exception):
    """The request did not get a whole, readable reply (cut off, garbled, too slow): retried.
    args: (message, HTTP status or None, seconds a Retry-After header asks for or None)."""


class _Garbled(_Transport):
    """A whole reply arrived but cannot be used: too large, not a chat reply, or its text is garbage."""


_DEFAULTS = EndpointOptions()


@dataclass
class ChatClient:
    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = _DEFAULTS.api_key_env
    timeout_s: float = _DEFAULTS.timeout_s  # the whole request, from connecting to the last byte of the reply
    max_retries: int = _DEFAULTS.max_retries
    backoff_s: float = 1.0  # the first wait; doubled each try, at most MAX_WAIT_S
    requests_per_minute: float = _DEFAULTS.requests_per_minute  # 0: no rate limit
    max_reply_mb: float = _DEFAULTS.max_reply_mb

    def __post_init__(self):
        if not str(self.endpoint).strip():
            raise ConfigError("--endpoint: expected an http:// or https:// URL such as http://127.0.0.1:8000/v1")
        # the ranges are the option group's: declared and checked in one place
        EndpointOptions(endpoint=self.endpoint, model=self.model, timeout_s=self.timeout_s,
                        max_retries=self.max_retries, requests_per_minute=self.requests_per_minute,
                        max_reply_mb=self.max_reply_mb)
        if problem := number_problem("backoff_s", self.backoff_s, float, 0, maximum=MAX_WAIT_S):
            raise ConfigError(problem)
        self.timeout_s, self.max_retries = float(self.timeout_s), int(self.max_retries)
        self.requests_per_minute, self.backoff_s = float(self.requests_per_minute), float(self.backoff_s)
        self._lock = threading.Lock()
        self._next_slot = 0.0

    @classmethod
    def from_options(cls, options: EndpointOptions) -> "ChatClient":
        """The client of an endpoint option group (its ranges already checked)."""
        return cls(options.endpoint, options.model, api_key_env=options.api_key_env, timeout_s=options.timeout_s,
                   max_retries=options.max_retries, requests_per_minute=options.requests_per_minute,
                   max_reply_mb=options.max_reply_mb)

    @property
    def max_reply_bytes(self) -> int:
        return int(self.max_reply_mb * 1_000_000)

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
        """`text` without the key or the URL's password in any form (raw, Bearer, Basic, cut short),
        should the server or a library echo them."""
        parts = urlsplit(self.url)
        secrets = [os.environ.get(self.api_key_env), parts.password, unquote(parts.password or "")]
        if parts.username is not None:  # the Basic token of http://user:pass@host
            secrets.append(_basic(parts.username, parts.password).split(" ", 1)[1])
        return redact(text, secrets)

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
            status, headers = resp.status, dict(resp.getheaders())
            body = resp.read(self.max_reply_bytes + 1)  # never more: a 300 MB body is refused, not held
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
        if len(body) > self.max_reply_bytes:
            raise _Garbled(f"reply from {self.public_url} is larger than --max_reply_mb {self.max_reply_mb:g}; "
                             "stopped reading it", status if status >= 300 else None)
        return status, headers, body

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> str:
        """The reply text of a 2xx; EndpointError for a final status; _Transport for a retryable one."""
        if 300 <= status < 400:
            where = public_url(headers.get("Location", headers.get("location", "?")))
            raise EndpointError(f"HTTP {status} from {self.public_url}: redirected to {where}; redirects are not "
                                "followed (the API key would go along): use the final URL as --endpoint", status)
        text = body.decode("utf-8", errors="replace")
        if not 200 <= status < 300:
            message = f"HTTP {status} from {self.public_url}: {self._redact(text)[:200]}"
            if status == 429 or status >= 500:
                raise _Transport(message, status, retry_after(headers))
            raise EndpointError(message, status)
        try:
            content = reply_text(json.loads(body.decode("utf-8")))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError) as e:
            # not UTF-8, not JSON, nested too deep, a 5,000-digit number, not a chat reply
            raise _Garbled(f"unexpected reply from {self.public_url}: {self._redact(repr(e))[:200]}") from None
        if problem := garbled_text(content):
            raise _Garbled(f"garbled reply from {self.public_url}: {problem}")
        return self._redact(content)  # an endpoint echoing the key in its answer: never stored

    def chat(self, messages: list[dict], max_tokens: int = 1024, temperature: float = 0.0,
             top_p: float | None = None) -> str:
        """The assistant's reply text; raises EndpointError after the retries are spent."""
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                   "temperature": temperature, **({"top_p": top_p} if top_p is not None else {})}
        last, status, garbled = "", None, False
        for attempt in range(self.max_retries + 1):
            self._wait_for_rate_limit()
            asked = None
            try:
                return self._answer(*self._post(payload))
            except _Transport as e:
                last, status, asked = (list(e.args) + [None, None])[:3]
                garbled = isinstance(e, _Garbled)
            except OSError as e:  # refused, reset, DNS, TLS, the deadline
                last, status, garbled = (f"cannot reach {self.public_url}: "
                                         f"{self._redact(str(getattr(e, 'reason', e)))}", None, False)
            if attempt == self.max_retries:
                break
            if asked is not None and asked > MAX_WAIT_S:  # waiting here would hold the run for longer
                raise EndpointError(f"{last} (the server asks to retry after {asked:g} s, more than the "
                                    f"{MAX_WAIT_S:g} s this client waits; run the same command later to resume)",
                                    status)
            time.sleep(backoff_wait(attempt, self.backoff_s, asked))
        raise EndpointError(f"{last} (gave up after {self.max_retries + 1} tries)", status, garbled)


def backoff_wait(attempt: int, first_s: float, retry_after_s: float | None = None) -> float:
    """Seconds before try `attempt + 1`: what Retry-After asks, else `first_s` doubled per try; never
    more than MAX_WAIT_S (so --max_retries 20 waits minutes, not days)."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), MAX_WAIT_S)
    return min(first_s * 2 ** min(attempt, 32), MAX_WAIT_S)


def retry_after(headers: dict[str, str]) -> float | None:
    """Seconds a Retry-After header asks for (a number or an HTTP date), None without a readable one."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d{1,9}(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return None if when is None else max(0.0, when.timestamp() - time.time())


def _basic(user: str, password: str | None) -> str:
    pair = f"{unquote(user)}:{unquote(password or '')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def reply_text(body: dict):
    """The assistant's content in an OpenAI chat reply; a list of text parts (strings or
    {"type": "text", "text": ...}) is joined; anything else is returned as it is for `garbled_text`."""
    content = body["choices"][0]["message"]["content"]
    if isinstance(content, list) and content and all(
            isinstance(p, str) or (isinstance(p, dict) and isinstance(p.get("text"), str)) for p in content):
        return "".join(p if isinstance(p, str) else p["text"] for p in content)
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
