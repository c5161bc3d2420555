from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from statewave_runner.httpclient import (
    AuthFailedError,
    BadRequestError,
    BadResponseError,
    HttpClient,
    HttpError,
    NetworkError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    parse_link_header,
    parse_retry_after,
)
from statewave_runner.redact import Redactor

# --------------------------------------------------------------------------- a scripted server


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int
    request_line: str


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Script:
    """Replies served in order; the last one repeats. A callable computes a reply."""

    replies: list[Reply | Callable[[Seen], Reply]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, req: Seen) -> Reply:
        with self.lock:
            self.seen.append(req)
            item = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return item(req) if callable(item) else item


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Seen(
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            self.client_address[1],
            self.requestline,
        )
        status, headers, payload = self.server.script.next(req)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if status not in (204, 304) and self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: Script):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, Script]]]:
    servers: list[_Server] = []

    def start(*replies: Reply | Callable[[Seen], Reply]) -> tuple[str, Script]:
        script = Script(list(replies))
        srv = _Server(script)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}", script

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_client(clock: FakeClock, **kw: Any) -> HttpClient:
    kw.setdefault("trust_env", False)
    return HttpClient(sleep=clock.sleep, clock=clock.time, **kw)


JSON = {"Content-Type": "application/json"}

# --------------------------------------------------------------------------- tests


def test_keep_alive_reuses_one_connection(serve: Any, clock: FakeClock) -> None:
    url, script = serve((200, JSON, b'{"a":1}'))
    with make_client(clock) as client:
        assert client.get_json(url + "/x") == {"a": 1}
        assert client.get_json(url + "/y", params={"q": "a b", "n": 2, "skip": None}) == {"a": 1}
        created, reused, idle = client.pool_stats
    assert (created, reused, idle) == (1, 1, 1)
    assert script.seen[0].client_port == script.seen[1].client_port
    assert script.seen[1].path == "/y?q=a+b&n=2"
    assert script.seen[0].headers["user-agent"].startswith("statewave-runner/")
    assert script.seen[0].headers["accept"] == "application/json"


def test_stale_pooled_connection_is_replaced_without_a_retry(clock: FakeClock) -> None:
    # A raw server that answers one request per connection, then closes it
    # without saying "Connection: close": the next reuse finds it dead.
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    served: list[int] = []

    def run() -> None:
        for _ in range(2):
            conn, _addr = lsock.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                served.append(1)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    client = make_client(clock, max_retries=0)
    try:
        assert client.get(f"http://127.0.0.1:{port}/a").body == b"ok"
        assert client.get(f"http://127.0.0.1:{port}/b").body == b"ok"
    finally:
        client.close()
        lsock.close()
    t.join(5)
    assert len(served) == 2
    assert clock.sleeps == []  # the resend is not a retry


def test_5xx_is_retried_with_backoff_then_succeeds(serve: Any, clock: FakeClock) -> None:
    url, script = serve((502, {}, b"bad gateway"), (500, {}, b""), (200, JSON, b"[]"))
    client = make_client(clock, backoff_base=1.0)
    assert client.get_json(url) == []
    assert len(script.seen) == 3
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 1.0 and 0 <= clock.sleeps[1] <= 2.0


def test_5xx_exhausted_raises_network_error_with_status(serve: Any, clock: FakeClock) -> None:
    url, script = serve((503, {}, b"down"))
    client = make_client(clock, max_retries=2)
    with pytest.raises(NetworkError) as info:
        client.get(url + "/z")
    assert info.value.status == 503
    assert info.value.reason == "network"
    assert info.value.retryable
    assert len(script.seen) == 3
    assert "/z answered HTTP 503" in str(info.value)


def test_retry_after_seconds_is_honoured(serve: Any, clock: FakeClock) -> None:
    url, _ = serve((429, {"Retry-After": "7"}, b""), (200, JSON, b"1"))
    client = make_client(clock)
    assert client.get_json(url) == 1
    assert clock.sleeps == [7.0]


def test_retry_after_http_date_on_503(serve: Any, clock: FakeClock) -> None:
    # Fri, 14 Nov 2023 22:13:25 GMT is 5 s after the fake clock's now.
    url, _ = serve((503, {"Retry-After": "Tue, 14 Nov 2023 22:13:25 GMT"}, b""), (200, {}, b"x"))
    client = make_client(clock)
    assert client.get(url).body == b"x"
    assert clock.sleeps == [5.0]


def test_long_rate_limit_raises_with_retry_at_instead_of_sleeping(
    serve: Any, clock: FakeClock
) -> None:
    reset = int(clock.now) + 2400  # forty minutes away
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
    url, script = serve((403, headers, b'{"message":"API rate limit exceeded"}'))
    client = make_client(clock)
    with pytest.raises(RateLimitedError) as info:
        client.get(url + "/repos/o/r/issues")
    err = info.value
    assert clock.sleeps == []
    assert len(script.seen) == 1
    assert err.retry_at == reset + 1
    assert err.reason == "rate_limited"
    assert err.status == 403
    assert b"rate limit" in err.body


def test_short_rate_limit_reset_is_slept_inline(serve: Any, clock: FakeClock) -> None:
    reset = int(clock.now) + 3
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
    url, _ = serve((403, headers, b""), (200, {}, b"ok"))
    client = make_client(clock)
    assert client.get(url).body == b"ok"
    assert clock.sleeps == [4.0]


def test_secondary_rate_limit_retry_after_longer_than_cap_raises(
    serve: Any, clock: FakeClock
) -> None:
    url, _ = serve((403, {"Retry-After": "120"}, b"secondary rate limit"))
    client = make_client(clock, max_retry_wait=60)
    with pytest.raises(RateLimitedError) as info:
        client.get(url)
    assert info.value.retry_at == clock.now + 120
    assert clock.sleeps == []


def test_429_without_hints_backs_off_then_gives_up_with_retry_at(
    serve: Any, clock: FakeClock
) -> None:
    url, script = serve((429, {}, b""))
    client = make_client(clock, max_retries=2, backoff_base=0.5)
    with pytest.raises(RateLimitedError) as info:
        client.get(url)
    assert len(script.seen) == 3
    assert len(clock.sleeps) == 2
    assert info.value.retry_at is not None and info.value.retry_at >= clock.now


@pytest.mark.parametrize(
    ("status", "cls", "reason"),
    [
        (401, AuthFailedError, "auth_failed"),
        (403, PermissionDeniedError, "permission_denied"),
        (404, NotFoundError, "not_found"),
        (410, NotFoundError, "not_found"),
        (422, BadRequestError, "bad_request"),
    ],
)
def test_status_classification(
    serve: Any, clock: FakeClock, status: int, cls: type[HttpError], reason: str
) -> None:
    url, script = serve((status, {}, b"nope"))
    client = make_client(clock)
    with pytest.raises(cls) as info:
        client.get(url)
    assert info.value.reason == reason
    assert info.value.status == status
    assert not info.value.retryable
    assert len(script.seen) == 1  # never retried
    assert clock.sleeps == []


def test_raise_for_status_false_returns_the_response(serve: Any, clock: FakeClock) -> None:
    url, _ = serve((404, {}, b"gone"))
    resp = make_client(clock).get(url, raise_for_status=False)
    assert (resp.status, resp.body, resp.ok) == (404, b"gone", False)


def test_304_is_returned_not_raised(serve: Any, clock: FakeClock) -> None:
    url, script = serve((304, {"ETag": '"abc"'}, b""))
    resp = make_client(clock).get(url, headers={"If-None-Match": '"abc"'})
    assert resp.status == 304 and resp.body == b""
    assert script.seen[0].headers["if-none-match"] == '"abc"'


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_connection_refused_is_retried_then_network_error(clock: FakeClock) -> None:
    port = _free_port()
    client = make_client(clock, max_retries=2)
    with pytest.raises(NetworkError) as info:
        client.get(f"http://127.0.0.1:{port}/x")
    assert len(clock.sleeps) == 2
    assert "ConnectionRefusedError" in str(info.value)
    assert info.value.status is None


def test_post_is_not_resent_after_a_connection_error(clock: FakeClock) -> None:
    port = _free_port()
    client = make_client(clock, max_retries=3)
    with pytest.raises(NetworkError):
        client.request("POST", f"http://127.0.0.1:{port}/x", json={"a": 1})
    assert clock.sleeps == []


def test_post_is_resent_on_503_but_not_on_500(serve: Any, clock: FakeClock) -> None:
    url, script = serve((503, {}, b""), (200, JSON, b'{"ok":true}'))
    client = make_client(clock)
    assert client.post_json(url, {"x": 1}) == {"ok": True}
    assert len(script.seen) == 2
    assert script.seen[1].body == b'{"x":1}'
    assert script.seen[1].headers["content-type"] == "application/json"

    url2, script2 = serve((500, {}, b""))
    with pytest.raises(NetworkError):
        client.post_json(url2, {"x": 1})
    assert len(script2.seen) == 1


def test_read_timeout_is_a_network_error(clock: FakeClock) -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    accepted: list[socket.socket] = []

    def run() -> None:
        conn, _ = lsock.accept()
        accepted.append(conn)  # never answers

    threading.Thread(target=run, daemon=True).start()
    client = make_client(clock, timeout=0.2, max_retries=0)
    try:
        with pytest.raises(NetworkError, match="timed out"):
            client.get(f"http://127.0.0.1:{port}/slow")
    finally:
        for c in accepted:
            c.close()
        lsock.close()


def test_errors_never_contain_tokens(serve: Any, clock: FakeClock) -> None:
    url, _ = serve((401, {}, b""))
    token = "ghp_supersecrettokenvalue123"
    client = make_client(clock, redactor=Redactor([token]))
    with pytest.raises(AuthFailedError) as info:
        client.get(
            f"{url}/path/{token}?access_token={token}&page=2",
            headers={"Authorization": f"Bearer {token}"},
        )
    text = str(info.value) + repr(info.value) + info.value.url
    assert token not in text
    assert "page=2" in text
    assert "access_token=***" in text


def test_link_header_parsing() -> None:
    value = (
        '<https://api.github.com/repositories/1/issues?page=2&per_page=100>; rel="next", '
        '<https://api.github.com/repositories/1/issues?page=9>; rel="last", '
        '<https://x/a,b>; rel=prev; title="a, b; c", </rel>; rel="first  alternate"'
    )
    assert parse_link_header(value) == {
        "next": "https://api.github.com/repositories/1/issues?page=2&per_page=100",
        "last": "https://api.github.com/repositories/1/issues?page=9",
        "prev": "https://x/a,b",
        "first": "/rel",
        "alternate": "/rel",
    }
    assert parse_link_header("") == {}
    assert parse_link_header("garbage") == {}


def test_response_links_are_absolute(serve: Any, clock: FakeClock) -> None:
    url, _ = serve((200, {"Link": '</items?page=2>; rel="next"'}, b"[]"))
    resp = make_client(clock).get(url + "/items")
    assert resp.links() == {"next": url + "/items?page=2"}


def test_retry_after_parsing() -> None:
    assert parse_retry_after("12", 0) == 12.0
    assert parse_retry_after(None, 0) is None
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0) == 30.0


def test_gzip_body_is_decoded(serve: Any, clock: FakeClock) -> None:
    payload = json.dumps({"items": list(range(1000))}).encode()
    url, script = serve((200, {"Content-Encoding": "gzip"}, gzip.compress(payload)))
    assert make_client(clock).get_json(url) == {"items": list(range(1000))}
    assert script.seen[0].headers["accept-encoding"] == "gzip"


def test_body_larger_than_the_cap_is_refused(serve: Any, clock: FakeClock) -> None:
    url, _ = serve((200, {}, b"x" * 5000))
    with pytest.raises(BadResponseError, match="larger than 1000 bytes"):
        make_client(clock, max_body=1000).get(url)
    bomb = gzip.compress(b"0" * 100_000)
    url2, _ = serve((200, {"Content-Encoding": "gzip"}, bomb))
    with pytest.raises(BadResponseError):
        make_client(clock, max_body=1000).get(url2)


def test_invalid_json_is_bad_response(serve: Any, clock: FakeClock) -> None:
    url, _ = serve((200, JSON, b"<html>"))
    with pytest.raises(BadResponseError, match="not JSON"):
        make_client(clock).get_json(url)


def test_redirect_keeps_auth_on_same_host_and_drops_it_across_hosts(
    serve: Any, clock: FakeClock
) -> None:
    other_url, other = serve((200, {}, b"elsewhere"))
    other_port = other_url.rsplit(":", 1)[1]
    url, script = serve(
        (301, {"Location": "/moved"}, b""),
        (302, {"Location": f"http://localhost:{other_port}/final"}, b""),
    )
    client = make_client(clock)
    resp = client.get(url + "/start", headers={"Authorization": "Bearer t0ken"})
    assert resp.body == b"elsewhere"
    assert script.seen[1].path == "/moved"
    assert script.seen[1].headers["authorization"] == "Bearer t0ken"
    assert other.seen[0].path == "/final"
    assert "authorization" not in other.seen[0].headers


def test_form_and_text_bodies(serve: Any, clock: FakeClock) -> None:
    url, script = serve((200, {}, b""))
    client = make_client(clock)
    client.request("POST", url, data={"channel": "C1", "limit": 200, "none": None})
    client.request("PUT", url, data="hello")
    assert script.seen[0].body == b"channel=C1&limit=200"
    assert script.seen[0].headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert script.seen[1].body == b"hello"
    with pytest.raises(ValueError):
        client.request("POST", url, json={}, data=b"")
    with pytest.raises(ValueError):
        client.request("GET", url, headers={"X-Evil": "a\r\nInjected: 1"})


def test_concurrent_requests_share_the_pool_safely(serve: Any, clock: FakeClock) -> None:
    url, _script = serve(lambda req: (200, JSON, json.dumps(req.path).encode()))
    client = make_client(clock)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                assert client.get_json(f"{url}/w{n}/{i}") == f"/w{n}/{i}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    created, reused, _ = client.pool_stats
    assert created + reused == 120
    assert created <= 6 + 2  # at most about one connection per thread
    client.close()
    with pytest.raises(NetworkError, match="closed"):
        client.get(url)


def test_http_proxy_from_environment(
    serve: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "proxy" is a scripted server: it sees the absolute-form request line.
    proxy_url, proxy = serve((200, {}, b"via proxy"))
    monkeypatch.setenv("http_proxy", proxy_url)
    monkeypatch.setenv("no_proxy", "")
    client = HttpClient(sleep=clock.sleep, clock=clock.time)
    resp = client.get("http://upstream.invalid:8080/a?b=1")
    assert resp.body == b"via proxy"
    assert proxy.seen[0].request_line == "GET http://upstream.invalid:8080/a?b=1 HTTP/1.1"
    monkeypatch.setenv("no_proxy", "upstream.invalid")
    with pytest.raises(NetworkError):
        HttpClient(sleep=clock.sleep, clock=clock.time, max_retries=0).get(
            "http://upstream.invalid:8080/a"
        )


def test_bad_urls_are_refused(clock: FakeClock) -> None:
    client = make_client(clock)
    with pytest.raises(BadRequestError, match="scheme"):
        client.get("ftp://example.com/x")
    with pytest.raises(BadRequestError, match="no host"):
        client.get("http:///x")
