"""statewave_runner.server limits: body size, slow clients, idle keep-alive, connection cap.

Timeouts are set small (fractions of a second) so the tests are quick; every
wait is bounded by the client socket timeout, and no test asserts a duration.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from statewave_runner.httptypes import Request, Response
from statewave_runner.server import Server
from tests.test_server_support import Client, echo, get, serving, wait_until

# --------------------------------------------------------------------------- body size


def test_413_before_reading_an_oversized_body() -> None:
    received: list[Request] = []

    def handler(request: Request) -> Response:
        received.append(request)
        return Response(200)

    with (
        serving({"/e": (handler, ("POST",))}, max_body_bytes=1000) as server,
        Client(server.address) as c,
    ):
        # Only the head is sent: the 413 cannot have waited for the body.
        c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n")
        r = c.read_reply()
        assert r.status == 413
        assert r.json()["error"] == "payload_too_large"
        assert r.header("connection") == "close"
        assert c.at_eof()
        # Exactly at the limit is fine.
        with Client(server.address) as c:
            assert c.request("POST", "/e", b"x" * 1000).status == 200
        assert len(received) == 1


def test_413_is_readable_even_when_the_client_keeps_sending() -> None:
    # The server half-closes and drains instead of resetting the connection,
    # so a client that pushes its body anyway still reads the 413.
    with (
        serving({"/e": (echo, ("POST",))}, max_body_bytes=1000) as server,
        Client(server.address) as c,
    ):
        c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n")
        with contextlib.suppress(OSError):  # the server may have stopped reading
            c.send(b"y" * 200000)
        r = c.read_reply()
        assert r.status == 413


def test_413_with_expect_100_continue_sends_no_continue() -> None:
    with (
        serving({"/e": (echo, ("POST",))}, max_body_bytes=10) as server,
        Client(server.address) as c,
    ):
        c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        assert c.read_reply().status == 413


def test_chunked_body_over_the_limit_is_413() -> None:
    with (
        serving({"/e": (echo, ("POST",))}, max_body_bytes=10) as server,
        Client(server.address) as c,
    ):
        c.send(
            b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
        )
        assert c.read_reply().status == 413


def test_oversized_head_is_431() -> None:
    with serving(max_header_bytes=1024) as server, Client(server.address) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
        r = c.read_reply()
        assert r.status == 431
        with Client(server.address) as c:
            # A head that never ends is refused once it outgrows the limit too.
            c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            for _ in range(10):
                c.send(b"X-Filler: " + b"b" * 500 + b"\r\n")
            assert c.read_reply().status == 431
        assert get(server.address, "/healthz").status == 200


# --------------------------------------------------------------------------- slow clients


def test_slow_header_client_is_timed_out() -> None:
    with serving(header_timeout=0.5) as server, Client(server.address) as c:
        # Drip the head one byte at a time, never finishing it: each byte
        # arrives well within any per-read timeout, yet the whole head
        # must arrive within header_timeout.
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"z" * 200:
            try:
                c.send(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.02)
            if server.active_connections == 0:
                closed = True
                break
        assert closed, "the server kept a slow header client past header_timeout"
        # It answered 408 before closing, or reset the connection.
        try:
            data = c.sock.recv(65536)
        except OSError:
            data = b""
        assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
        # Other clients are served meanwhile and afterwards.
        assert get(server.address, "/healthz").status == 200


def test_silent_new_connection_is_closed_after_header_timeout() -> None:
    with serving(header_timeout=0.3) as server, Client(server.address) as c:
        assert c.at_eof()  # closed by the server, not by our 5 s socket timeout
        assert wait_until(lambda: server.active_connections == 0)


def test_slow_body_is_timed_out() -> None:
    with (
        serving({"/e": (echo, ("POST",))}, body_timeout=0.3) as server,
        Client(server.address) as c,
    ):
        c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-part")
        r = c.read_reply()
        assert r.status == 408
        assert c.at_eof()


def test_idle_keepalive_connection_is_closed_after_keepalive_timeout() -> None:
    with serving(keepalive_timeout=0.3, header_timeout=5.0) as server, Client(server.address) as c:
        assert c.request("GET", "/healthz").status == 200
        assert c.at_eof()  # server closed the idle connection
        assert wait_until(lambda: server.active_connections == 0)


def test_keepalive_timeout_does_not_cut_an_active_connection() -> None:
    with serving(keepalive_timeout=0.5) as server, Client(server.address) as c:
        for _ in range(10):
            assert c.request("GET", "/healthz").status == 200
            time.sleep(0.1)


# --------------------------------------------------------------------------- connection cap


def test_connection_cap_is_answered_503_with_retry_after() -> None:
    with serving(max_connections=2) as server:
        a, b = Client(server.address), Client(server.address)
        try:
            assert a.request("GET", "/healthz").status == 200
            # Both are in the middle of a request, so neither can make room.
            for c in (a, b):
                c.send(b"GET /healthz HTTP/1.1\r\n")
            assert wait_until(lambda: server.in_flight == 2)
            with Client(server.address) as c:
                c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                r = c.read_reply()
                assert r.status == 503
                assert r.header("retry-after") == "1"
                assert r.header("connection") == "close"
                assert r.json() == {"error": "too_many_connections"}
                assert c.at_eof()
            assert server.rejected_connections == 1
            # The admitted connections are unaffected.
            for c in (a, b):
                c.send(b"Host: t\r\n\r\n")
                assert c.read_reply().status == 200
        finally:
            a.close()
        # Once one leaves, a new connection is served again.
        assert wait_until(lambda: server.active_connections < 2)
        try:
            assert get(server.address, "/healthz").status == 200
        finally:
            b.close()


def test_at_the_cap_a_long_idle_keepalive_connection_makes_room() -> None:
    with serving(max_connections=2, keepalive_timeout=30.0) as server:
        idle, busy = Client(server.address), Client(server.address)
        try:
            assert idle.request("GET", "/healthz").status == 200
            time.sleep(1.2)  # idle longer than the eviction threshold (1 s)
            assert busy.request("GET", "/healthz").status == 200  # idle for a moment only
            newcomer = get(server.address, "/healthz")
            assert newcomer.status == 200
            assert server.evicted_connections == 1
            assert server.rejected_connections == 0
            assert idle.at_eof()  # the long-idle one was closed ...
            assert busy.request("GET", "/healthz").status == 200  # ... the other kept
        finally:
            idle.close()
            busy.close()


def test_connection_cap_bounds_threads_under_a_flood() -> None:
    with serving(max_connections=5) as server:
        held = [Client(server.address) for _ in range(5)]
        try:
            for c in held:
                assert c.request("GET", "/healthz").status == 200
                c.send(b"GET /healthz HTTP/1.1\r\n")  # busy: not evictable
            assert wait_until(lambda: server.in_flight == 5)
            threads_before = threading.active_count()
            flood = []
            for _ in range(100):
                s = socket.create_connection(server.address, timeout=5)
                flood.append(s)
            statuses = set()
            for s in flood:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                statuses.add(data.split(b" ", 2)[1] if data else b"closed")
                s.close()
            assert statuses == {b"503"}
            assert server.active_connections == 5
            # No thread per rejected connection (one linger thread at most).
            assert threading.active_count() <= threads_before + 1
        finally:
            for c in held:
                c.close()


def test_many_concurrent_slow_clients_do_not_block_a_fast_one() -> None:
    with serving(header_timeout=2.0) as server:
        slow = [Client(server.address) for _ in range(30)]
        try:
            for c in slow:
                c.send(b"GET /healthz HTTP/1.1\r\n")  # and then nothing
            assert get(server.address, "/healthz").status == 200
        finally:
            for c in slow:
                c.close()


def test_body_reaches_the_handler_intact_at_the_limit() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    got: list[bytes] = []

    def handler(request: Request) -> Response:
        got.append(request.body)
        return Response(200)

    with (
        serving({"/e": (handler, ("POST",))}, max_body_bytes=len(payload)) as server,
        Client(server.address) as c,
    ):
        assert c.request("POST", "/e", payload).status == 200
    assert got == [payload]


def test_server_survives_clients_that_reset() -> None:
    with serving({"/e": (echo, ("POST",))}) as server:
        for _ in range(20):
            s = socket.create_connection(server.address)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            s.close()  # RST mid-body
        assert get(server.address, "/healthz").status == 200
        assert wait_until(lambda: server.active_connections == 0)


def test_default_limits_are_operator_sane() -> None:
    server = Server("127.0.0.1", 0)
    limits = server.limits
    assert limits.max_body_bytes == 1024 * 1024
    assert limits.header_timeout == 10.0
    assert limits.keepalive_timeout == 75.0
    assert limits.max_connections == 1024
    assert server.request_queue_size >= 1024
    assert server.daemon_threads
    server.stop()
