"""The chat client against misbehaving loopback servers (issue 10, items 11, 16, 17, 18)."""

import base64
import json
import time

import pytest

from emotion_summary.teacher.client import ChatClient, EndpointError, public_url
from emotion_summary.core.errors import UserError
from tests.loopback_servers import ScriptedServer, chat_reply, drip, raw, respond

GOOD = respond(200, chat_reply("hello"))


def client(endpoint: str, **kw) -> ChatClient:
    return ChatClient(endpoint, "m", **{"max_retries": 1, "backoff_s": 0.0, "timeout_s": 5, **kw})


@pytest.mark.parametrize("broken", [
    respond(200, json.dumps(chat_reply("hel")).encode()[:20], length=500),  # IncompleteRead
    raw(b"HTTP/1.1 two hundred OK\r\n\r\n"),  # a bad status line
    raw(b"garbage\r\n\r\n"),
    respond(200, b'{"choices": [{"message": {"content": "caf\xe9"}}]}'),  # not UTF-8
    respond(200, "not json"),
    respond(200, {"choices": []}),
    respond(503, "overloaded"),
], ids=["incomplete-read", "bad-status", "garbage", "not-utf8", "not-json", "no-choices", "503"])
def test_transport_errors_are_retried_like_a_5xx(broken):
    with ScriptedServer(broken, GOOD) as server:
        assert client(server.endpoint).chat([{"role": "user", "content": "hi"}]) == "hello"
        assert len(server.requests) == 2
    with ScriptedServer(broken) as server:
        with pytest.raises(EndpointError, match="gave up after 2 tries"):
            client(server.endpoint).chat([{"role": "user", "content": "hi"}])


def test_content_as_a_list_of_parts_is_joined():
    parts = [{"type": "text", "text": "first "}, {"type": "text", "text": "second"}, "third"]
    with ScriptedServer(respond(200, chat_reply(parts))) as server:
        assert client(server.endpoint).chat([]) == "first secondthird"


@pytest.mark.parametrize("kw, message", [
    ({"endpoint": "notaurl"}, "--endpoint: expected an http:// or https:// URL"),
    ({"endpoint": "http://127.0.0.1:port/v1"}, "--endpoint"),
    ({"timeout_s": -1}, "--timeout_s: expected a number > 0, got -1"),
    ({"timeout_s": "abc"}, "--timeout_s"),
    ({"max_retries": -1}, "--max_retries: expected an integer >= 0, got -1"),
    ({"max_retries": 1.5}, "--max_retries"),
    ({"requests_per_minute": -2}, "--requests_per_minute"),
])
def test_bad_options_are_one_line_user_errors(kw, message):
    with pytest.raises(UserError, match=message) as e:
        ChatClient(kw.pop("endpoint", "http://127.0.0.1:1/v1"), "m", **kw)
    assert "\n" not in str(e.value)


def test_the_key_never_follows_a_redirect(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-key")
    with ScriptedServer(GOOD) as elsewhere:
        moved = respond(307, "", headers={"Location": elsewhere.endpoint + "/chat/completions"})
        with ScriptedServer(moved) as server:
            with pytest.raises(EndpointError, match="redirected to .* not followed") as e:
                client(server.endpoint).chat([])
            assert server.requests[0].headers["authorization"] == "Bearer sk-secret-key"
        assert elsewhere.requests == []  # neither the key nor the request went there
    assert e.value.status == 307 and "sk-secret-key" not in str(e.value)


def test_a_password_in_the_endpoint_is_sent_but_never_shown(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert public_url("http://me:s3cret@host:8000/v1?api_key=k") == "http://me:***@host:8000/v1?***"
    echo = respond(401, "bad credentials: me:s3cret")
    with ScriptedServer(echo) as server:
        endpoint = server.endpoint.replace("http://", "http://me:s3cret@")
        with pytest.raises(EndpointError) as e:
            client(endpoint).chat([])
        assert server.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"me:s3cret").decode()
    assert "s3cret" not in str(e.value) and "me:***@127.0.0.1" in str(e.value)
    with pytest.raises(EndpointError) as e:  # nobody listens there any more
        client(endpoint, max_retries=0).chat([])
    assert "s3cret" not in str(e.value)
    with pytest.raises(UserError) as e:
        ChatClient("ftp://me:s3cret@host/v1", "m")
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize("prefix", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n",  # a body one byte at a time
    b"HTTP/1.1 200 OK\r\nX-Slow: ",  # headers one byte at a time
], ids=["body", "headers"])
def test_timeout_is_a_deadline_for_the_whole_request(prefix):
    with ScriptedServer(drip(prefix, every_s=0.05, max_bytes=200)) as server:  # would take 10 s
        started = time.monotonic()
        with pytest.raises(EndpointError, match="timed out"):
            client(server.endpoint, timeout_s=0.6, max_retries=0).chat([])
        assert time.monotonic() - started < 2.5


def test_an_http_proxy_from_the_environment_is_used_as_urllib_would(monkeypatch):
    with ScriptedServer(GOOD) as proxy:
        monkeypatch.setenv("http_proxy", f"http://me:pw@127.0.0.1:{proxy.port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert client("http://api.example.invalid:8000/v1").chat([]) == "hello"
    request = proxy.requests[0]
    assert request.line == "POST http://api.example.invalid:8000/v1/chat/completions HTTP/1.1"
    assert request.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"me:pw").decode()
