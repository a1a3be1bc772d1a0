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
    ({"timeout_s": -1}, "--timeout_s: expected a number > 0 and <= 86400, got -1"),
    ({"timeout_s": 1e300}, "--timeout_s: expected a number > 0 and <= 86400"),
    ({"requests_per_minute": 1e-300}, "--requests_per_minute: .* \\(or 0 for off\\)"),
    ({"max_retries": 10**6}, "--max_retries: expected an integer >= 0 and <= 100"),
    ({"max_reply_mb": 0}, "--max_reply_mb"),
    ({"endpoint": "http://bücher.example/v1"}, "non-ASCII"),
    ({"endpoint": "http://[::1:8000/v1"}, "Invalid IPv6 URL"),
    ({"endpoint": "http://127.0.0.1:8000/v1#frag"}, "#fragment"),
    ({"endpoint": "http://127.0.0.1:8000/v1 "}, "space"),
    ({"timeout_s": "abc"}, "--timeout_s"),
    ({"max_retries": -1}, "--max_retries: expected an integer >= 0 and <= 100, got -1"),
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


HOSTILE_CONTENT = {
    "list-of-numbers": [1, 2],
    "null": None,
    "lone-surrogate": "\ud800 broken",
    "100k-brackets": "[" * 100_000,
    "5000-digit-text": '{"factual_consistency": ' + "9" * 5000 + "}",
}


@pytest.mark.parametrize("content", HOSTILE_CONTENT.values(), ids=HOSTILE_CONTENT.keys())
def test_garbled_reply_content_is_retried_then_refused_in_one_line(content):
    body = json.dumps(chat_reply(content)).encode()  # json.dumps keeps the lone surrogate as \ud800
    with ScriptedServer(respond(200, body), GOOD) as server:
        assert client(server.endpoint).chat([]) == "hello"
    with ScriptedServer(respond(200, body)) as server:
        with pytest.raises(EndpointError, match="garbled reply .*gave up after 2 tries") as e:
            client(server.endpoint).chat([])
    assert "\n" not in str(e.value)


def test_a_5000_digit_number_or_deep_nesting_in_the_body_is_garbled_not_a_traceback():
    for body in (b'{"choices": [{"message": {"content": ' + b"9" * 5000 + b"}}]}",
                 b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        with ScriptedServer(respond(200, body)) as server:
            with pytest.raises(EndpointError, match="unexpected reply"):
                client(server.endpoint, max_retries=0).chat([])


def test_a_reply_larger_than_the_cap_is_not_read_past_it():
    huge = json.dumps(chat_reply("x" * 3_000_000)).encode()
    with ScriptedServer(respond(200, huge), GOOD) as server:
        assert client(server.endpoint, max_reply_mb=1).chat([]) == "hello"
    with ScriptedServer(respond(200, huge)) as server:
        with pytest.raises(EndpointError, match="larger than --max_reply_mb 1; stopped reading"):
            client(server.endpoint, max_reply_mb=1, max_retries=0).chat([])
        assert client(server.endpoint, max_reply_mb=4).chat([]) == "x" * 3_000_000


def test_backoff_is_capped_per_wait_and_retry_after_is_honoured():
    from emotion_summary.teacher.client import MAX_WAIT_S, backoff_wait, retry_after

    assert [backoff_wait(n, 1.0) for n in (0, 1, 5, 6, 20, 10**6)] == [1, 2, 32, MAX_WAIT_S, MAX_WAIT_S, MAX_WAIT_S]
    assert sum(backoff_wait(n, 1.0) for n in range(20)) < 20 * MAX_WAIT_S  # minutes, not 12 days
    assert backoff_wait(0, 1.0, retry_after_s=3.0) == 3.0
    assert retry_after({"Retry-After": "7"}) == 7.0 and retry_after({"retry-after": "soon"}) is None
    assert 0 <= retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    with ScriptedServer(respond(429, "slow down", headers={"Retry-After": "1"}), GOOD) as server:
        started = time.monotonic()
        assert client(server.endpoint, backoff_s=0.0).chat([]) == "hello"
        assert time.monotonic() - started >= 0.9  # waited what the server asked, not backoff_s (0)
    with ScriptedServer(respond(503, "maintenance", headers={"Retry-After": "3600"})) as server:
        started = time.monotonic()
        with pytest.raises(EndpointError, match="retry after 3600 s, more than the 60 s"):
            client(server.endpoint, max_retries=5).chat([])
        assert time.monotonic() - started < 5 and len(server.requests) == 1


KEY = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize("echo", [
    f"Authorization: Bearer {KEY}",  # the whole header
    "x" * 190 + f"Bearer {KEY}",  # the key across the 200-character cut
    f"header was Bearer {KEY[:12]}",  # the server cut the key short itself
    f"...{KEY[-9:]} was refused",
], ids=["whole", "across-the-cut", "prefix-fragment", "suffix-fragment"])
def test_the_key_is_redacted_in_every_form_before_the_message_is_cut(monkeypatch, echo):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ScriptedServer(respond(400, echo)) as server:
        with pytest.raises(EndpointError) as e:
            client(server.endpoint).chat([])
    message = str(e.value)
    assert "***" in message
    assert not any(KEY[i:i + 8] in message for i in range(len(KEY) - 7)), message


def test_the_key_echoed_in_reply_content_is_redacted_before_anyone_stores_it(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ScriptedServer(respond(200, chat_reply(f"your key is {KEY}; and {KEY[5:20]}"))) as server:
        text = client(server.endpoint).chat([])
    assert text == "your key is ***; and ***"
