"""Delivering episodes to Statewave: the sink contract, the wire format, the sinks.

A *sink* takes a batch of episodes and either accepts all of them or raises a
:class:`~statewave_runner.errors.DeliveryError` that says what to do next:

* :class:`~statewave_runner.errors.RetryableError` (``retry_after`` seconds
  when the server said so): nothing of the batch is stored; try again later.
* :class:`~statewave_runner.errors.PermanentError` (``index`` of the culprit
  when known): that episode will never be accepted; the others may be sent
  again without it.
* :class:`~statewave_runner.errors.AuthError`: the sink refuses everything as
  configured (credentials, tenant, URL); pause, drop nothing.

Every error may carry ``delivered``: the number of episodes at the start of
the batch that *were* accepted before the failure.

Sinks here: :class:`HttpSink` (Statewave's v1 API over ``http.client`` with
keep-alive), :class:`FileSink` (``url = "file:PATH"``: JSON Lines, fsynced) and
:class:`CallableSink` (an embedder's function). :func:`make_sink` picks one
from the ``[statewave]`` settings. The mapping from :class:`Episode` to
Statewave's JSON is :func:`episode_to_wire`, a pure function.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from . import __version__
from .connectors.base import Episode
from .errors import AuthError, DeliveryError, PermanentError, RetryableError

__all__ = [
    "BATCH_MAX",
    "FALLBACK_BATCH",
    "SOURCE_MAX",
    "SUBJECT_ID_MAX",
    "TYPE_MAX",
    "CallableSink",
    "FileSink",
    "HttpSink",
    "ProbingSink",
    "Sink",
    "as_sink",
    "clean_json",
    "clean_str",
    "encode_json",
    "episode_to_wire",
    "make_sink",
    "parse_retry_after",
    "sink_max_batch",
    "validate_sink_url",
]

log_default = logging.getLogger("statewave_runner.ingest")

# Statewave's CreateEpisodeRequest (server/schemas/requests.py): subject_id and
# source 1..256 characters, type 1..128; BatchCreateEpisodesRequest: 1..100.
SUBJECT_ID_MAX = 256
SOURCE_MAX = 256
TYPE_MAX = 128
BATCH_MAX = 100
# Batch size when the server has no /v1/episodes/batch and every episode is its
# own request: small enough that a batch finishes well inside a claim lease.
FALLBACK_BATCH = 10
# Longest Retry-After we honour (a misbehaving proxy must not park us for days).
MAX_RETRY_AFTER = 3600.0
# Idle keep-alive connections older than this are not reused: uvicorn closes
# idle connections after 5 s and a request racing that close fails.
IDLE_REUSE_SECONDS = 4.0
# How much of an error response body is kept for the message.
ERROR_MESSAGE_MAX = 500

PRODUCER = f"statewave-runner/{__version__}"
USER_AGENT = PRODUCER


# --------------------------------------------------------------------------- contract


@runtime_checkable
class Sink(Protocol):
    """Where episodes go. See the module docstring for the error contract."""

    def ingest(self, episodes: Sequence[Episode]) -> None: ...


@runtime_checkable
class ProbingSink(Protocol):
    """A sink that can check, without storing anything, whether it would accept.

    The delivery worker calls :meth:`probe` while delivery is stalled or paused
    instead of spending a real batch's attempts. It returns when the sink looks
    usable and raises ``AuthError`` / ``RetryableError`` like ``ingest``.
    """

    def probe(self) -> None: ...


def sink_max_batch(sink: object) -> int:
    """The most episodes ``sink`` takes per call (its ``max_batch``, else 100)."""
    value = getattr(sink, "max_batch", BATCH_MAX)
    return value if isinstance(value, int) and value >= 1 else BATCH_MAX


# --------------------------------------------------------------------------- wire format

# NUL makes PostgreSQL (text and jsonb) fail -> Statewave answers 500; a lone
# surrogate cannot be encoded as UTF-8 at all.
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_ISO_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})"
)


def clean_str(text: str) -> str:
    """``text`` without NUL characters and with lone surrogates replaced by U+FFFD."""
    if text.isascii():  # the common case, and no surrogate is ASCII: two C calls
        return text.replace("\x00", "") if "\x00" in text else text
    if not _BAD_CHARS.search(text):
        return text
    text = text.replace("\x00", "")
    if _BAD_CHARS.search(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def clean_json(value: Any) -> Any:
    """A copy of ``value`` that Statewave stores without a 500.

    Strings (keys too) go through :func:`clean_str`; NaN and infinities become
    ``None`` (PostgreSQL's jsonb rejects them); tuples become lists; anything
    that is not JSON becomes its ``str()``.
    """
    kind = type(value)
    if kind is str:
        return clean_str(value)
    if kind is dict:  # exact types first: the common cases without isinstance walks
        return {
            clean_str(k) if type(k) is str else clean_str(str(k)): clean_json(v)
            for k, v in value.items()
        }
    if value is None or kind is int or kind is bool:
        return value
    if isinstance(value, str):
        return clean_str(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {clean_str(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return clean_str(str(value))


def _fit(field: str, text: str, limit: int, notes: list[str]) -> str:
    if len(text) <= limit:
        return text
    notes.append(f"{field} truncated from {len(text)} to {limit} characters")
    return text[:limit]


def episode_to_wire(
    episode: Episode, *, producer: str = PRODUCER
) -> tuple[dict[str, Any], list[str]]:
    """Statewave's ``CreateEpisodeRequest`` JSON for ``episode``, and what was changed.

    Returns ``(document, notes)``; ``notes`` lists every truncation (the caller
    logs them). Raises ``ValueError`` when the episode cannot be sent at all
    (empty subject or kind). See docs/delivery.md for the mapping.
    """
    notes: list[str] = []
    connector = clean_str(episode.connector)
    source_kind = connector.split("/", 1)[0]
    if not source_kind:
        source_kind = clean_str(episode.source.type).split(".", 1)[0] or "statewave-runner"
    subject = _fit("subject_id", clean_str(episode.subject), SUBJECT_ID_MAX, notes)
    kind = _fit("type", clean_str(episode.kind), TYPE_MAX, notes)
    source_kind = _fit("source", source_kind, SOURCE_MAX, notes)
    if not subject:
        raise ValueError("subject is empty")
    if not kind:
        raise ValueError("kind is empty")

    pointer: dict[str, Any] = {
        "type": clean_str(episode.source.type),
        "id": clean_str(episode.source.id),
    }
    if episode.source.url is not None:
        pointer["url"] = clean_str(str(episode.source.url))
    occurred_at = clean_str(episode.occurred_at)

    payload: dict[str, Any] = {}
    if episode.metadata:
        payload.update(clean_json(episode.metadata))
    # The episode's own fields win over a connector extra of the same name.
    payload["text"] = clean_str(episode.text)
    payload["occurred_at"] = occurred_at
    payload["source"] = pointer

    key = clean_str(episode.idempotency_key)
    metadata: dict[str, Any] = {"idempotency_key": key}
    provenance: dict[str, Any] = {"producer": producer}
    if connector:
        metadata["connector"] = connector
        provenance["connector"] = connector
    provenance["source"] = dict(pointer)

    doc: dict[str, Any] = {
        "subject_id": subject,
        "source": source_kind,
        "type": kind,
        "payload": payload,
        "metadata": metadata,
        "provenance": provenance,
    }
    # Newer servers take occurred_at as a first-class column and the Python SDK
    # sends idempotency_key at the top level; older servers drop unknown keys.
    # occurred_at is only lifted when it is a timestamp the server will parse,
    # so a junk value can never turn into a 422.
    if _ISO_TIMESTAMP.fullmatch(occurred_at):
        doc["occurred_at"] = occurred_at
    doc["idempotency_key"] = key
    return doc, notes


# json.dumps() with options builds an encoder per call; this one is built once.
_WIRE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the exact bytes we send and write."""
    return _WIRE_ENCODER.encode(obj).encode()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date).

    ``now`` is the current unix time (for the date form). Returns ``None`` when
    absent or unparsable; never negative; capped at one hour.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# --------------------------------------------------------------------------- URLs


def validate_sink_url(url: str) -> None:
    """Raise ``ValueError`` (message fit for a config issue) unless ``url`` is usable.

    Accepted: ``http://`` / ``https://`` with a host and no credentials, query
    or fragment; or ``file:PATH``.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("must be a non-empty URL (http://, https:// or file:PATH)")
    if url != url.strip():
        raise ValueError("must not start or end with whitespace")
    if url.startswith("file:"):
        _file_path(url)
        return
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"scheme {parts.scheme!r} is not supported: use http://, https:// "
            'or file:PATH (e.g. url = "file:./episodes.jsonl" to try things out)'
        )
    if "@" in parts.netloc:
        raise ValueError("must not contain credentials (user:password@); put the key in api_key")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("must not have a query string or fragment")
    if port == 0:
        raise ValueError("port 0 is not a usable port")


def _file_path(url: str) -> str:
    rest = url[len("file:") :]
    if rest.startswith("//"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL must name a local path, not host {parts.netloc!r}")
        rest = unquote(parts.path)
    if not rest:
        raise ValueError('file sink needs a path: url = "file:./episodes.jsonl"')
    return rest


# --------------------------------------------------------------------------- HTTP sink


class _RouteMissing(Exception):
    """The batch route answered 404/405: switch to one request per episode."""


class _Pool:
    """Keep-alive connections to one origin, newest first."""

    def __init__(self, scheme: str, host: str, port: int | None, timeout: float, size: int) -> None:
        self._scheme = scheme
        self._host = host
        self._port = port
        self._timeout = timeout
        self._size = size
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() if scheme == "https" else None

    def get(self) -> http.client.HTTPConnection:
        now = time.monotonic()
        stale: list[http.client.HTTPConnection] = []
        conn: http.client.HTTPConnection | None = None
        with self._lock:
            while self._idle:
                candidate, since = self._idle.pop()
                if now - since <= IDLE_REUSE_SECONDS:
                    conn = candidate
                    break
                stale.append(candidate)
        for old in stale:
            old.close()
        if conn is not None:
            return conn
        if self._ssl is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


def _describe_os_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s (timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    # RemoteDisconnected subclasses ConnectionResetError: test it first.
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection without answering"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, BrokenPipeError):
        return "connection closed while sending"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _error_body(body: bytes) -> tuple[str, str, Any]:
    """``(code, message, details)`` from Statewave's ``{"error": {...}}`` body."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body[:ERROR_MESSAGE_MAX].decode("utf-8", "replace").strip()
        return "", text, None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        return str(err.get("code") or ""), str(err.get("message") or ""), err.get("details")
    if isinstance(doc, dict) and "detail" in doc:  # plain FastAPI/Starlette shape
        return "", str(doc["detail"])[:ERROR_MESSAGE_MAX], None
    return "", json.dumps(doc)[:ERROR_MESSAGE_MAX], None


def _validation_index(details: Any, batch: bool) -> tuple[int | None, str]:
    """The failing episode's index and a readable reason from a 422's details.

    Statewave (FastAPI) lists pydantic errors with ``loc`` like
    ``["body", "episodes", 3, "subject_id"]``; ``input`` is never echoed (it
    is the episode's content).
    """
    if not isinstance(details, list):
        return None, ""
    index: int | None = None
    reasons: list[str] = []
    for entry in details:
        if not isinstance(entry, dict):
            continue
        loc = entry.get("loc")
        loc = list(loc) if isinstance(loc, list | tuple) else []
        if loc[:1] == ["body"]:
            loc = loc[1:]
        at: int | None = None
        if batch and len(loc) >= 2 and loc[0] == "episodes" and isinstance(loc[1], int):
            at = loc[1]
            loc = loc[2:]
        if batch and index is None and at is not None:
            index = at
        if batch and at != index:
            continue
        where = ".".join(str(p) for p in loc) or "body"
        reasons.append(f"{where}: {entry.get('msg', 'invalid')}")
    return index, "; ".join(reasons)[:ERROR_MESSAGE_MAX]


class HttpSink:
    """Statewave's v1 ingest API over ``http.client``, with keep-alive.

    ``POST {url}/v1/episodes/batch`` with ``{"episodes": [...]}``; when the
    server answers 404/405 there (an older server) it switches, for the life of
    the sink, to ``POST {url}/v1/episodes`` per episode (``batch=False`` starts
    that way). Thread-safe: each concurrent call uses its own pooled connection.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        tenant_id: str | None = None,
        timeout: float = 10.0,
        user_agent: str = USER_AGENT,
        max_connections: int = 4,
        batch: bool = True,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        validate_sink_url(url)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("HttpSink needs an http:// or https:// URL")
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        host = parts.hostname or ""
        port = parts.port
        default_port = 443 if parts.scheme == "https" else 80
        host_header = f"[{host}]" if ":" in host else host
        if port is not None and port != default_port:
            host_header = f"{host_header}:{port}"
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self._base = parts.path.rstrip("/")
        self._log = log or log_default
        self._clock = clock
        self._pool = _Pool(parts.scheme, host, port, self.timeout, max(1, max_connections))
        headers = [
            ("Host", host_header),
            ("User-Agent", user_agent),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ]
        if api_key:
            headers.append(("X-API-Key", api_key))
        if tenant_id:
            headers.append(("X-Tenant-ID", tenant_id))
        self._headers = tuple(headers)
        self._tenant = bool(tenant_id)
        # None: not tried yet; False: one POST /v1/episodes per episode.
        self._batch_route: bool | None = None if batch else False
        self._lock = threading.Lock()

    # ---- what the worker reads
    @property
    def max_batch(self) -> int:
        """100 on the batch route; :data:`FALLBACK_BATCH` once it is known missing."""
        return BATCH_MAX if self._batch_route is not False else FALLBACK_BATCH

    @property
    def batch_route(self) -> bool | None:
        """True once the batch route worked, False once it was found missing."""
        return self._batch_route

    def describe(self) -> dict[str, str]:
        """For banners and ``describe()``: never the API key."""
        route = {None: "not tried yet", True: "batch", False: "one request per episode"}
        return {
            "kind": "http",
            "url": self.url,
            "tenant_id": "set" if self._tenant else "not set",
            "route": route[self._batch_route],
        }

    def close(self) -> None:
        """Close pooled connections. The sink stays usable (it reconnects)."""
        self._pool.close()

    # ---- the contract
    def ingest(self, episodes: Sequence[Episode]) -> None:
        """Deliver ``episodes`` (at most 100); see the module docstring for errors."""
        if not episodes:
            return
        if len(episodes) > BATCH_MAX:
            raise ValueError(f"at most {BATCH_MAX} episodes per call, got {len(episodes)}")
        docs: list[dict[str, Any]] = []
        for index, episode in enumerate(episodes):
            try:
                doc, notes = episode_to_wire(episode)
            except ValueError as exc:
                raise PermanentError(
                    f"episode {episode.idempotency_key} cannot be sent: {exc}", index=index
                ) from None
            for note in notes:
                self._log.warning(
                    "episode %s from %s: %s (Statewave's limit)",
                    episode.idempotency_key,
                    episode.connector or "?",
                    note,
                )
            docs.append(doc)
        if self._batch_route is not False:
            try:
                self._send_batch(docs)
            except _RouteMissing:
                if self._set_route(False):
                    self._log.info(
                        "Statewave at %s has no /v1/episodes/batch (404/405): "
                        "sending one request per episode from now on",
                        self.url,
                    )
            else:
                self._set_route(True)
                return
        self._send_singles(docs)

    def _set_route(self, works: bool) -> bool:
        """Record whether the batch route works; True if that changed."""
        with self._lock:
            changed = self._batch_route is not works
            self._batch_route = works
            return changed

    def probe(self) -> None:
        """Check reachability, credentials and route without storing anything.

        Sends ``{}`` to ``POST /v1/episodes``: Statewave checks the API key and
        tenant before validating the body, so a 422 means "would accept".
        """
        status, headers, body = self._post(f"{self._base}/v1/episodes", b"{}")
        if status == 422 or 200 <= status < 300:
            return
        raise self._error(status, headers, body, batch=False)

    # ---- internals
    def _send_batch(self, docs: list[dict[str, Any]]) -> None:
        status, headers, body = self._post(
            f"{self._base}/v1/episodes/batch", encode_json({"episodes": docs})
        )
        if 200 <= status < 300:
            return
        if status in (404, 405) and self._batch_route is None:
            raise _RouteMissing
        if status == 413 and len(docs) > 1:
            # A proxy's body limit: halve until each part fits.
            half = len(docs) // 2
            self._send_batch(docs[:half])
            try:
                self._send_batch(docs[half:])
            except DeliveryError as exc:
                exc.delivered += half
                if isinstance(exc, PermanentError) and exc.index is not None:
                    exc.index += half
                raise
            return
        raise self._error(status, headers, body, batch=True)

    def _send_singles(self, docs: list[dict[str, Any]]) -> None:
        path = f"{self._base}/v1/episodes"
        for index, doc in enumerate(docs):
            try:
                status, headers, body = self._post(path, encode_json(doc))
            except DeliveryError as exc:
                exc.delivered = index
                raise
            if 200 <= status < 300:
                continue
            error = self._error(status, headers, body, batch=False)
            error.delivered = index
            if isinstance(error, PermanentError):
                error.index = index
            raise error

    def _post(self, path: str, body: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self._pool.get()
        try:
            conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
            for name, value in self._headers:
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RetryableError(
                f"cannot reach Statewave at {self.url}: {_describe_os_error(exc, self.timeout)}"
            ) from None
        if response.will_close:
            conn.close()
        else:
            self._pool.put(conn)
        return response.status, response.msg, data

    def _error(
        self, status: int, headers: http.client.HTTPMessage, body: bytes, *, batch: bool
    ) -> DeliveryError:
        code, message, details = _error_body(body)
        route = "/v1/episodes/batch" if batch else "/v1/episodes"
        said = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if status in (401, 403):
            return AuthError(
                f"Statewave refused the credentials ({said}); check [statewave] api_key "
                "(sent as X-API-Key)",
                status=status,
            )
        if status == 400 and code == "missing_tenant":
            return AuthError(
                f"Statewave requires a tenant ({said}); set [statewave] tenant_id",
                status=status,
            )
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(headers.get("Retry-After"), self._clock())
            return RetryableError(
                f"Statewave answered {said}", retry_after=retry_after, status=status
            )
        if 300 <= status < 400:
            where = headers.get("Location") or "?"
            return AuthError(
                f"Statewave at {self.url} redirects POST {route} to {where} (HTTP {status}); "
                "set [statewave] url to the final address",
                status=status,
            )
        if status in (404, 405):
            return AuthError(
                f"Statewave at {self.url} answered {said} for POST {route}; "
                "check [statewave] url (the server's base URL, without /v1)",
                status=status,
            )
        if status == 422:
            index, reason = _validation_index(details, batch)
            text = f"Statewave rejected the episode (HTTP 422 {code or 'validation_error'}"
            text += f": {reason})" if reason else f": {message})"
            return PermanentError(text, index=index, status=status)
        if status == 413:
            return PermanentError(
                f"the episode is larger than Statewave accepts ({said})", index=0, status=status
            )
        return PermanentError(f"Statewave rejected the request ({said})", status=status)


# --------------------------------------------------------------------------- file sink


class FileSink:
    """``url = "file:PATH"``: append each episode's wire JSON as one line, fsynced.

    For trying the runner without a server: the file shows exactly what would
    be sent to Statewave. A line torn by a crash is terminated before the next
    write, so every complete line stays valid JSON.
    """

    max_batch = BATCH_MAX

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None

    def describe(self) -> dict[str, str]:
        return {"kind": "file", "path": str(self.path)}

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size > 0:
                with open(self.path, "rb") as reader:
                    reader.seek(size - 1)
                    if reader.read(1) != b"\n":
                        os.write(fd, b"\n")
            if created and self._fsync:
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def ingest(self, episodes: Sequence[Episode]) -> None:
        """Append ``episodes``; raises ``RetryableError`` when the write fails."""
        if not episodes:
            return
        lines: list[bytes] = []
        for index, episode in enumerate(episodes):
            try:
                doc, _ = episode_to_wire(episode)
            except ValueError as exc:
                raise PermanentError(
                    f"episode {episode.idempotency_key} cannot be written: {exc}", index=index
                ) from None
            lines.append(encode_json(doc) + b"\n")
        data = b"".join(lines)
        with self._lock:
            try:
                fd = self._open()
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self._fsync:
                    os.fsync(fd)
            except OSError as exc:
                self._close_locked()
                raise RetryableError(
                    f"cannot append to {self.path}: {exc.strerror or exc}"
                ) from None

    def _close_locked(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()


# --------------------------------------------------------------------------- embedders


class CallableSink:
    """``Runner(config, ingest=fn)``: ``fn(episodes)`` is the sink.

    ``fn`` raises ``RetryableError(retry_after=...)``, ``PermanentError(index=...)``
    or ``AuthError`` to steer the worker. Any other exception is treated as
    retryable (nothing is lost; the batch dead-letters after ``max_attempts``).
    """

    def __init__(
        self, fn: Callable[[Sequence[Episode]], object], *, max_batch: int = BATCH_MAX
    ) -> None:
        if not callable(fn):
            raise TypeError("ingest must be callable")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._fn = fn
        self.max_batch = max_batch

    def describe(self) -> dict[str, str]:
        name = getattr(self._fn, "__qualname__", None) or type(self._fn).__name__
        return {"kind": "callable", "callable": str(name)}

    def ingest(self, episodes: Sequence[Episode]) -> None:
        try:
            self._fn(episodes)
        except DeliveryError:
            raise
        except Exception as exc:
            raise RetryableError(
                f"ingest callable raised {type(exc).__name__}: {exc}"[:ERROR_MESSAGE_MAX]
            ) from exc


def as_sink(obj: Sink | Callable[[Sequence[Episode]], object]) -> Sink:
    """A :class:`Sink` from a sink (returned as is) or a plain callable."""
    if isinstance(obj, Sink):
        return obj
    if callable(obj):
        return CallableSink(obj)
    raise TypeError(f"not a sink or callable: {type(obj).__name__}")


def make_sink(
    url: str,
    api_key: str | None = None,
    tenant_id: str | None = None,
    timeout: float = 10.0,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    clock: Callable[[], float] = time.time,
) -> HttpSink | FileSink:
    """The sink for ``[statewave]``: :class:`FileSink` for ``file:PATH``, else :class:`HttpSink`.

    A relative ``file:`` path is resolved against ``base_dir`` when given.
    Raises ``ValueError`` for an unusable URL (see :func:`validate_sink_url`).
    """
    validate_sink_url(url)
    if url.startswith("file:"):
        path = Path(_file_path(url))
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return FileSink(path)
    return HttpSink(
        url, api_key=api_key, tenant_id=tenant_id, timeout=timeout, log=log, clock=clock
    )
