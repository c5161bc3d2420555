"""The runner's HTTP server: health, readiness, metrics and push receivers on one port.

A :class:`http.server.ThreadingHTTPServer` subclass whose connections are
served by a lean hand-written HTTP/1.1 loop instead of
``BaseHTTPRequestHandler`` (which parses through ``email.parser`` and writes
headers and body separately). What the loop guarantees:

- every response leaves in one ``send`` (status line, headers and body), with
  ``Content-Length``, ``Date`` and ``X-Request-Id``; ``TCP_NODELAY`` is set;
- keep-alive per HTTP/1.1 (``Connection: close`` honoured, HTTP/1.0 closes
  unless it asks for ``keep-alive``), pipelined requests answered in order;
- limits (:class:`Limits`): a slow or idle client never pins a thread for
  longer than a timeout, an oversized body is refused with 413 before it is
  read, connections beyond the cap get 503 + ``Retry-After`` from the accept
  thread instead of a new thread each;
- a handler exception is a 500 with the request id, logged once; nothing a
  client sends can stop the server.

Routing is on the path only (the query is ignored), exact match, in this
order: ``/healthz``, ``/readyz``, then routes in registration order.
Connections run on a pool of daemon threads that grows up to
``max_connections`` and shrinks when idle.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import queue
import re
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from email.utils import formatdate
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from socketserver import BaseRequestHandler, TCPServer
from typing import Any

from .errors import RunnerError, StatewaveRunnerError
from .httptypes import Headers, Request, Response

__all__ = ["HEALTH_PATHS", "Handler", "Limits", "Server", "ServerSetupError"]

Handler = Callable[[Request], Response]
"""What a route runs: a push receiver, the metrics endpoint, anything."""

HEALTH_PATHS = ("/healthz", "/readyz")

ACCESS_LOGGER = "statewave_runner.access"

NO_RECEIVERS = "(no push receivers configured)"  # the Node runner's words

# How long a connection we are closing on purpose (after a 4xx/503 that left
# request bytes unread) is drained before the close, so the client reads our
# answer instead of a TCP reset.
_LINGER_SECONDS = 1.0
_MAX_LINGERING = 256
_WORKER_IDLE_SECONDS = 60.0
# At max_connections, a connection idle at least this long is closed to admit
# a new one; younger idle connections are likely about to send their request.
_EVICT_IDLE_SECONDS = 1.0
_RECV_SIZE = 65536


class ServerSetupError(StatewaveRunnerError, ValueError):
    """The server was set up wrongly: an invalid limit, a route that clashes or is malformed."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of the HTTP server. The defaults are what an operator would expect.

    All durations are in seconds. The ``[runner]`` config keys of the same
    names map onto these fields (see docs/http.md).
    """

    max_body_bytes: int = 1 * 1024 * 1024
    """A larger request body is answered 413 before it is read."""
    header_timeout: float = 10.0
    """The whole request line and headers must arrive within this (408, then close)."""
    body_timeout: float = 30.0
    """The whole body must arrive within this once the headers are in; also bounds a
    response write to a client that does not read."""
    keepalive_timeout: float = 75.0
    """An idle keep-alive connection is closed after this."""
    max_connections: int = 1024
    """Open connections beyond this are answered 503 with ``Retry-After`` and closed."""
    max_header_bytes: int = 64 * 1024
    """Request line plus headers larger than this are answered 431."""
    drain_timeout: float = 10.0
    """``stop()`` waits at most this long for in-flight requests (unless given a timeout)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ServerSetupError(f"Limits.{f.name} must be a positive number, got {value!r}")
        for name in ("max_body_bytes", "max_connections", "max_header_bytes"):
            if not isinstance(getattr(self, name), int):
                raise ServerSetupError(f"Limits.{name} must be an integer")


# --------------------------------------------------------------------------- wire helpers

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[int, str] = {
    code: f"HTTP/1.1 {code} {phrase}\r\n" for code, phrase in _REASONS.items()
}
# Headers the server owns; a handler's values for them are dropped.
_RESERVED = frozenset({"content-length", "transfer-encoding", "connection", "date", "keep-alive"})

_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Control characters other than HTAB are not allowed anywhere in a request head;
# a CR must be part of a CRLF.
_BAD_HEAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


class _HTTPError(Exception):
    """A request we answer with an error status and then close the connection."""

    def __init__(self, status: int, error: str, detail: str = "", *, linger: bool = True):
        self.status = status
        self.error = error
        self.detail = detail
        # Unread request bytes may follow: drain before closing (see _LINGER_SECONDS).
        self.linger = linger
        # What the access log shows, once the request line was understood.
        self.method = "-"
        self.path = "-"
        super().__init__(f"{status} {error}: {detail}")

    def response(self, extra: dict[str, Any] | None = None) -> Response:
        body: dict[str, Any] = {"error": self.error}
        if self.detail:
            body["detail"] = self.detail
        if extra:
            body.update(extra)
        return Response.json(self.status, body)


class _Closed(Exception):
    """The peer went away, or a timeout struck with nothing worth answering."""


def _json(status: int, obj: Any, *headers: tuple[str, str]) -> Response:
    return Response.json(status, obj, headers)


_HEALTH_OK = _json(200, {"status": "ok"})
_READY = _json(200, {"status": "ready"})
_NOT_READY = _json(503, {"status": "starting_or_shutting_down"})
_HEALTH_405 = _json(405, {"error": "method_not_allowed"}, ("Allow", "GET, HEAD"))
_TOO_MANY_BODY = b'{"error":"too_many_connections"}'
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
    % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _DateCache:
    """The ``Date`` header value, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._value = formatdate(now, usegmt=True)
            self._second = second
        return self._value


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class _Route:
    path: str
    handler: Handler
    methods: frozenset[str]
    allow: str
    receiver: bool


_RECEIVER_PATH = re.compile(r"/[^/]+/[^/]+/events")


def _not_found_hint(paths: Iterable[str], receivers: bool) -> str:
    hint = "mounted: " + ", ".join(paths)
    return hint if receivers else f"{hint} {NO_RECEIVERS}"


# --------------------------------------------------------------------------- threads


class _WorkerPool:
    """Daemon threads that serve connections; grows on demand, idle threads exit.

    Unlike ``ThreadingMixIn`` (a new thread per connection) a closed connection
    hands its thread to the next one, and unlike ``ThreadPoolExecutor`` the
    threads are daemons that do not block interpreter exit while a keep-alive
    connection idles.
    """

    def __init__(self, name: str, idle_seconds: float = _WORKER_IDLE_SECONDS):
        self._name = name
        self._idle_seconds = idle_seconds
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._seq = itertools.count(1)

    @property
    def threads(self) -> int:
        """Worker threads alive now (busy or idle)."""
        return self._threads

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on an idle worker, or on a new one. Raises RuntimeError if none can start."""
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
            self._threads += 1
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{next(self._seq)}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._threads -= 1
            raise
        # One job per new thread keeps waiting workers >= queued jobs; which
        # worker takes which job does not matter.
        self._jobs.put(job)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            try:
                job = jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    # A job put while we timed out was promised to an idle worker:
                    # stay and take it.
                    if not jobs.empty():
                        continue
                    self._idle -= 1
                    self._threads -= 1
                    return
            # Jobs log their own errors; the thread lives on.
            with contextlib.suppress(Exception):
                job()
            with self._lock:
                self._idle += 1


class _Lingerer:
    """Drains and closes sockets we are done with, without holding a worker thread.

    A socket closed with unread request bytes in its receive buffer sends a TCP
    reset, and the client may then lose the 503/413/400 we just wrote. So such a
    socket is half-closed, then read and discarded until the client closes or
    ``_LINGER_SECONDS`` pass. One thread serves them all; at most
    ``_MAX_LINGERING`` wait, extra ones are closed at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, float] = {}
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._closed = False

    def add(self, sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        with self._lock:
            if self._closed or len(self._pending) >= _MAX_LINGERING:
                sock.close()
                return
            if self._thread is None:
                self._selector = selectors.DefaultSelector()
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._selector.register(self._wake_r, selectors.EVENT_READ)
                self._thread = threading.Thread(
                    target=self._run, name="statewave-http-linger", daemon=True
                )
                self._thread.start()
            self._pending[sock] = time.monotonic() + _LINGER_SECONDS
            selector, wake = self._selector, self._wake_w
        try:
            selector.register(sock, selectors.EVENT_READ)  # type: ignore[union-attr]
            wake.send(b"x")  # type: ignore[union-attr]
        except (OSError, ValueError, KeyError):
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._pending.pop(sock, None)
            selector = self._selector
        if selector is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(sock)
        sock.close()

    def _run(self) -> None:
        selector, wake_r = self._selector, self._wake_r
        if selector is None or wake_r is None:
            return
        while not self._closed:
            with self._lock:
                deadlines = list(self._pending.values())
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            try:
                events = selector.select(timeout)
            except (OSError, ValueError):
                return
            for key, _ in events:
                sock = key.fileobj
                if sock is wake_r:
                    with contextlib.suppress(OSError):
                        wake_r.recv(4096)
                    continue
                if not isinstance(sock, socket.socket):
                    continue
                try:
                    data = sock.recv(_RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(sock)
            now = time.monotonic()
            with self._lock:
                expired = [s for s, d in self._pending.items() if d <= now]
            for sock in expired:
                self._drop(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._pending)
            wake = self._wake_w
        for sock in pending:
            self._drop(sock)
        if wake is not None:
            with contextlib.suppress(OSError):
                wake.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        if self._selector is not None:
            self._selector.close()


def _timeval(seconds: float) -> bytes:
    sec = int(seconds)
    usec = int((seconds - sec) * 1_000_000)
    # A zero timeval means "block forever": never ask for less than 1 us.
    return struct.pack("ll", sec, usec if sec or usec else 1)


class _Conn:
    """One client connection: its socket, its read timeout, and whether it idles.

    Timeouts are kernel socket options (``SO_RCVTIMEO``/``SO_SNDTIMEO``) on a
    blocking socket where the platform has them: Python's own socket timeouts
    poll() before every recv/send, which doubles the syscalls and the GIL
    hand-offs on the hot path. A kernel timeout surfaces as BlockingIOError.
    ``stop()`` closes connections whose ``idle`` flag is set.
    """

    __slots__ = ("idle", "idle_since", "kernel", "rcv", "sock")

    def __init__(self, sock: socket.socket, send_timeout: float):
        self.sock = sock
        self.idle = True  # until the first byte of a request arrives
        self.idle_since = time.monotonic()
        self.rcv = -1.0
        self.kernel = _KERNEL_TIMEOUTS
        if self.kernel:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(send_timeout))
            except (OSError, struct.error):
                self.kernel = False

    def recv_timeout(self, seconds: float) -> None:
        """Bound the next recv() calls to ``seconds``."""
        self.rcv = seconds
        if self.kernel:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        else:
            self.sock.settimeout(seconds)

    def send(self, data: bytes, timeout: float) -> None:
        """sendall() bounded by ``timeout`` (set once per connection in kernel mode)."""
        if not self.kernel:
            self.sock.settimeout(timeout)
            self.rcv = -1.0
        self.sock.sendall(data)


# struct timeval is two native longs on 64-bit Linux; elsewhere use Python's timeouts.
_KERNEL_TIMEOUTS = (
    sys.platform.startswith("linux")
    and hasattr(socket, "SO_RCVTIMEO")
    and struct.calcsize("ll") == 16
)


class _ConnectionHandler(BaseRequestHandler):
    """socketserver's per-connection object; the loop itself lives on the server."""

    server: Server

    def handle(self) -> None:
        self.server._serve_connection(self.request, self.client_address)


# --------------------------------------------------------------------------- the server

_NEW, _RUNNING, _STOPPED = "new", "running", "stopped"


class Server(ThreadingHTTPServer):
    """The runner's HTTP server. Bind with :meth:`start`, drain with :meth:`stop`.

    ``/healthz`` answers 200 ``{"status":"ok"}`` while the process serves;
    ``/readyz`` answers 200 ``{"status":"ready"}`` while :attr:`ready` is true
    and 503 ``{"status":"starting_or_shutting_down"}`` otherwise. Everything
    else is routed by :meth:`route`.

    ``on_response``, if set, is called after every response with the matched
    route path (``None`` for health checks, 404s and protocol errors), the
    method, the status, the duration in seconds and whether the handler raised;
    the runner uses it for metrics. It must be quick and must not raise.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limits: Limits = Limits(),
        log: logging.Logger | None = None,
        access_log: bool = True,
    ):
        if not isinstance(limits, Limits):
            raise ServerSetupError(f"limits must be a Limits, got {type(limits).__name__}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ServerSetupError(f"port must be an integer in 0..65535, got {port!r}")
        self.limits = limits
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _ConnectionHandler, bind_and_activate=False)
        self._host = host
        self._log = log or logging.getLogger("statewave_runner.server")
        self._access = logging.getLogger(ACCESS_LOGGER) if access_log else None
        self.on_response: Callable[[str | None, str, int, float, bool], None] | None = None

        self._ready = False
        self._state = _NEW
        self._life_lock = threading.Lock()
        self._closing = threading.Event()  # the listener is closing: the accept loop exits
        self._stopped = threading.Event()  # stop() has finished
        self._draining = False  # finish in-flight requests, then close every connection
        self._accept_thread: threading.Thread | None = None
        self._pool = _WorkerPool("statewave-http")
        self._lingerer = _Lingerer()

        self._conn_lock = threading.Lock()
        self._drained = threading.Condition(self._conn_lock)
        self._active = 0
        self._conns: set[_Conn] = set()
        self._rejected = 0
        self._evicted = 0
        self._last_reject_log = 0.0
        self._rejected_since_log = 0

        self._routes: dict[str, _Route] = {}
        self._route_lock = threading.Lock()
        self._not_found = self._make_not_found()

        self._date = _DateCache()
        self._rid_prefix = os.urandom(4).hex()
        self._rid_seq = itertools.count(1)

    # ------------------------------------------------------------------ public API

    @property
    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200. The runner sets it; :meth:`stop` clears it."""
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = bool(value)

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked for)."""
        host, port = self.server_address[:2]
        return str(host), int(port)

    @property
    def active_connections(self) -> int:
        """Connections being served now."""
        return self._active

    @property
    def in_flight(self) -> int:
        """Requests being read, handled or answered now (connections not idle)."""
        with self._conn_lock:
            return sum(1 for conn in self._conns if not conn.idle)

    @property
    def rejected_connections(self) -> int:
        """Connections answered 503 because ``max_connections`` were open, since start."""
        return self._rejected

    @property
    def evicted_connections(self) -> int:
        """Idle connections closed to make room for new ones at ``max_connections``."""
        return self._evicted

    def route(
        self,
        path: str,
        handler: Handler,
        *,
        methods: tuple[str, ...] = ("POST",),
        receiver: bool | None = None,
    ) -> None:
        """Mount ``handler`` at exactly ``path``.

        A method not in ``methods`` is answered 405 ``{"error":"method_not_allowed"}``
        with ``Allow`` before the handler runs; HEAD is allowed wherever GET is
        (the handler sees HEAD and the body is dropped). ``receiver`` says
        whether the route counts as a push receiver in the 404 hint; by default
        a path shaped ``/<kind>/<name>/events`` does. Safe to call while serving.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise ServerSetupError(f"route path must start with '/', got {path!r}")
        if any(c in path for c in "?# \t\r\n") or not path.isprintable():
            raise ServerSetupError(f"route path {path!r} may not contain '?', '#' or whitespace")
        if path in HEALTH_PATHS:
            raise ServerSetupError(f"{path} is served by the server itself and cannot be routed")
        if not callable(handler):
            raise ServerSetupError(f"handler for {path} is not callable")
        if not methods:
            raise ServerSetupError(f"route {path} needs at least one method")
        for method in methods:
            if not isinstance(method, str) or not _TOKEN.fullmatch(method):
                raise ServerSetupError(f"route {path}: {method!r} is not an HTTP method")
        allowed = list(dict.fromkeys(methods))
        if "GET" in allowed and "HEAD" not in allowed:
            allowed.append("HEAD")
        is_receiver = bool(_RECEIVER_PATH.fullmatch(path)) if receiver is None else receiver
        entry = _Route(path, handler, frozenset(allowed), ", ".join(allowed), is_receiver)
        with self._route_lock:
            if path in self._routes:
                raise ServerSetupError(f"route {path} is already mounted")
            routes = dict(self._routes)
            routes[path] = entry
            # Publish both at once: readers take self._routes without a lock.
            self._not_found = self._make_not_found(routes)
            self._routes = routes

    def mounted(self) -> list[str]:
        """Every path served, in routing order (health endpoints first)."""
        return [*HEALTH_PATHS, *self._routes]

    def start(self) -> None:
        """Bind and start serving; returns once the socket listens. Idempotent.

        Raises :class:`~statewave_runner.errors.RunnerError` when the address
        cannot be bound, or when the server was already stopped (a stopped
        server cannot be restarted; make a new one).
        """
        with self._life_lock:
            if self._state == _RUNNING:
                return
            if self._state == _STOPPED:
                raise RunnerError(
                    "this HTTP server was stopped; create a new Server to serve again"
                )
            try:
                self.server_bind()
                self.server_activate()
            except OSError as exc:
                self._state = _STOPPED
                self.socket.close()
                self._stopped.set()
                reason = exc.strerror or str(exc)
                raise RunnerError(
                    f"cannot listen on {self._host}:{self.server_address[1]}: {reason}"
                ) from exc
            self._state = _RUNNING
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name="statewave-http-accept", daemon=True
            )
            self._accept_thread.start()
        host, port = self.address
        self._log.debug("HTTP server listening on %s:%d", host, port)

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish, close idle connections. Idempotent.

        Readiness turns false first. New connections are refused at once; a
        request already being read or handled completes and is answered with
        ``Connection: close``. After ``timeout`` seconds (default
        ``limits.drain_timeout``) the remaining connections are shut down
        and stop() returns even if a handler is still running.
        """
        budget = self.limits.drain_timeout if timeout is None else max(0.0, timeout)
        with self._life_lock:
            state = self._state
            self._state = _STOPPED
            if state == _NEW:
                self.socket.close()
                self._stopped.set()
        if state != _RUNNING:
            # Never started, or another caller is draining: return when it is done.
            self._stopped.wait(budget + 3.0)
            return
        try:
            self._drain(budget)
        finally:
            self._stopped.set()

    def _drain(self, budget: float) -> None:
        self._ready = False
        deadline = time.monotonic() + budget

        # 1. Every response from now on says Connection: close; stop accepting.
        with self._conn_lock:
            self._draining = True
        self._closing.set()
        _shutdown(self.socket, socket.SHUT_RDWR)  # wakes accept() on Linux
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=1.0)
            if self._accept_thread.is_alive():
                self._wake_accept()
                self._accept_thread.join(timeout=1.0)
        self.server_close()

        # 2. Idle keep-alive connections close now; busy ones after their response.
        with self._conn_lock:
            for conn in self._conns:
                if conn.idle:
                    _shutdown(conn.sock, socket.SHUT_RD)
            # 3. Wait for in-flight requests.
            while self._active > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._drained.wait(left)
            stuck = list(self._conns)
            remaining = self._active
        if remaining:
            self._log.warning(
                "HTTP server stopped with %d connection(s) still busy after %.1fs drain",
                remaining,
                budget,
            )
            for conn in stuck:
                _shutdown(conn.sock, socket.SHUT_RDWR)
        self._lingerer.close()
        self._log.debug("HTTP server stopped")

    # socketserver's own lifecycle names, mapped onto ours so they cannot hang.

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start (if needed) and block until :meth:`stop` is called from another thread."""
        self.start()
        thread = self._accept_thread
        while thread is not None and thread.is_alive():
            thread.join(poll_interval)

    def shutdown(self) -> None:
        """Same as :meth:`stop` with the default drain timeout."""
        self.stop()

    # ------------------------------------------------------------------ socketserver hooks

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(): a DNS lookup at start.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve a new connection on a worker thread, or answer 503 when at the cap."""
        sock: socket.socket = request
        with self._conn_lock:
            admit = self._active < self.limits.max_connections and not self._draining
            if not admit and not self._draining:
                # At the cap, a connection idling for a while is worth less than
                # a new client: close it (its thread sees EOF and leaves) and
                # admit the newcomer. Only when none idles is the answer 503.
                victim = self._idle_victim()
                if victim is not None:
                    victim.idle = False  # never picked twice
                    _shutdown(victim.sock, socket.SHUT_RD)
                    self._evicted += 1
                    admit = True
            if admit:
                self._active += 1
        if not admit:
            self._reject(sock)
            return
        try:
            self._pool.submit(lambda: self._run_connection(sock, client_address))
        except RuntimeError:  # the OS would not give us another thread
            self._connection_done()
            self._reject(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self._log.exception("unexpected error serving a connection from %s", client_address)

    # ------------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        listener = self.socket
        closing = self._closing
        last_warning = -10.0
        while not closing.is_set():
            try:
                sock, addr = listener.accept()
            except OSError as exc:
                if closing.is_set():
                    break
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: back off instead of spinning.
                    now = time.monotonic()
                    if now - last_warning >= 10.0:
                        self._log.warning("accept() failed: %s; backing off", exc.strerror)
                        last_warning = now
                    time.sleep(0.05)
                continue
            if closing.is_set():
                sock.close()
                break
            self.process_request(sock, addr)

    def _wake_accept(self) -> None:
        # Where shutdown() does not interrupt accept(), a connection does.
        host, port = self.address
        if host in ("0.0.0.0", "::", ""):
            host = "::1" if self.address_family == socket.AF_INET6 else "127.0.0.1"
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=0.5).close()

    def _idle_victim(self) -> _Conn | None:
        """The connection idle the longest, if idle for at least _EVICT_IDLE_SECONDS."""
        oldest = time.monotonic() - _EVICT_IDLE_SECONDS
        victim = None
        for conn in self._conns:
            if conn.idle and conn.idle_since <= oldest:
                victim, oldest = conn, conn.idle_since
        return victim

    def _reject(self, sock: socket.socket) -> None:
        self._rejected += 1
        try:
            sock.setblocking(False)
            sock.send(_TOO_MANY)
        except OSError:
            sock.close()
        else:
            self._lingerer.add(sock)
        now = time.monotonic()
        self._rejected_since_log += 1
        if now - self._last_reject_log >= 10.0:
            self._log.warning(
                "connection limit reached (max_connections=%d): answered %d connection(s) 503",
                self.limits.max_connections,
                self._rejected_since_log,
            )
            self._last_reject_log = now
            self._rejected_since_log = 0

    def _run_connection(self, sock: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(sock, client_address)
        except Exception:
            self.handle_error(sock, client_address)
            sock.close()
        finally:
            self._connection_done()

    def _connection_done(self) -> None:
        with self._conn_lock:
            self._active -= 1
            if self._active <= 0:
                self._drained.notify_all()

    # ------------------------------------------------------------------ one connection

    def _serve_connection(self, sock: socket.socket, client_address: Any) -> None:
        """Serve requests on one connection until it closes, times out or errs."""
        conn = _Conn(sock, self.limits.body_timeout)
        with self._conn_lock:
            self._conns.add(conn)
        linger = False
        try:
            linger = self._connection_loop(conn, str(client_address[0]))
        except Exception:
            self._log.exception("unexpected error on a connection; closing it")
        finally:
            with self._conn_lock:
                self._conns.discard(conn)
            if linger:
                self._lingerer.add(sock)
            else:
                sock.close()

    def _connection_loop(self, conn: _Conn, remote: str) -> bool:
        """The request loop. Returns True when the socket should linger before close."""
        sock = conn.sock
        limits = self.limits
        keepalive = limits.keepalive_timeout
        send_timeout = limits.body_timeout
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            return False
        accepted = time.monotonic()
        buf = b""
        first = True
        while True:
            # ---- wait for a request: an idle connection is what stop() may close
            if not buf:
                conn.idle_since = time.monotonic()
                conn.idle = True
                if self._draining:
                    return False
                if first:
                    want = limits.header_timeout - (time.monotonic() - accepted)
                    if want <= 0:
                        return False
                    conn.recv_timeout(want)
                elif conn.rcv != keepalive:
                    conn.recv_timeout(keepalive)
                try:
                    buf = sock.recv(_RECV_SIZE)
                except OSError:  # timeout, reset, shut down by stop()
                    return False
                conn.idle = False
                if not buf:
                    return False
            started = time.perf_counter()
            if first:
                head_deadline = accepted + limits.header_timeout
                first = False
            else:
                head_deadline = time.monotonic() + limits.header_timeout
            method = path = "-"
            try:
                end = buf.find(b"\r\n\r\n")
                if end >= 0 and end + 4 <= limits.max_header_bytes:
                    head_len = end + 4
                else:
                    buf, head_len = self._read_head(conn, buf, head_deadline)
                req = self._parse_head(buf, head_len)
                method, path, query, version, headers, length, chunked, conn_hdr, expect, rid_in = (
                    req
                )
                rest = buf[head_len:]
                body = b""
                if length or chunked:
                    body_deadline = time.monotonic() + limits.body_timeout
                    if expect:
                        if expect != "100-continue":
                            raise _HTTPError(417, "expectation_failed")
                        if version >= 11 and len(rest) < (length or 1):
                            conn.send(_CONTINUE, send_timeout)
                    if chunked:
                        body, rest = self._read_chunked(conn, rest, body_deadline)
                    else:
                        body, rest = self._read_body(conn, rest, length, body_deadline)
                buf = rest
            except _HTTPError as exc:
                # The request could not be framed (or read): answer and close.
                if method == "-":
                    method, path = exc.method, exc.path
                rid = self._new_request_id()
                data = self._serialize(exc.response(), rid, close=True, ka_hdr=False, head=False)
                try:
                    conn.send(data, send_timeout)
                except OSError:
                    return False
                self._log_access(method, path, exc.status, started, rid, remote, None, False)
                return exc.linger
            except (_Closed, OSError):
                return False

            # ---- keep-alive decision
            if conn_hdr:
                tokens = conn_hdr.lower()
                wants_close = "close" in tokens
                wants_keep = "keep-alive" in tokens
            else:
                wants_close = wants_keep = False
            if version >= 11:
                close = wants_close
                ka_hdr = False
            else:
                close = wants_close or not wants_keep
                ka_hdr = not close

            sane = rid_in and _SANE_REQUEST_ID.fullmatch(rid_in)
            rid = rid_in if sane else self._new_request_id()

            resp, route_path, threw = self._dispatch(
                method, path, query, headers, body, remote, rid
            )
            close = close or self._draining
            head = method == "HEAD"
            try:
                data = self._serialize(resp, rid, close=close, ka_hdr=ka_hdr, head=head)
            except (TypeError, ValueError, UnicodeError, AttributeError) as exc:
                self._log.error(
                    "handler for %s %s returned an unusable response (%s); request_id=%s",
                    method,
                    path,
                    exc,
                    rid,
                    extra={"request_id": rid},
                )
                threw = True
                resp = _json(500, {"error": "handler_threw", "request_id": rid})
                data = self._serialize(resp, rid, close=close, ka_hdr=ka_hdr, head=head)
            if close:
                # The last response: log before sending it, so a client that
                # reconnects at once waits for us instead of piling up
                # connections (and threads) behind a slow log handler.
                self._log_access(method, path, resp.status, started, rid, remote, route_path, threw)
                with contextlib.suppress(OSError):
                    conn.send(data, send_timeout)
                # Pipelined requests we will not answer: drain them rather than
                # reset the connection under the response just sent.
                return bool(buf) or _unread_input(sock)
            try:
                if conn.kernel:
                    sock.sendall(data)
                else:
                    conn.send(data, send_timeout)
            except OSError:
                self._log_access(method, path, resp.status, started, rid, remote, route_path, threw)
                return False
            self._log_access(method, path, resp.status, started, rid, remote, route_path, threw)

    # ------------------------------------------------------------------ reading

    def _recv(self, conn: _Conn, deadline: float, what: str) -> bytes:
        """One recv bounded by ``deadline``; raises _HTTPError(408) on timeout, _Closed on EOF."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise _HTTPError(408, "request_timeout", f"{what} did not arrive in time")
        conn.recv_timeout(left)
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (TimeoutError, BlockingIOError):
            raise _HTTPError(408, "request_timeout", f"{what} did not arrive in time") from None
        except OSError:
            raise _Closed from None
        if not data:
            raise _Closed
        return data

    def _read_head(self, conn: _Conn, buf: bytes, deadline: float) -> tuple[bytes, int]:
        """Read until the blank line ending the head; returns (buffer, head length)."""
        limit = self.limits.max_header_bytes
        data = bytearray(buf)
        scan = 0
        while True:
            end = data.find(b"\r\n\r\n", scan)
            if end >= 0:
                head_len = end + 4
                break
            end = data.find(b"\n\n", scan)  # bare-LF clients (printf | nc)
            if end >= 0:
                head_len = end + 2
                break
            if len(data) > limit:
                raise _HTTPError(431, "headers_too_large", f"request head exceeds {limit} bytes")
            scan = max(0, len(data) - 3)
            data += self._recv(conn, deadline, "request headers")
        if head_len > limit:
            raise _HTTPError(431, "headers_too_large", f"request head exceeds {limit} bytes")
        return bytes(data), head_len

    def _parse_head(
        self, buf: bytes, head_len: int
    ) -> tuple[str, str, str, int, list[tuple[str, str]], int, bool, str, str, str]:
        """Parse the request line and headers. Raises _HTTPError(400/413/501/505).

        Returns method, path, query, version (10 or 11), headers, body length,
        chunked, Connection header, Expect header, X-Request-Id header.
        """
        text = buf[:head_len].decode("latin-1")
        if _BAD_HEAD_CHARS.search(text):
            raise _HTTPError(400, "bad_request", "control character in request head")
        lines = text.replace("\r\n", "\n").split("\n")
        # Tolerate one empty line before the request line (RFC 9112 section 2.2).
        if not lines[0] and len(lines) > 1:
            del lines[0]
        m = _REQUEST_LINE.fullmatch(lines[0])
        if m is None:
            raise _HTTPError(400, "bad_request", "malformed request line")
        method = m[1]
        path, _, query = m[2].partition("?")
        try:
            if path[:1] != "/":
                path = _origin_path(path)
            if m[3] != "1":
                raise _HTTPError(505, "http_version_not_supported", "only HTTP/1.x is served")
            version = 10 if m[4] == "0" else 11
            return (method, path, query, version, *self._parse_headers(lines, version))
        except _HTTPError as exc:
            exc.method, exc.path = method, path
            raise

    def _parse_headers(
        self, lines: list[str], version: int
    ) -> tuple[list[tuple[str, str]], int, bool, str, str, str]:
        headers: list[tuple[str, str]] = []
        length = -1
        chunked = False
        conn_hdr = expect = rid = ""
        host = False
        for i in range(1, len(lines)):
            line = lines[i]
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                # Also catches obs-fold (a line starting with whitespace) and "Name :".
                raise _HTTPError(400, "bad_request", "malformed header line")
            value = value.strip(" \t")
            headers.append((name, value))
            lname = name.lower()
            if lname == "content-length":
                if not (value.isascii() and value.isdigit()):
                    raise _HTTPError(400, "bad_request", "invalid Content-Length")
                n = int(value)
                if length not in (-1, n):
                    raise _HTTPError(400, "bad_request", "conflicting Content-Length headers")
                length = n
            elif lname == "transfer-encoding":
                if chunked or value.lower() != "chunked":
                    raise _HTTPError(
                        501, "not_implemented", "only Transfer-Encoding: chunked is supported"
                    )
                chunked = True
            elif lname == "host":
                host = True
            elif lname == "connection":
                conn_hdr = f"{conn_hdr},{value}" if conn_hdr else value
            elif lname == "expect":
                expect = value.lower()
            elif lname == "x-request-id":
                rid = value
        if version >= 11 and not host:
            raise _HTTPError(400, "bad_request", "missing Host header")
        if chunked and length >= 0:
            raise _HTTPError(400, "bad_request", "both Content-Length and Transfer-Encoding")
        if length > self.limits.max_body_bytes:
            raise _HTTPError(
                413, "payload_too_large", f"request body exceeds {self.limits.max_body_bytes} bytes"
            )
        return headers, max(length, 0), chunked, conn_hdr, expect, rid

    def _read_body(
        self, conn: _Conn, rest: bytes, length: int, deadline: float
    ) -> tuple[bytes, bytes]:
        if len(rest) >= length:
            return rest[:length], rest[length:]
        data = bytearray(rest)
        while len(data) < length:
            data += self._recv(conn, deadline, "request body")
        return bytes(data[:length]), bytes(data[length:])

    def _read_chunked(self, conn: _Conn, rest: bytes, deadline: float) -> tuple[bytes, bytes]:
        """Decode a chunked body, refusing it (413) once it outgrows max_body_bytes."""
        limit = self.limits.max_body_bytes
        line_limit = 4096
        data = bytearray(rest)
        body = bytearray()
        pos = 0

        def line_end(start: int) -> int:
            while True:
                end = data.find(b"\r\n", start)
                if end >= 0:
                    return end
                if len(data) - start > line_limit:
                    raise _HTTPError(400, "bad_request", "chunk line too long")
                data.extend(self._recv(conn, deadline, "request body"))

        while True:
            end = line_end(pos)
            size_field = bytes(data[pos:end]).split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_field):
                raise _HTTPError(400, "bad_request", "malformed chunk size")
            size = int(size_field, 16)
            pos = end + 2
            if size == 0:
                trailer_bytes = 0
                while True:  # trailers are read and dropped
                    end = line_end(pos)
                    if end == pos:
                        return bytes(body), bytes(data[pos + 2 :])
                    trailer_bytes += end - pos
                    if trailer_bytes > self.limits.max_header_bytes:
                        raise _HTTPError(431, "headers_too_large", "chunked trailers too large")
                    pos = end + 2
            if len(body) + size > limit:
                raise _HTTPError(413, "payload_too_large", f"request body exceeds {limit} bytes")
            while len(data) < pos + size + 2:
                data.extend(self._recv(conn, deadline, "request body"))
            if data[pos + size : pos + size + 2] != b"\r\n":
                raise _HTTPError(400, "bad_request", "malformed chunk")
            body += data[pos : pos + size]
            pos += size + 2
            if pos > _RECV_SIZE:
                del data[:pos]
                pos = 0

    # ------------------------------------------------------------------ dispatch

    def _dispatch(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        remote: str,
        rid: str,
    ) -> tuple[Response, str | None, bool]:
        """Route one request; returns (response, matched route path, handler raised)."""
        if path == "/healthz":
            if method == "GET" or method == "HEAD":
                return _HEALTH_OK, None, False
            return _HEALTH_405, None, False
        if path == "/readyz":
            if method == "GET" or method == "HEAD":
                return (_READY if self._ready else _NOT_READY), None, False
            return _HEALTH_405, None, False
        route = self._routes.get(path)
        if route is None:
            return self._not_found, None, False
        if method not in route.methods:
            return (
                _json(405, {"error": "method_not_allowed"}, ("Allow", route.allow)),
                path,
                False,
            )
        request = Request(
            method=method,
            path=path,
            query=query,
            headers=Headers(headers),
            body=body,
            remote_addr=remote,
            request_id=rid,
        )
        try:
            resp = route.handler(request)
            if not isinstance(resp, Response):
                raise TypeError(f"handler returned {type(resp).__name__}, not Response")
        except BaseException:  # even SystemExit from a receiver must not take the server down
            self._log.exception(
                "handler for %s %s raised; request_id=%s",
                method,
                path,
                rid,
                extra={"request_id": rid, "method": method, "path": path},
            )
            return _json(500, {"error": "handler_threw", "request_id": rid}), path, True
        return resp, path, False

    def _make_not_found(self, routes: dict[str, _Route] | None = None) -> Response:
        routes = self._routes if routes is None else routes
        receivers = any(r.receiver for r in routes.values())
        hint = _not_found_hint([*HEALTH_PATHS, *routes], receivers)
        return _json(404, {"error": "not_found", "hint": hint})

    # ------------------------------------------------------------------ writing

    def _serialize(
        self, resp: Response, rid: str, *, close: bool, ka_hdr: bool, head: bool
    ) -> bytes:
        """Status line, headers and body as one buffer (one send, one segment if it fits)."""
        status = resp.status
        line = _STATUS_LINES.get(status)
        if line is None:
            if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
                raise ValueError(f"invalid status {status!r}")
            line = f"HTTP/1.1 {status} Unknown\r\n"
        body = resp.body
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"response body is {type(body).__name__}, not bytes")
        parts = [line, "Date: ", self._date.get(), "\r\nX-Request-Id: ", rid, "\r\n"]
        no_body = status < 200 or status == 204 or status == 304
        if not no_body:
            parts += ("Content-Length: ", str(len(body)), "\r\n")
        for name, value in resp.headers:
            if name.lower() in _RESERVED or name.lower() == "x-request-id":
                continue
            if not _TOKEN.fullmatch(name) or "\n" in value or "\r" in value:
                raise ValueError(f"invalid response header {name!r}")
            parts += (name, ": ", value, "\r\n")
        if close:
            parts.append("Connection: close\r\n\r\n")
        elif ka_hdr:
            parts.append("Connection: keep-alive\r\n\r\n")
        else:
            parts.append("\r\n")
        data = "".join(parts).encode("latin-1")
        if head or no_body or not body:
            return data
        return data + bytes(body)

    # ------------------------------------------------------------------ bookkeeping

    def _new_request_id(self) -> str:
        return f"{self._rid_prefix}{next(self._rid_seq):08x}"

    def _log_access(
        self,
        method: str,
        path: str,
        status: int,
        started: float,
        rid: str,
        remote: str,
        route_path: str | None,
        threw: bool,
    ) -> None:
        seconds = time.perf_counter() - started
        hook = self.on_response
        if hook is not None:
            try:
                hook(route_path, method, status, seconds, threw)
            except Exception:
                self._log.exception("on_response hook raised")
        access = self._access
        if access is None:
            return
        # Probes every few seconds would drown the log: health checks that
        # succeed are DEBUG, everything else INFO.
        level = logging.DEBUG if path in HEALTH_PATHS and status < 400 else logging.INFO
        if not access.isEnabledFor(level):
            return
        duration_ms = round(seconds * 1000.0, 3)
        # makeRecord + handle is Logger.log without findCaller()'s stack walk,
        # whose file/line would only ever point here: ~40% cheaper per line.
        access.handle(
            access.makeRecord(
                access.name,
                level,
                "(access)",
                0,
                "%s %s %d %.1fms id=%s from %s",
                (method, path, status, duration_ms, rid, remote),
                None,
                None,
                {
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "request_id": rid,
                    "remote": remote,
                },
            )
        )


def _origin_path(target: str) -> str:
    """The path of an absolute-form target (``http://host/p`` -> ``/p``); ``*`` as is.

    Anything else is not a request target: 400.
    """
    if target == "*":
        return target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    raise _HTTPError(400, "bad_request", "malformed request target")


def _unread_input(sock: socket.socket) -> bool:
    """Whether the peer sent bytes we have not read (closing now would reset)."""
    if not _MSG_DONTWAIT:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | _MSG_DONTWAIT))
    except OSError:  # nothing there (EAGAIN), or the connection is gone
        return False


_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)
