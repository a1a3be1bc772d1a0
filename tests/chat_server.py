"""A fake OpenAI-compatible /v1/chat/completions server on 127.0.0.1 for tests (stdlib only)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class FakeChatServer:
    """`reply(messages)` answers each request with a text (HTTP 200) or a (status, text) pair;
    `requests` keeps every answered request body; after `fail_after` answered requests the server
    answers 503 (an endpoint that went down). An exception raised by `reply` (a failed assertion)
    is answered with HTTP 500 and raised again when the `with` block ends, so the test fails with it
    instead of with "endpoint unreachable"."""

    def __init__(self, reply: Callable[[list[dict]], str | tuple[int, str]], delay_s: float = 0.0):
        self.reply, self.delay_s = reply, delay_s
        self.requests: list[dict] = []
        self.fail_after: int | None = None
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    down = server.fail_after is not None and len(server.requests) >= server.fail_after
                    if not down:
                        server.requests.append(body)
                if server.delay_s:
                    time.sleep(server.delay_s)
                try:
                    answer = (503, "overloaded") if down else server.reply(body["messages"])
                except Exception as e:  # noqa: BLE001 - kept for the test thread, which raises it
                    server.errors.append(e)
                    answer = (500, f"the test's reply function raised {type(e).__name__}: {e}")
                status, content = answer if isinstance(answer, tuple) else (200, answer)
                payload = ({"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": "stop"}]}
                           if status == 200 else {"error": content})
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client timed out and hung up
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeChatServer":
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.errors:
            raise self.errors[0] from exc


def unused_endpoint() -> str:
    """A 127.0.0.1 URL nobody listens on: connections are refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
