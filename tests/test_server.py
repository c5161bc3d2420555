"""statewave_runner.server: routing, health, protocol handling, request ids, access log.

Real sockets against a real listening server; see test_server_limits.py for
timeouts and caps, test_server_lifecycle.py for start/stop/drain.
"""

from __future__ import annotations

import json
import logging
import threading
from http.client import HTTPConnection
from http.server import ThreadingHTTPServer

import pytest

from statewave_runner.httptypes import Request, Response
from statewave_runner.server import (
    NO_RECEIVERS,
    Limits,
    Server,
    ServerSetupError,
)
from tests.test_server_support import Client, echo, get, raw_request, serving

# --------------------------------------------------------------------------- health


def test_is_a_threading_http_server() -> None:
    assert issubclass(Server, ThreadingHTTPServer)


def test_healthz_and_readyz() -> None:
    with serving() as server:
        r = get(server.address, "/healthz")
        assert (r.status, r.json()) == (200, {"status": "ok"})
        assert r.header("content-type") == "application/json"
        r = get(server.address, "/readyz")
        assert (r.status, r.json()) == (200, {"status": "ready"})


def test_readiness_flips_with_the_ready_flag() -> None:
    with serving(ready=False) as server:
        assert server.ready is False
        r = get(server.address, "/readyz")
        assert (r.status, r.json()) == (503, {"status": "starting_or_shutting_down"})
        server.ready = True
        assert get(server.address, "/readyz").status == 200
        server.ready = False
        assert get(server.address, "/readyz").status == 503
        # Liveness does not depend on readiness.
        assert get(server.address, "/healthz").status == 200


def test_head_on_health_has_length_but_no_body() -> None:
    with serving() as server, Client(server.address) as c:
        r = c.request("HEAD", "/healthz")
        assert r.status == 200
        assert r.body == b""
        assert r.header("content-length") == str(len(b'{"status":"ok"}'))
        # The connection is still in sync: a following GET gets its own body.
        assert c.request("GET", "/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_health_endpoints_refuse_other_methods(path: str, method: str) -> None:
    with serving() as server, Client(server.address) as c:
        r = c.request(method, path, b"{}")
        assert r.status == 405
        assert r.json() == {"error": "method_not_allowed"}
        assert r.header("allow") == "GET, HEAD"


def test_health_ignores_the_query_string() -> None:
    with serving() as server:
        assert get(server.address, "/healthz?verbose=1").status == 200


# --------------------------------------------------------------------------- routing


def test_404_hint_lists_everything_mounted_in_order() -> None:
    routes = {
        "/metrics": (echo, ("GET",)),
        "/slack/prod/events": (echo, ("POST",)),
        "/github/main/events": (echo, ("POST",)),
    }
    with serving(routes) as server:
        assert server.mounted() == [
            "/healthz",
            "/readyz",
            "/metrics",
            "/slack/prod/events",
            "/github/main/events",
        ]
        r = get(server.address, "/slack/nope/events")
        assert r.status == 404
        assert r.header("content-type") == "application/json"
        assert r.json() == {
            "error": "not_found",
            "hint": "mounted: /healthz, /readyz, /metrics, /slack/prod/events, /github/main/events",
        }


def test_404_hint_without_receivers_uses_the_node_wording() -> None:
    with serving({"/metrics": (echo, ("GET",))}) as server:
        r = get(server.address, "/slack/x/events")
        assert r.status == 404
        assert r.json() == {
            "error": "not_found",
            "hint": f"mounted: /healthz, /readyz, /metrics {NO_RECEIVERS}",
        }
        assert NO_RECEIVERS == "(no push receivers configured)"


def test_404_hint_follows_routes_added_while_serving() -> None:
    with serving() as server:
        assert get(server.address, "/x").json() == {
            "error": "not_found",
            "hint": f"mounted: /healthz, /readyz {NO_RECEIVERS}",
        }
        server.route("/slack/late/events", echo)
        assert get(server.address, "/x").json() == {
            "error": "not_found",
            "hint": "mounted: /healthz, /readyz, /slack/late/events",
        }
        assert get(server.address, "/slack/late/events").status == 405


def test_explicit_receiver_flag_overrides_the_path_shape() -> None:
    with serving() as server:
        server.route("/hooks/custom", echo, receiver=True)
        assert (
            get(server.address, "/x").json()["hint"] == "mounted: /healthz, /readyz, /hooks/custom"
        )


def test_routing_is_exact_on_the_path() -> None:
    with serving({"/slack/prod/events": (echo, ("POST",))}) as server, Client(server.address) as c:
        for path in (
            "/slack/prod/events/",
            "/slack/prod",
            "/SLACK/prod/events",
            "/slack/prod/events2",
        ):
            assert c.request("POST", path, b"x").status == 404, path
        r = c.request("POST", "/slack/prod/events?token=abc&x=1", b"payload")
        assert r.status == 200
        assert r.json()["path"] == "/slack/prod/events"
        assert r.json()["query"] == "token=abc&x=1"
        assert r.json()["body"] == "payload"


def test_absolute_form_target_is_routed_by_its_path() -> None:
    with serving() as server, Client(server.address) as c:
        assert c.request("GET", "http://example.com/healthz").status == 200
        assert c.request("GET", "HTTPS://example.com/healthz?x=1").status == 200
        assert c.request("OPTIONS", "*").status == 404


def test_405_with_allow_before_the_handler_runs() -> None:
    calls: list[Request] = []

    def handler(request: Request) -> Response:
        calls.append(request)
        return Response(200)

    with (
        serving({"/slack/prod/events": (handler, ("POST",))}) as server,
        Client(server.address) as c,
    ):
        for method in ("GET", "PUT", "DELETE", "HEAD"):
            r = c.request(method, "/slack/prod/events")
            assert r.status == 405, method
            assert r.header("allow") == "POST"
            if method != "HEAD":
                assert r.json() == {"error": "method_not_allowed"}
        assert calls == []


def test_get_route_allows_head_and_the_handler_sees_head() -> None:
    seen: list[str] = []

    def metrics(request: Request) -> Response:
        seen.append(request.method)
        return Response.text(200, "up 1\n", "text/plain; version=0.0.4")

    with serving({"/metrics": (metrics, ("GET",))}) as server, Client(server.address) as c:
        r = c.request("HEAD", "/metrics")
        assert (r.status, r.body, r.header("content-length")) == (200, b"", "5")
        r = c.request("GET", "/metrics")
        assert (r.status, r.body) == (200, b"up 1\n")
        assert r.header("content-type") == "text/plain; version=0.0.4"
        r = c.request("POST", "/metrics", b"x")
        assert (r.status, r.header("allow")) == (405, "GET, HEAD")
    assert seen == ["HEAD", "GET"]


def test_handler_gets_headers_body_remote_and_its_response_passes_through() -> None:
    def handler(request: Request) -> Response:
        assert request.headers["x-slack-signature"] == "v0=abc"
        assert request.headers.get_all("x-multi") == ["1", "2"]
        return Response(
            201,
            b"created",
            (("Content-Type", "text/plain"), ("X-Custom", "yes"), ("Content-Length", "999")),
        )

    with serving({"/slack/a/events": (handler, ("POST",))}) as server, Client(server.address) as c:
        c.send(
            b"POST /slack/a/events HTTP/1.1\r\nHost: t\r\nX-Slack-Signature: v0=abc\r\n"
            b"X-Multi: 1\r\nX-Multi: 2\r\nContent-Length: 4\r\n\r\nbody"
        )
        r = c.read_reply()
        assert (r.status, r.body) == (201, b"created")
        assert r.header("x-custom") == "yes"
        # The server owns Content-Length: the handler's bogus value is dropped.
        assert r.header("content-length") == "7"
        assert r.raw_head.count(b"Content-Length") == 1


def test_204_has_no_content_length_and_no_body() -> None:
    with (
        serving({"/n": (lambda r: Response(204, b"ignored"), ("POST",))}) as server,
        Client(server.address) as c,
    ):
        r = c.request("POST", "/n", b"x")
        assert r.status == 204
        assert r.header("content-length") is None
        assert c.request("GET", "/healthz").status == 200


def test_route_validation() -> None:
    server = Server("127.0.0.1", 0)
    server.route("/slack/a/events", echo)
    with pytest.raises(ServerSetupError, match="already mounted"):
        server.route("/slack/a/events", echo)
    with pytest.raises(ServerSetupError, match="served by the server"):
        server.route("/healthz", echo, methods=("GET",))
    with pytest.raises(ServerSetupError, match="start with"):
        server.route("metrics", echo)
    with pytest.raises(ServerSetupError, match="may not contain"):
        server.route("/a?b", echo)
    with pytest.raises(ServerSetupError, match="not an HTTP method"):
        server.route("/b", echo, methods=("GE T",))
    with pytest.raises(ServerSetupError, match="at least one"):
        server.route("/c", echo, methods=())
    with pytest.raises(ServerSetupError, match="not callable"):
        server.route("/d", "nope")  # type: ignore[arg-type]
    assert server.mounted() == ["/healthz", "/readyz", "/slack/a/events"]
    server.stop()


def test_limits_validation() -> None:
    with pytest.raises(ServerSetupError, match="max_body_bytes"):
        Limits(max_body_bytes=0)
    with pytest.raises(ServerSetupError, match="header_timeout"):
        Limits(header_timeout=-1)
    with pytest.raises(ServerSetupError, match="max_connections must be an integer"):
        Limits(max_connections=1.5)  # type: ignore[arg-type]
    with pytest.raises(ServerSetupError, match="port"):
        Server("127.0.0.1", 70000)


# --------------------------------------------------------------------------- handler failures


def test_handler_exception_is_500_with_request_id_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(request: Request) -> Response:
        raise RuntimeError("receiver bug")

    caplog.set_level(logging.INFO, logger="statewave_runner")
    with serving({"/x/y/events": (boom, ("POST",))}) as server, Client(server.address) as c:
        r = c.request("POST", "/x/y/events", b"{}")
        assert r.status == 500
        rid = r.header("x-request-id")
        assert rid
        assert r.json() == {"error": "handler_threw", "request_id": rid}
        # Same connection, server still serving.
        assert c.request("GET", "/healthz").status == 200
        assert get(server.address, "/healthz").status == 200
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert rid in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert getattr(errors[0], "request_id", None) == rid


def test_handler_system_exit_is_a_500_not_a_dead_server() -> None:
    def bye(request: Request) -> Response:
        raise SystemExit(3)

    with serving({"/x/y/events": (bye, ("POST",))}) as server, Client(server.address) as c:
        assert c.request("POST", "/x/y/events", b"{}").status == 500
        assert c.request("GET", "/healthz").status == 200


@pytest.mark.parametrize(
    "bad",
    [
        "not a response",
        Response(200, "str body"),  # type: ignore[arg-type]
        Response(200, b"", (("X-Evil", "a\r\nSet-Cookie: x=1"),)),
        Response(200, b"", (("Bad Name", "v"),)),
        Response(42),
    ],
)
def test_unusable_handler_response_is_a_500(bad: object) -> None:
    routes = {"/x/y/events": (lambda r: bad, ("POST",))}
    with serving(routes) as server, Client(server.address) as c:  # type: ignore[arg-type]
        r = c.request("POST", "/x/y/events", b"{}")
        assert r.status == 500
        assert r.json()["error"] == "handler_threw"
        assert b"Set-Cookie" not in r.raw_head
        assert c.request("GET", "/healthz").status == 200


# --------------------------------------------------------------------------- request ids


def test_request_id_is_generated_and_echoed() -> None:
    with serving({"/e": (echo, ("POST",))}) as server, Client(server.address) as c:
        r1 = c.request("POST", "/e", b"1")
        r2 = c.request("POST", "/e", b"2")
        rid1, rid2 = r1.header("x-request-id"), r2.header("x-request-id")
        assert rid1 and rid2 and rid1 != rid2
        assert r1.json()["request_id"] == rid1
        assert get(server.address, "/healthz").header("x-request-id") not in (rid1, rid2)


def test_sane_incoming_request_id_is_honoured_insane_is_replaced() -> None:
    with serving({"/e": (echo, ("POST",))}) as server, Client(server.address) as c:
        r = c.request("POST", "/e", b"1", {"X-Request-Id": "abc-123_DEF.4:5"})
        assert r.header("x-request-id") == "abc-123_DEF.4:5"
        assert r.json()["request_id"] == "abc-123_DEF.4:5"
        for insane in ("a b", "x" * 200, "<script>", "id;rm"):
            r = c.request("POST", "/e", b"1", {"X-Request-Id": insane})
            assert r.header("x-request-id") not in (insane, None, "")
            assert r.json()["request_id"] == r.header("x-request-id")


# --------------------------------------------------------------------------- access log


def test_access_log_one_line_per_request_without_query_or_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="statewave_runner.access")
    with serving({"/gmail/a/events": (echo, ("POST",))}) as server, Client(server.address) as c:
        c.request(
            "POST",
            "/gmail/a/events?token=SECRET-TOKEN",
            b"body-SECRET",
            {"Authorization": "Bearer SECRET-BEARER", "X-Request-Id": "rid-1"},
        )
        c.request("GET", "/healthz")
        c.request("GET", "/nowhere?password=SECRET-PW")
    records = [r for r in caplog.records if r.name == "statewave_runner.access"]
    assert len(records) == 3
    post, health, missing = records
    assert post.levelno == logging.INFO
    assert (post.method, post.path, post.status, post.request_id) == (  # type: ignore[attr-defined]
        "POST",
        "/gmail/a/events",
        200,
        "rid-1",
    )
    assert post.remote == "127.0.0.1"  # type: ignore[attr-defined]
    assert isinstance(post.duration_ms, float) and post.duration_ms >= 0  # type: ignore[attr-defined]
    # Successful probes are DEBUG so they do not drown the log; a 404 is INFO.
    assert health.levelno == logging.DEBUG
    assert (missing.levelno, missing.status) == (logging.INFO, 404)  # type: ignore[attr-defined]
    text = " ".join(r.getMessage() + repr(r.__dict__) for r in records)
    assert "SECRET" not in text
    assert "POST /gmail/a/events 200" in post.getMessage()


def test_access_log_can_be_disabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="statewave_runner.access")
    server = Server("127.0.0.1", 0, access_log=False)
    server.start()
    try:
        assert get(server.address, "/nowhere").status == 404
    finally:
        server.stop()
    assert not [r for r in caplog.records if r.name == "statewave_runner.access"]


def test_on_response_hook_sees_route_status_and_failures() -> None:
    seen: list[tuple[str | None, str, int, bool]] = []

    def boom(request: Request) -> Response:
        raise ValueError("x")

    routes = {"/a/b/events": (echo, ("POST",)), "/a/c/events": (boom, ("POST",))}
    with serving(routes) as server, Client(server.address) as c:
        server.on_response = lambda route, method, status, seconds, threw: seen.append(
            (route, method, status, threw)
        )
        c.request("POST", "/a/b/events", b"x")
        c.request("GET", "/a/b/events")
        c.request("POST", "/a/c/events", b"x")
        c.request("GET", "/healthz")
        c.request("GET", "/zzz")
    assert seen == [
        ("/a/b/events", "POST", 200, False),
        ("/a/b/events", "GET", 405, False),
        ("/a/c/events", "POST", 500, True),
        (None, "GET", 200, False),
        (None, "GET", 404, False),
    ]


# --------------------------------------------------------------------------- protocol


def test_pipelined_requests_are_answered_in_order() -> None:
    with serving({"/e": (echo, ("POST",))}) as server, Client(server.address) as c:
        c.send(
            raw_request("POST", "/e", b"first", {"X-Request-Id": "r1"})
            + raw_request("GET", "/healthz", headers={"X-Request-Id": "r2"})
            + raw_request("POST", "/e", b"third", {"X-Request-Id": "r3"})
            + raw_request("GET", "/nope", headers={"X-Request-Id": "r4"})
        )
        replies = [c.read_reply() for _ in range(4)]
        assert [r.header("x-request-id") for r in replies] == ["r1", "r2", "r3", "r4"]
        assert [r.status for r in replies] == [200, 200, 200, 404]
        assert replies[0].json()["body"] == "first"
        assert replies[2].json()["body"] == "third"


def test_pipelined_requests_after_connection_close_are_not_answered() -> None:
    # More pipelined bytes than one read takes: some are still unread in the
    # kernel when the server closes. Closing over them would send a reset that
    # can destroy the response in flight; the server drains them instead.
    with serving() as server, Client(server.address) as c:
        c.send(
            raw_request("GET", "/healthz", headers={"Connection": "close"})
            + raw_request("GET", "/healthz", headers={"X-Pad": "p" * 1000}) * 300
        )
        r = c.read_reply()
        assert (r.status, r.header("connection")) == (200, "close")
        assert c.buf == b""
        assert c.sock.recv(65536) == b""  # a clean FIN: no ConnectionResetError


def test_request_split_across_many_segments() -> None:
    with serving({"/e": (echo, ("POST",))}) as server, Client(server.address) as c:
        for byte in raw_request("POST", "/e", b"hello world"):
            c.send(bytes([byte]))
        r = c.read_reply()
        assert r.json()["body"] == "hello world"


def test_each_response_leaves_in_one_segment() -> None:
    # With TCP_NODELAY and one send() the whole small response is readable at once.
    with serving() as server, Client(server.address) as c:
        for _ in range(20):
            c.send(raw_request("GET", "/healthz"))
            data = c.sock.recv(65536)
            _, _, body = data.partition(b"\r\n\r\n")
            assert body == b'{"status":"ok"}', data


def test_connection_close_is_honoured() -> None:
    with serving() as server, Client(server.address) as c:
        r = c.request("GET", "/healthz", headers={"Connection": "close"})
        assert r.status == 200
        assert r.header("connection") == "close"
        assert c.at_eof()


def test_keep_alive_is_the_http11_default() -> None:
    with serving() as server, Client(server.address) as c:
        for _ in range(5):
            r = c.request("GET", "/healthz")
            assert r.status == 200
            assert r.header("connection") is None


def test_http10_closes_by_default() -> None:
    with serving() as server, Client(server.address) as c:
        c.send(b"GET /healthz HTTP/1.0\r\n\r\n")  # no Host needed in 1.0
        r = c.read_reply()
        assert (r.status, r.json()) == (200, {"status": "ok"})
        assert r.header("connection") == "close"
        assert c.at_eof()


def test_http10_keep_alive_on_request() -> None:
    with serving() as server, Client(server.address) as c:
        for _ in range(3):
            r = c.request(
                "GET", "/healthz", headers={"Connection": "keep-alive"}, version="HTTP/1.0"
            )
            assert r.status == 200
            assert r.header("connection") == "keep-alive"
        r = c.request("GET", "/healthz", version="HTTP/1.0")
        assert r.header("connection") == "close"
        assert c.at_eof()


def test_bare_lf_request_is_understood() -> None:
    with serving() as server, Client(server.address) as c:
        c.send(b"GET /healthz HTTP/1.1\nHost: x\n\n")
        assert c.read_reply().status == 200


def test_chunked_request_body_is_decoded() -> None:
    with serving({"/e": (echo, ("POST",))}) as server, Client(server.address) as c:
        c.send(
            b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        assert c.read_reply().json()["body"] == "hello world"
        # Framing stays intact after a chunked body.
        assert c.request("GET", "/healthz").status == 200


def test_expect_100_continue() -> None:
    with serving({"/e": (echo, ("POST",))}) as server, Client(server.address) as c:
        c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = c.read_reply()
        assert interim.status == 100
        c.send(b"hello")
        assert c.read_reply().json()["body"] == "hello"


def test_http_client_library_interoperates() -> None:
    with serving({"/e": (echo, ("POST",))}) as server:
        conn = HTTPConnection(*server.address, timeout=5)
        try:
            conn.request(
                "POST", "/e", body=b'{"a":1}', headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            assert (resp.status, payload["body"], payload["content_type"]) == (
                200,
                '{"a":1}',
                "application/json",
            )
            conn.request("GET", "/readyz")
            assert conn.getresponse().read() == b'{"status":"ready"}'
        finally:
            conn.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz\r\nHost: x\r\n\r\n", 400),
        (b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
        (b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET ?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET ftp://h/healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /health\x01z HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nName : v\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nA: b\r\n  folded\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nA: b\x00c\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", 400),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400),
        (b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: magic\r\n\r\nx", 417),
    ],
)
def test_malformed_requests_get_4xx_json_and_close(raw: bytes, status: int) -> None:
    with serving({"/e": (echo, ("POST",))}) as server, Client(server.address) as c:
        c.send(raw)
        r = c.read_reply()
        assert r.status == status, r.body
        assert r.header("content-type") == "application/json"
        assert r.header("connection") == "close"
        assert isinstance(r.json(), dict)
        assert c.at_eof()
        # Nothing a client sends stops the server.
        assert get(server.address, "/healthz").status == 200


def test_burst_of_2000_keepalive_requests_from_50_clients() -> None:
    errors: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()
    with serving({"/e": (echo, ("POST",))}) as server:

        def client(i: int) -> None:
            try:
                with Client(server.address) as c:
                    for j in range(40):
                        if j % 2:
                            r = c.request("POST", "/e", f"{i}-{j}".encode())
                            ok = r.status == 200 and r.json()["body"] == f"{i}-{j}"
                        else:
                            r = c.request("GET", "/healthz")
                            ok = r.status == 200
                        with lock:
                            statuses.append(r.status)
                            if not ok:
                                errors.append(f"{i}-{j}: {r.status}")
                    # Still the same connection: keep-alive held for all 40.
                    assert c.request("GET", "/healthz").status == 200
            except Exception as exc:
                with lock:
                    errors.append(f"client {i}: {exc!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert len(statuses) == 2000
    assert set(statuses) == {200}
