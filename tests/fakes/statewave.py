"""A fake Statewave server that enforces the real ingest rules, for tests and benches.

It listens on ``127.0.0.1:<free port>`` and speaks the v1 episode API the way
the real server (smaramwbc/statewave, FastAPI + PostgreSQL) does:

* ``X-API-Key`` (or ``?api_key=``) must match ``api_key``: missing -> 401
  ``missing_api_key`` (a Bearer token is *not* read), wrong -> 403
  ``invalid_api_key``. ``api_key=None`` disables auth like an unset
  ``STATEWAVE_API_KEY``. ``/healthz`` and ``/readyz`` are public.
* ``require_tenant=True``: no ``X-Tenant-ID`` -> 400 ``missing_tenant``.
* ``POST /v1/episodes`` and ``POST /v1/episodes/batch`` (``{"episodes": [...]}``,
  1..100, all-or-nothing) validated like pydantic: ``subject_id`` and
  ``source`` 1..256 characters, ``type`` 1..128, ``payload`` an object,
  ``metadata``/``provenance`` objects (default ``{}``), ``session_id`` <= 256,
  ``occurred_at`` an ISO datetime (newer servers; ``occurred_at_field=False``
  drops it like 0.7.x). Failures -> 422 ``validation_error`` whose
  ``details[].loc`` is ``["body", "episodes", <index>, <field>]``.
* Unknown top-level keys are silently dropped (pydantic's default).
* A NUL character in any stored string, or a NaN/Infinity number -> 500
  ``internal_error`` (PostgreSQL refuses them), nothing stored.
* ``subject_id_pattern``: a regex ``subject_id`` must match (422
  ``string_pattern_mismatch``), to play a stricter server.
* ``batch_route=False`` answers ``missing_route_status`` (404) on the batch
  route, like a server that predates it.

Error bodies are ``{"error": {"code", "message", "details"?, "request_id"}}``.

Scripting failures::

    sw.script(Respond(503, retry_after="7"), Reset(), Delay(2.0))  # next 3 requests
    sw.script(Hang(2.0))             # next request: 2 s, then RST, nothing stored
    sw.script(Respond(429), path="/v1/episodes/batch")             # next batch request
    sw.persistent = Respond(500)     # every request until set back to None
    sw.db_down = True                # inserts fail with 500; auth/validation still run
    sw.down(); ...; sw.up()          # connections refused, then back on the same port

Assertions: ``sw.requests`` (every request with its raw bytes), ``sw.episodes``
(every accepted episode as stored, in order), ``sw.idempotency_keys()``,
``sw.wait_for_episodes(n)``, ``sw.wait_idle()`` (no request being handled),
``sw.wait_busy()`` / ``sw.in_flight`` (a request is being handled, e.g. in a ``Delay``).

Run standalone (benches): ``python -m tests.fakes --api-key K`` prints
its URL on stdout; ``GET /_fake/stats`` answers counts (not a Statewave route).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import itertools
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "AcceptedEpisode",
    "Close",
    "Delay",
    "FakeStatewave",
    "Hang",
    "RecordedRequest",
    "Reset",
    "Respond",
]

PUBLIC_PATHS = {"/healthz", "/readyz", "/health", "/ready"}
BATCH_MAX = 100


# --------------------------------------------------------------------------- scripted actions


@dataclass(frozen=True)
class Respond:
    """Answer with this status (and a Statewave-shaped error body unless ``body``)."""

    status: int
    body: bytes | dict[str, Any] | None = None
    retry_after: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Reset:
    """Read the request, then reset the TCP connection (RST) without answering."""


@dataclass(frozen=True)
class Close:
    """Read the request, then close the connection cleanly without answering."""


@dataclass(frozen=True)
class Delay:
    """Sleep, then handle the request normally.

    Like the real server, the episodes are stored even when the client has
    given up waiting (a timed-out request may still have been ingested).
    """

    seconds: float


@dataclass(frozen=True)
class Hang:
    """Sleep, then reset the connection without storing anything.

    A request the server lost (it died or gave up mid-request): unlike
    ``Delay``, nothing is ingested, so only a retry can deliver it.
    """

    seconds: float


Action = Respond | Reset | Close | Delay | Hang


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived, and what the fake did with it."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    raw: bytes
    """Request line, headers and body exactly as received."""
    connection: int
    """Serial number of the TCP connection it came on (keep-alive reuse shows here)."""
    status: int | None
    """Status answered; ``None`` when reset/closed without an answer."""
    at: float

    def header(self, name: str) -> str | None:
        """The first value of a header, case-insensitively."""
        key = name.lower()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class AcceptedEpisode:
    """An episode the fake stored: the known fields only, as the server keeps them."""

    id: str
    tenant_id: str | None
    doc: dict[str, Any]
    request: int
    """Index into ``FakeStatewave.requests`` of the request that carried it."""

    @property
    def idempotency_key(self) -> str | None:
        meta = self.doc.get("metadata")
        return meta.get("idempotency_key") if isinstance(meta, dict) else None


# --------------------------------------------------------------------------- validation


class _Invalid(Exception):
    def __init__(self, details: list[dict[str, Any]]):
        self.details = details


_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)


def _err(kind: str, loc: list[Any], msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx:
        entry["ctx"] = ctx
    return entry


def _check_str(
    obj: dict[str, Any], name: str, loc: list[Any], lo: int, hi: int, required: bool
) -> list[dict[str, Any]]:
    if name not in obj:
        return [_err("missing", [*loc, name], "Field required", obj)] if required else []
    value = obj[name]
    if value is None and not required:
        return []
    if not isinstance(value, str):
        return [_err("string_type", [*loc, name], "Input should be a valid string", value)]
    if len(value) < lo:
        s = "" if lo == 1 else "s"
        return [
            _err(
                "string_too_short",
                [*loc, name],
                f"String should have at least {lo} character{s}",
                value,
                min_length=lo,
            )
        ]
    if len(value) > hi:
        return [
            _err(
                "string_too_long",
                [*loc, name],
                f"String should have at most {hi} characters",
                value,
                max_length=hi,
            )
        ]
    return []


def _validate_episode(
    obj: Any, loc: list[Any], occurred_at: bool, subject_pattern: str | None = None
) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _Invalid(
            [
                _err(
                    "model_attributes_type",
                    loc,
                    "Input should be a valid dictionary or object to extract fields from",
                    obj,
                )
            ]
        )
    errors: list[dict[str, Any]] = []
    subject_errors = _check_str(obj, "subject_id", loc, 1, 256, True)
    if not subject_errors and subject_pattern and not re.search(subject_pattern, obj["subject_id"]):
        subject_errors.append(
            _err(
                "string_pattern_mismatch",
                [*loc, "subject_id"],
                f"String should match pattern '{subject_pattern}'",
                obj["subject_id"],
                pattern=subject_pattern,
            )
        )
    errors += subject_errors
    errors += _check_str(obj, "source", loc, 1, 256, True)
    errors += _check_str(obj, "type", loc, 1, 128, True)
    if "payload" not in obj:
        errors.append(_err("missing", [*loc, "payload"], "Field required", obj))
    elif not isinstance(obj["payload"], dict):
        errors.append(
            _err(
                "dict_type", [*loc, "payload"], "Input should be a valid dictionary", obj["payload"]
            )
        )
    for name in ("metadata", "provenance"):
        if name in obj and not isinstance(obj[name], dict):
            errors.append(
                _err("dict_type", [*loc, name], "Input should be a valid dictionary", obj[name])
            )
    errors += _check_str(obj, "session_id", loc, 0, 256, False)
    if occurred_at and obj.get("occurred_at") is not None:
        value = obj["occurred_at"]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(value, str) and _DATETIME.fullmatch(value):
            with contextlib.suppress(ValueError):
                datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
                ok = True
        if not ok:
            errors.append(
                _err(
                    "datetime_from_date_parsing",
                    [*loc, "occurred_at"],
                    "Input should be a valid datetime or date",
                    value,
                )
            )
    if errors:
        raise _Invalid(errors)
    stored: dict[str, Any] = {
        "subject_id": obj["subject_id"],
        "source": obj["source"],
        "type": obj["type"],
        "payload": obj["payload"],
        "metadata": obj.get("metadata", {}),
        "provenance": obj.get("provenance", {}),
        "session_id": obj.get("session_id"),
    }
    if occurred_at:
        stored["occurred_at"] = obj.get("occurred_at")
    return stored


class _NonFinite(float):
    """Marks NaN/Infinity from the JSON text (Python parses them; PostgreSQL refuses)."""


_CONSTANT = re.compile(rb"NaN|Infinity")


def _parse_constant(name: str) -> float:
    return _NonFinite(float(name.replace("Infinity", "inf")))


def _unstorable(value: Any) -> bool:
    """True if PostgreSQL would refuse ``value`` (NUL in a string or key, NaN/Infinity)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, float):
        return isinstance(value, _NonFinite) or not math.isfinite(value)
    if isinstance(value, dict):
        return any("\x00" in k or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(v) for v in value)
    return False


# --------------------------------------------------------------------------- HTTP plumbing


class _Tee:
    """Wraps the request stream and keeps every byte read since ``start()``."""

    def __init__(self, inner: BinaryIO):
        self._inner = inner
        self.buffer = bytearray()

    def start(self) -> None:
        self.buffer = bytearray()

    def readline(self, size: int = -1) -> bytes:
        data = self._inner.readline(size)
        self.buffer += data
        return data

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.buffer += data
        return data

    def close(self) -> None:
        self._inner.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    fake: FakeStatewave


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeStatewave/0.7"
    sys_version = ""
    timeout = 60
    # Headers and body are two writes: without this, Nagle + delayed ACK add
    # ~40 ms per response, which the real server (uvicorn) does not have.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.fake = self.server.fake
        self.conn_id = self.fake._register(self.connection)
        self.tee = _Tee(self.rfile)  # type: ignore[arg-type]
        self.rfile = self.tee  # type: ignore[assignment]
        self.dropped = False

    def handle_one_request(self) -> None:
        self.tee.start()
        try:
            super().handle_one_request()
        except OSError:
            self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()
        self.fake._unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # -- one request
    def _serve(self) -> None:
        self.fake._busy(+1)
        try:
            self._serve_one()
        finally:
            self.fake._busy(-1)

    def _serve_one(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        # Counted for wait_busy() only once the body is complete (a client that
        # died after its headers has not really sent a request).
        whole = 1 if len(body) == max(length, 0) else 0
        self.fake._received(whole)
        try:
            self._answer(body)
        finally:
            self.fake._received(-whole)

    def _answer(self, body: bytes) -> None:
        split = urlsplit(self.path)
        fake = self.fake
        status, reply, extra, episodes = fake._handle(
            self.command, split.path, split.query, self.headers, body, self.conn_id
        )
        raw = bytes(self.tee.buffer)
        headers = tuple((k, v) for k, v in self.headers.items())
        if status is None:
            fake._record(
                self.command,
                split.path,
                split.query,
                headers,
                body,
                raw,
                self.conn_id,
                None,
                episodes,
            )
            self._drop(reset=isinstance(reply, Reset))
            return
        assert isinstance(reply, bytes)
        fake._record(
            self.command,
            split.path,
            split.query,
            headers,
            body,
            raw,
            self.conn_id,
            status,
            episodes,
        )
        try:
            self.send_response(status)
            request_id = self.headers.get("X-Request-ID") or uuid.uuid4().hex[:16]
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.send_header("X-Request-ID", request_id)
            for name, value in extra:
                self.send_header(name, value)
            if not fake.keep_alive:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(reply)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _drop(self, *, reset: bool) -> None:
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
        for stream in (self.tee, self.wfile):
            with contextlib.suppress(OSError, ValueError):
                stream.close()
        with contextlib.suppress(OSError):
            sock.close()
        self.wfile = io.BytesIO()


# --------------------------------------------------------------------------- the fake


class FakeStatewave:
    """The fake server. Use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(
        self,
        api_key: str | None = "test-key",
        *,
        require_tenant: bool = False,
        batch_route: bool = True,
        missing_route_status: int = 404,
        occurred_at_field: bool = True,
        subject_id_pattern: str | None = None,
        keep_alive: bool = True,
        record: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.require_tenant = require_tenant
        self.batch_route = batch_route
        self.missing_route_status = missing_route_status
        self.occurred_at_field = occurred_at_field
        self.subject_id_pattern = subject_id_pattern
        self.keep_alive = keep_alive
        self.record = record
        self.db_down = False
        self.persistent: Action | None = None
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._script: deque[tuple[str | None, Action]] = deque()
        self._requests: list[RecordedRequest] = []
        self._episodes: list[AcceptedEpisode] = []
        self._request_count = 0
        self._episode_count = 0
        self._keys: list[str | None] = []
        self._conn_ids = itertools.count(1)
        self._in_flight = 0
        self._processing = 0
        self._ids = random.Random()
        self._open: dict[socket.socket, int] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> FakeStatewave:
        """Bind and serve in a background thread (idempotent)."""
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.fake = self
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="fake-statewave",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        """Go away: new connections are refused, open ones are dropped."""
        self.stop()

    def up(self) -> None:
        """Come back on the same port."""
        self.start()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def __enter__(self) -> FakeStatewave:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL to configure as ``[statewave] url``."""
        return f"http://{self._host}:{self._port}"

    # ---- scripting
    def script(self, *actions: Action, path: str | None = None) -> None:
        """Queue actions for the next requests (only those to ``path`` when given)."""
        with self._lock:
            for action in actions:
                self._script.append((path, action))

    def clear_script(self) -> None:
        with self._lock:
            self._script.clear()

    # ---- records
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def episodes(self) -> list[AcceptedEpisode]:
        with self._lock:
            return list(self._episodes)

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._request_count

    @property
    def episode_count(self) -> int:
        with self._lock:
            return self._episode_count

    def idempotency_keys(self) -> list[str | None]:
        """``metadata.idempotency_key`` of every accepted episode, in arrival order."""
        with self._lock:
            return list(self._keys)

    def ingest_requests(self) -> list[RecordedRequest]:
        """Requests to the two episode routes, probes included."""
        return [r for r in self.requests if r.path in ("/v1/episodes", "/v1/episodes/batch")]

    def wait_for_episodes(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` episodes were accepted; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._episode_count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` requests arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._request_count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no request is being handled (e.g. a ``Delay``); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    @property
    def in_flight(self) -> int:
        """Requests received in full and being handled now (e.g. in a ``Delay``)."""
        with self._lock:
            return self._processing

    def wait_busy(self, timeout: float = 10.0) -> bool:
        """Block until a request was received in full and is being handled; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._processing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def reset(self) -> None:
        """Forget recorded requests and episodes (scripts and modes stay)."""
        with self._lock:
            self._requests.clear()
            self._episodes.clear()
            self._keys.clear()
            self._request_count = 0
            self._episode_count = 0

    # ---- internals used by the handler
    def _busy(self, delta: int) -> None:
        with self._changed:
            self._in_flight += delta
            self._changed.notify_all()

    def _received(self, delta: int) -> None:
        with self._changed:
            self._processing += delta
            self._changed.notify_all()

    def _register(self, sock: socket.socket) -> int:
        with self._lock:
            conn_id = next(self._conn_ids)
            self._open[sock] = conn_id
            return conn_id

    def _unregister(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def _record(
        self,
        method: str,
        path: str,
        query: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        raw: bytes,
        conn_id: int,
        status: int | None,
        episodes: list[AcceptedEpisode],
    ) -> None:
        with self._changed:
            index = self._request_count
            self._request_count += 1
            if self.record:
                self._requests.append(
                    RecordedRequest(
                        method, path, query, headers, body, raw, conn_id, status, time.time()
                    )
                )
            for ep in episodes:
                stored = AcceptedEpisode(ep.id, ep.tenant_id, ep.doc, index)
                self._keys.append(stored.idempotency_key)
                if self.record:
                    self._episodes.append(stored)
            self._episode_count += len(episodes)
            self._changed.notify_all()

    def _next_action(self, path: str) -> Action | None:
        with self._lock:
            for i, (only, action) in enumerate(self._script):
                if only is None or only == path:
                    del self._script[i]
                    return action
            return self.persistent

    def _new_id(self) -> str:
        # A version-4 UUID without a getrandom() syscall per episode.
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def _error(
        self, status: int, code: str, message: str, details: Any = None
    ) -> tuple[int, bytes]:
        err: dict[str, Any] = {"code": code, "message": message}
        if details is not None:
            err["details"] = details
        err["request_id"] = uuid.uuid4().hex[:16]
        return status, json.dumps({"error": err}).encode()

    def _handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: Any,
        body: bytes,
        conn_id: int,
    ) -> tuple[int | None, bytes | Action, list[tuple[str, str]], list[AcceptedEpisode]]:
        """Return ``(status, body, extra headers, stored episodes)``; status None = drop."""
        action = self._next_action(path)
        if isinstance(action, Reset | Close):
            return None, action, [], []
        if isinstance(action, Hang):
            time.sleep(action.seconds)
            return None, Reset(), [], []
        if isinstance(action, Delay):
            time.sleep(action.seconds)
        elif isinstance(action, Respond):
            extra = list(action.headers)
            if action.retry_after is not None:
                extra.append(("Retry-After", action.retry_after))
            if isinstance(action.body, bytes):
                return action.status, action.body, extra, []
            if isinstance(action.body, dict):
                return action.status, json.dumps(action.body).encode(), extra, []
            code = {
                429: "rate_limited",
                500: "internal_error",
                401: "missing_api_key",
                403: "invalid_api_key",
            }.get(action.status, "http_error")
            status, reply = self._error(action.status, code, f"scripted {action.status}")
            return status, reply, extra, []

        if path == "/_fake/stats" and method == "GET":
            with self._lock:
                keys = [k for k in self._keys if k is not None]
                stats = {
                    "requests": self._request_count,
                    "episodes": self._episode_count,
                    "unique_keys": len(set(keys)),
                }
            return 200, json.dumps(stats).encode(), [], []
        if path in PUBLIC_PATHS:
            return 200, json.dumps({"status": "ok"}).encode(), [], []

        # Middleware order of the real app: auth, (rate limit), tenant, then routing.
        if self.api_key:
            provided = headers.get("X-API-Key") or (parse_qs(query).get("api_key") or [None])[0]
            if not provided:
                s, r = self._error(401, "missing_api_key", "X-API-Key header is required.")
                return s, r, [], []
            if provided != self.api_key:
                s, r = self._error(403, "invalid_api_key", "Invalid API key.")
                return s, r, [], []
        tenant = headers.get("X-Tenant-ID") or None
        if self.require_tenant and not tenant:
            s, r = self._error(400, "missing_tenant", "X-Tenant-ID header is required.")
            return s, r, [], []

        if path == "/v1/episodes/batch" and not self.batch_route:
            text = "Not Found" if self.missing_route_status == 404 else "Method Not Allowed"
            s, r = self._error(self.missing_route_status, "http_error", text)
            return s, r, [], []
        if path not in ("/v1/episodes", "/v1/episodes/batch"):
            s, r = self._error(404, "http_error", "Not Found")
            return s, r, [], []
        if method != "POST":
            s, r = self._error(405, "http_error", "Method Not Allowed")
            return s, r, [], []

        try:
            doc = json.loads(body, parse_constant=_parse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            pos = getattr(exc, "pos", 0)
            details = [_err("json_invalid", ["body", pos], "JSON decode error", {}, error=str(exc))]
            s, r = self._error(422, "validation_error", "Request validation failed", details)
            return s, r, [], []

        try:
            if path == "/v1/episodes":
                stored = [
                    _validate_episode(
                        doc, ["body"], self.occurred_at_field, self.subject_id_pattern
                    )
                ]
            else:
                stored = self._validate_batch(doc)
        except _Invalid as exc:
            s, r = self._error(422, "validation_error", "Request validation failed", exc.details)
            return s, r, [], []

        # JSON can carry NUL only as the escape \u0000 and NaN/Infinity only as
        # bare constants: skip the deep scan when neither occurs.
        suspicious = b"\\u0000" in body or _CONSTANT.search(body) is not None
        if self.db_down or (suspicious and any(_unstorable(ep) for ep in stored)):
            s, r = self._error(500, "internal_error", "An unexpected error occurred")
            return s, r, [], []

        now = datetime.now(UTC).isoformat()
        accepted = [AcceptedEpisode(self._new_id(), tenant, ep, -1) for ep in stored]
        responses = [{"id": a.id, **a.doc, "created_at": now} for a in accepted]
        if path == "/v1/episodes":
            reply: Any = responses[0]
        else:
            reply = {"episodes_created": len(responses), "episodes": responses}
        return 201, json.dumps(reply).encode(), [], accepted

    def _validate_batch(self, doc: Any) -> list[dict[str, Any]]:
        if not isinstance(doc, dict):
            raise _Invalid(
                [
                    _err(
                        "model_attributes_type",
                        ["body"],
                        "Input should be a valid dictionary or object to extract fields from",
                        doc,
                    )
                ]
            )
        if "episodes" not in doc:
            raise _Invalid([_err("missing", ["body", "episodes"], "Field required", doc)])
        episodes = doc["episodes"]
        if not isinstance(episodes, list):
            raise _Invalid(
                [_err("list_type", ["body", "episodes"], "Input should be a valid list", episodes)]
            )
        if not episodes:
            raise _Invalid(
                [
                    _err(
                        "too_short",
                        ["body", "episodes"],
                        "List should have at least 1 item after validation, not 0",
                        episodes,
                        field_type="List",
                        min_length=1,
                        actual_length=0,
                    )
                ]
            )
        if len(episodes) > BATCH_MAX:
            raise _Invalid(
                [
                    _err(
                        "too_long",
                        ["body", "episodes"],
                        f"List should have at most {BATCH_MAX} items after validation, "
                        f"not {len(episodes)}",
                        episodes,
                        field_type="List",
                        max_length=BATCH_MAX,
                        actual_length=len(episodes),
                    )
                ]
            )
        details: list[dict[str, Any]] = []
        stored: list[dict[str, Any]] = []
        for i, ep in enumerate(episodes):
            try:
                stored.append(
                    _validate_episode(
                        ep, ["body", "episodes", i], self.occurred_at_field, self.subject_id_pattern
                    )
                )
            except _Invalid as exc:
                details.extend(exc.details)
        if details:
            raise _Invalid(details)
        return stored


def iter_jsonl(path: str) -> Iterator[dict[str, Any]]:
    """The JSON documents of a JSON Lines file (for FileSink assertions)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def main(argv: list[str] | None = None, *, ready: Callable[[str], None] | None = None) -> int:
    """Serve until stdin closes (or SIGTERM). Prints the URL as the first line."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="keep counts only")
    args = parser.parse_args(argv)
    fake = FakeStatewave(args.api_key or None, port=args.port, record=not args.no_record)
    fake.start()
    print(fake.url, flush=True)
    if ready is not None:
        ready(fake.url)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
