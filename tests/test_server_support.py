"""Raw-socket HTTP client helpers and fixtures for the server tests (no tests here).

The tests talk to a real listening server over real sockets, byte for byte, so
they can send what a well-behaved client library never would: slow heads,
pipelined requests, oversized lengths, garbage.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from statewave_runner.httptypes import Headers, Request, Response
from statewave_runner.server import Limits, Server

# Every wait in these tests is bounded by this; nothing asserts a duration.
TIMEOUT = 5.0


@dataclass
class Reply:
    status: int
    reason: str
    headers: Headers
    body: bytes
    raw_head: bytes = field(repr=False, default=b"")

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One TCP connection speaking HTTP/1.1 by hand."""

    def __init__(self, address: tuple[str, int], timeout: float = TIMEOUT):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        version: str = "HTTP/1.1",
    ) -> Reply:
        self.send(raw_request(method, path, body, headers, version))
        return self.read_reply(head=method == "HEAD")

    def read_reply(self, head: bool = False) -> Reply:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a full response head: {self.buf!r}")
            self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        _, status, reason = lines[0].split(" ", 2)
        headers = Headers(
            (name, value.strip()) for name, _, value in (ln.partition(":") for ln in lines[1:])
        )
        length = 0 if head or int(status) in (204, 304) else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the middle of a response body")
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return Reply(int(status), reason, headers, body, raw)

    def at_eof(self) -> bool:
        """Whether the server closed the connection (blocks up to the socket timeout)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    hdrs = {"Host": "test"}
    if body:
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None)
    return f"{method} {path} {version}\r\n{head}\r\n".encode("latin-1") + body


def get(address: tuple[str, int], path: str, **kw: object) -> Reply:
    with Client(address) as c:
        return c.request("GET", path, **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def serving(
    routes: Mapping[str, tuple[Callable[[Request], Response], tuple[str, ...]]] | None = None,
    *,
    ready: bool = True,
    **limits: float,
) -> Iterator[Server]:
    """A started server on 127.0.0.1:0 with the given routes and limits; stopped afterwards."""
    server = Server("127.0.0.1", 0, limits=Limits(**limits))  # type: ignore[arg-type]
    for path, (handler, methods) in (routes or {}).items():
        server.route(path, handler, methods=methods)
    server.start()
    server.ready = ready
    try:
        yield server
    finally:
        server.stop(timeout=2.0)


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def echo(request: Request) -> Response:
    """A handler that reports what it was given."""
    return Response.json(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode("latin-1"),
            "request_id": request.request_id,
            "remote": request.remote_addr,
            "content_type": request.headers.get("content-type"),
        },
    )
