"""statewave_runner.server lifecycle: start, stop, drain, readiness during stop."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from statewave_runner.errors import RunnerError
from statewave_runner.httptypes import Request, Response
from statewave_runner.server import Limits, Server
from tests.test_server_support import TIMEOUT, Client, get, wait_until


def _refused(address: tuple[str, int]) -> bool:
    """Whether a new connection is refused (a SYN racing the listener's close is reset)."""
    try:
        socket.create_connection(address, timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


def test_start_binds_port_zero_and_reports_the_real_port() -> None:
    server = Server("127.0.0.1", 0)
    server.start()
    try:
        host, port = server.address
        assert host == "127.0.0.1"
        assert port > 0
        assert get((host, port), "/healthz").status == 200
    finally:
        server.stop()


def test_start_and_stop_are_idempotent() -> None:
    server = Server("127.0.0.1", 0)
    server.stop()  # before start: nothing to do
    server = Server("127.0.0.1", 0)
    server.start()
    server.start()
    address = server.address
    assert get(address, "/healthz").status == 200
    server.stop()
    server.stop()
    assert _refused(address)
    with pytest.raises(RunnerError, match="stopped"):
        server.start()


def test_start_and_stop_are_safe_from_many_threads() -> None:
    server = Server("127.0.0.1", 0)
    starters = [threading.Thread(target=server.start) for _ in range(8)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(TIMEOUT)
    assert get(server.address, "/healthz").status == 200
    stoppers = [threading.Thread(target=server.stop) for _ in range(8)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(TIMEOUT)
    assert _refused(server.address)


def test_concurrent_stop_waits_for_the_drain() -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(request: Request) -> Response:
        entered.set()
        release.wait(TIMEOUT)
        return Response(200)

    server = Server("127.0.0.1", 0, limits=Limits(drain_timeout=TIMEOUT))
    server.route("/slow/a/events", slow)
    server.start()

    def call() -> None:
        with Client(server.address) as c:
            c.request("POST", "/slow/a/events", b"x")

    client = threading.Thread(target=call)
    client.start()
    assert entered.wait(TIMEOUT)
    first = threading.Thread(target=server.stop)
    first.start()
    assert wait_until(lambda: _refused(server.address))
    second = threading.Thread(target=server.stop)
    second.start()
    second.join(0.2)
    assert second.is_alive()  # it waits for the first stop's drain ...
    release.set()
    first.join(TIMEOUT)
    second.join(TIMEOUT)
    client.join(TIMEOUT)
    assert not first.is_alive() and not second.is_alive()  # ... and returns with it


def test_port_in_use_is_a_runner_error_naming_the_address() -> None:
    first = Server("127.0.0.1", 0)
    first.start()
    try:
        port = first.address[1]
        second = Server("127.0.0.1", port)
        with pytest.raises(RunnerError, match=f"127.0.0.1:{port}"):
            second.start()
        second.stop()
    finally:
        first.stop()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = Server("::1", 0)
    try:
        server.start()
    except RunnerError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    try:
        assert get(server.address, "/healthz").status == 200
    finally:
        server.stop()


def test_stop_turns_readiness_off() -> None:
    server = Server("127.0.0.1", 0)
    server.start()
    server.ready = True
    server.stop()
    assert server.ready is False


def test_drain_completes_an_in_flight_slow_request_and_refuses_new_connections() -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow(request: Request) -> Response:
        entered.set()
        release.wait(TIMEOUT)
        return Response.json(200, {"done": True})

    server = Server("127.0.0.1", 0, limits=Limits(drain_timeout=TIMEOUT))
    server.route("/slow/one/events", slow)
    server.start()
    server.ready = True
    address = server.address

    idle = Client(address)
    assert idle.request("GET", "/healthz").status == 200  # an idle keep-alive connection

    result: dict[str, object] = {}

    def in_flight() -> None:
        with Client(address) as c:
            r = c.request("POST", "/slow/one/events", b"{}")
            result["status"] = r.status
            result["connection"] = r.header("connection")
            result["body"] = r.json()
            result["eof"] = c.at_eof()

    client = threading.Thread(target=in_flight)
    client.start()
    assert entered.wait(TIMEOUT)

    stopper = threading.Thread(target=server.stop)
    stopper.start()
    try:
        # New connections are refused while the slow request drains ...
        assert wait_until(lambda: _refused(address))
        assert server.ready is False
        # ... the idle keep-alive connection is closed ...
        assert idle.at_eof()
        # ... and stop() is still waiting for the in-flight request.
        assert stopper.is_alive()
    finally:
        release.set()
        idle.close()
    stopper.join(TIMEOUT)
    client.join(TIMEOUT)
    assert not stopper.is_alive()
    assert result == {
        "status": 200,
        "connection": "close",
        "body": {"done": True},
        "eof": True,
    }


def test_drain_is_bounded_by_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(request: Request) -> Response:
        entered.set()
        release.wait(TIMEOUT * 2)
        return Response(200)

    server = Server("127.0.0.1", 0)
    server.route("/stuck/a/events", stuck)
    server.start()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            with Client(server.address) as c:
                c.request("POST", "/stuck/a/events", b"x")
        except BaseException as exc:
            outcome.append(exc)

    client = threading.Thread(target=call)
    client.start()
    try:
        assert entered.wait(TIMEOUT)
        caplog.set_level(logging.WARNING, logger="statewave_runner.server")
        server.stop(timeout=0.2)  # returns although the handler is still running
        assert any("still busy" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        client.join(TIMEOUT)


def test_stop_with_partial_request_on_the_wire_lets_it_finish() -> None:
    # A request whose head is half-sent when stop() begins is not idle: it gets
    # its answer (with Connection: close) if it completes within the drain.
    server = Server("127.0.0.1", 0, limits=Limits(drain_timeout=TIMEOUT))
    server.start()
    address = server.address
    with Client(address) as c:
        c.send(b"GET /healthz HTTP/1.1\r\n")
        assert wait_until(lambda: server.in_flight == 1)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        assert wait_until(lambda: _refused(address))  # stop() is under way
        c.send(b"Host: t\r\n\r\n")
        r = c.read_reply()
        assert (r.status, r.header("connection")) == (200, "close")
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()


def test_serve_forever_and_shutdown_map_onto_start_and_stop() -> None:
    server = Server("127.0.0.1", 0)
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    assert wait_until(lambda: server.active_connections == 0 and server.address[1] != 0)
    assert get(server.address, "/healthz").status == 200
    server.shutdown()
    runner.join(TIMEOUT)
    assert not runner.is_alive()


def test_daemon_threads_do_not_block_interpreter_exit(tmp_path: object) -> None:
    # A process with an open idle keep-alive connection exits promptly.
    code = textwrap.dedent(
        """
        import socket
        from statewave_runner.server import Server
        s = Server("127.0.0.1", 0)
        s.start()
        c = socket.create_connection(s.address)
        c.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n")
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT * 2
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
