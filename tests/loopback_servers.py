"""Loopback (127.0.0.1) HTTP servers that misbehave on purpose, for the chat client's tests (stdlib).

`ScriptedServer` answers the n-th request with the n-th script (the last one repeats): a function that
gets the connection's socket and the parsed request and writes whatever bytes it likes. An exception in
a script (an assertion, say) is kept and raised again when the `with` block ends, in the test's thread.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Request:
    line: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


Script = Callable[[socket.socket, Request], None]


def _read_request(conn: socket.socket) -> Request:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the client hung up before sending a whole request")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    while len(body) < int(headers.get("content-length", 0)):
        body += conn.recv(65536)
    return Request(line, headers, body)


class ScriptedServer:
    def __init__(self, *scripts: Script):
        self.scripts = scripts
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = _read_request(conn)
                self.requests.append(request)
                self.scripts[min(len(self.requests), len(self.scripts)) - 1](conn, request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: what some scripts wait for
            except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
                self.errors.append(e)

    def __enter__(self) -> "ScriptedServer":
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._listener.close()
        if self.errors and exc[0] is None:
            raise self.errors[0]


def respond(status: int = 200, body: bytes | str | dict = b"", headers: dict[str, str] | None = None,
            length: int | None = None) -> Script:
    """A script sending one whole response (Content-Length `length` when given: a lie cuts it short)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body

    def script(conn: socket.socket, request: Request) -> None:
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(data) if length is None else length}",
                "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)

    return script


def chat_reply(content) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def raw(data: bytes) -> Script:
    return lambda conn, request: conn.sendall(data)


def drip(prefix: bytes, every_s: float = 0.1, max_bytes: int = 200) -> Script:
    """Send `prefix` one byte at a time, then filler bytes, one every `every_s` (at most `max_bytes`)."""
    def script(conn: socket.socket, request: Request) -> None:
        for i in range(max_bytes):
            if ServerStop.is_set(conn):
                return
            conn.sendall(prefix[i:i + 1] if i < len(prefix) else b" ")
            time.sleep(every_s)

    return script


class ServerStop:
    """Whether the client closed its end (a recv of b'' or an error without blocking)."""

    @staticmethod
    def is_set(conn: socket.socket) -> bool:
        try:
            conn.setblocking(False)
            return conn.recv(1) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            conn.setblocking(True)
