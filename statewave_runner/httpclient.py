"""Outbound HTTP for connectors: one small client every connector shares.

Standard library only. What it does for a connector:

* keeps connections alive in a pool per ``(scheme, host, port, proxy)``; it is
  thread-safe, so one client serves every source of a runner;
* retries connection errors, 5xx and rate limits with exponential backoff and
  full jitter, honouring ``Retry-After`` and ``X-RateLimit-Reset``;
* never holds a worker for a long wait: a rate limit that lifts later than
  ``max_retry_wait`` seconds raises :class:`RateLimitedError` carrying
  ``retry_at`` (unix time), so a pull connector can end its tick with a
  checkpoint and resume on a later tick;
* turns every failure into an :class:`HttpError` subclass whose ``reason`` is
  the machine word the runner counts (``auth_failed``, ``permission_denied``,
  ``not_found``, ``rate_limited``, ``network``, ``bad_request``,
  ``bad_response``), with a message that names method, redacted URL and
  status - never a header value, never a registered secret;
* JSON helpers, RFC 8288 ``Link`` parsing, gzip, redirects (``Authorization``
  is dropped when a redirect leaves the original host), ``HTTP(S)_PROXY`` /
  ``NO_PROXY`` from the environment, a response size cap.

Clock and sleep are injectable so tests drive rate-limit waits without
waiting.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json as jsonlib
import logging
import random
import re
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urljoin, urlsplit, urlunsplit

from . import __version__
from .errors import ConnectorError
from .httptypes import Headers
from .redact import Redactor, redact_url

log = logging.getLogger("statewave_runner.http")

DEFAULT_USER_AGENT = f"statewave-runner/{__version__}"
DEFAULT_MAX_BODY = 64 * 1024 * 1024
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# The part of an error body kept on the exception (for connector-specific
# classification, e.g. GitHub's "secondary rate limit" message); never printed.
ERROR_BODY_KEEP = 4096

# Errors that mean "this connection broke", as opposed to "this request failed".
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
# Errors a reused keep-alive connection shows when the server closed it while
# idle: the request never reached the application, so a fresh connection may
# resend it without counting a retry.
_STALE_ERRORS: tuple[type[BaseException], ...] = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


# --------------------------------------------------------------------------- errors


class HttpError(ConnectorError):
    """An outbound request failed. ``reason`` says how; ``retryable`` whether later may work.

    ``status`` is the HTTP status when there was a response, ``url`` the
    redacted URL, ``retry_at`` the unix time after which the server said a
    retry may succeed (rate limits), ``body`` the first bytes of the error
    response (for connector-specific classification; never part of the
    message).
    """

    retryable: bool = False
    default_reason = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        url: str = "",
        retry_at: float | None = None,
        body: bytes = b"",
        headers: Headers | None = None,
        reason: str | None = None,
    ):
        super().__init__(message, reason=reason or self.default_reason)
        self.status = status
        self.url = url
        self.retry_at = retry_at
        self.body = body[:ERROR_BODY_KEEP]
        self.headers = headers if headers is not None else Headers()


class AuthFailedError(HttpError):
    """401: the credentials were refused."""

    default_reason = "auth_failed"


class PermissionDeniedError(HttpError):
    """403 that is not a rate limit: the credentials lack a scope or access."""

    default_reason = "permission_denied"


class NotFoundError(HttpError):
    """404 (or 410): the resource does not exist or is hidden from these credentials."""

    default_reason = "not_found"


class RateLimitedError(HttpError):
    """The server asked us to slow down for longer than we wait in-line.

    ``retry_at`` (unix time) is when the limit lifts; a pull connector ends
    its tick with a checkpoint and the next tick after ``retry_at`` resumes.
    """

    retryable = True
    default_reason = "rate_limited"


class NetworkError(HttpError):
    """Connection refused/reset, timeout, TLS failure, or 5xx after every retry."""

    retryable = True
    default_reason = "network"


class BadRequestError(HttpError):
    """Another 4xx: the server rejected the request itself (a bug or a bad config value)."""

    default_reason = "bad_request"


class BadResponseError(HttpError):
    """The response could not be used: not JSON, wrong shape, too large, bad encoding."""

    default_reason = "bad_response"


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A fully read response. 2xx, 304 and (with ``raise_for_status=False``) anything."""

    status: int
    headers: Headers
    body: bytes
    url: str = ""
    """The URL that produced this response (after redirects), unredacted: do not log it."""

    @property
    def ok(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status < 300

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded (undecodable bytes replaced)."""
        return self.body.decode(encoding, "replace")

    def json(self) -> Any:
        """The body parsed as JSON; :class:`BadResponseError` if it is not."""
        try:
            return jsonlib.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadResponseError(
                f"response from {redact_url(self.url)} is not JSON ({exc.__class__.__name__})",
                status=self.status,
                url=redact_url(self.url),
            ) from None

    def links(self) -> dict[str, str]:
        """The ``Link`` header as ``{rel: absolute URL}`` (see :func:`parse_link_header`)."""
        value = ", ".join(self.headers.get_all("link"))
        return {rel: urljoin(self.url, target) for rel, target in parse_link_header(value).items()}


_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*(?:\"[^\"]*\"[^;,]*)?)*)")
_PARAM_RE = re.compile(r";\s*([A-Za-z0-9!#$&+\-.^_`|~*]+)\s*=\s*(\"[^\"]*\"|[^;,\s]*)")


def parse_link_header(value: str) -> dict[str, str]:
    """Parse an RFC 8288 ``Link`` header into ``{rel: target}``.

    ``<https://api.github.com/x?page=2>; rel="next", <...?page=5>; rel="last"``
    -> ``{"next": "...page=2", "last": "...page=5"}``. A ``rel`` with several
    space-separated values registers the target under each; the first target
    wins for a repeated rel. Targets are returned as written (maybe relative).
    """
    out: dict[str, str] = {}
    for match in _LINK_RE.finditer(value or ""):
        target, params = match.group(1).strip(), match.group(2)
        for name, raw in _PARAM_RE.findall(params):
            if name.lower() != "rel":
                continue
            rels = raw.strip('"').lower().split()
            for rel in rels:
                out.setdefault(rel, target)
    return out


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


# --------------------------------------------------------------------------- the pool


_PoolKey = tuple[str, str, int, str]  # scheme, host, port, proxy ("" for none)


@dataclass(slots=True)
class _Idle:
    conn: http.client.HTTPConnection
    since: float


@dataclass(slots=True)
class _Route:
    key: _PoolKey
    scheme: str
    host: str
    port: int
    target: str  # what goes on the request line: path?query, or the absolute URL via a proxy
    proxy: tuple[str, str, int, dict[str, str]] | None = None  # scheme, host, port, headers


@dataclass(slots=True)
class _PoolStats:
    created: int = 0
    reused: int = 0


class _Pool:
    """Idle keep-alive connections per route. Connections in use are not tracked."""

    def __init__(self, max_idle_per_host: int, idle_timeout: float, clock: Callable[[], float]):
        self._max_idle = max_idle_per_host
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: dict[_PoolKey, list[_Idle]] = {}
        self._closed = False
        self.stats = _PoolStats()

    def take(self, key: _PoolKey) -> http.client.HTTPConnection | None:
        now = self._clock()
        stale: list[http.client.HTTPConnection] = []
        found: http.client.HTTPConnection | None = None
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                entry = idle.pop()  # most recently used first: most likely still open
                if now - entry.since > self._idle_timeout:
                    stale.append(entry.conn)
                    continue
                found = entry.conn
                self.stats.reused += 1
                break
        for conn in stale:
            conn.close()
        return found

    def give(self, key: _PoolKey, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self._max_idle:
                    idle.append(_Idle(conn, self._clock()))
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            entries = [e for idle in self._idle.values() for e in idle]
            self._idle.clear()
        for entry in entries:
            entry.conn.close()

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())


# --------------------------------------------------------------------------- the client


@dataclass(slots=True)
class _Outcome:
    response: HttpResponse | None = None
    error: BaseException | None = None
    reused: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard the client tries before giving up on one request."""

    max_retries: int = 3
    """Retries after the first attempt (connection errors, 5xx, short rate limits)."""
    backoff_base: float = 0.5
    """First backoff in seconds; doubles per retry, full jitter."""
    backoff_max: float = 30.0
    max_retry_wait: float = 30.0
    """Longest server-requested wait (Retry-After, rate-limit reset) slept in-line.
    Longer waits raise :class:`RateLimitedError` with ``retry_at`` instead."""
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({500, 502, 503, 504}))


class HttpClient:
    """A thread-safe keep-alive HTTP client for connectors. See the module docstring."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        user_agent: str = DEFAULT_USER_AGENT,
        redactor: Redactor | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        max_idle_per_host: int = 8,
        idle_timeout: float = 50.0,
        max_body: int = DEFAULT_MAX_BODY,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = True,
        rng: random.Random | None = None,
    ):
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.timeout = timeout
        self.policy = RetryPolicy(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            max_retry_wait=max_retry_wait,
        )
        self.user_agent = user_agent
        self.redactor = redactor if redactor is not None else Redactor()
        self._sleep = sleep
        self._clock = clock
        self._pool = _Pool(max_idle_per_host, idle_timeout, clock)
        self.max_body = max_body
        self._ssl_context = ssl_context
        self._ssl_lock = threading.Lock()
        self._trust_env = trust_env
        self._rng = rng or random.Random()
        self._closed = False

    # ------------------------------------------------------------------ public API

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, object] | Iterable[tuple[str, object]] | None = None,
        json: Any = None,
        data: bytes | str | Mapping[str, object] | None = None,
        timeout: float | None = None,
        raise_for_status: bool = True,
        idempotent: bool | None = None,
        follow_redirects: bool = True,
        max_retry_wait: float | None = None,
    ) -> HttpResponse:
        """Send one request, retrying as the policy allows; return the final response.

        ``params`` are appended to the URL's query; ``json`` is sent as
        ``application/json``; ``data`` as bytes, text, or (a mapping) a
        form-encoded body. 2xx and 304 are returned; other statuses raise the
        matching :class:`HttpError` unless ``raise_for_status`` is false.
        ``idempotent`` (default: by method) allows retrying after a failure
        that may have reached the server.
        """
        if self._closed:
            raise NetworkError("HTTP client is closed", url=redact_url(url))
        method = method.upper()
        url = _with_params(url, params)
        body, body_headers = _encode_body(json, data)
        merged = self._base_headers(headers, body_headers)
        may_resend = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        wait_cap = self.policy.max_retry_wait if max_retry_wait is None else max_retry_wait
        started_host = urlsplit(url).hostname

        attempt = 0
        redirects = 0
        while True:
            outcome = self._exchange(method, url, merged, body, timeout or self.timeout)
            if outcome.error is not None:
                if may_resend and attempt < self.policy.max_retries:
                    delay = self._backoff(attempt)
                    log.debug(
                        "%s %s failed (%s); retry %d in %.2fs",
                        method,
                        self._safe_url(url),
                        outcome.error.__class__.__name__,
                        attempt + 1,
                        delay,
                    )
                    self._sleep(delay)
                    attempt += 1
                    continue
                raise NetworkError(
                    self._message(method, url, f"failed: {_describe_exc(outcome.error)}"),
                    url=self._safe_url(url),
                ) from None
            resp = outcome.response
            if resp is None:  # pragma: no cover - _exchange sets one or the other
                raise NetworkError(self._message(method, url, "no response"))

            if follow_redirects and resp.status in REDIRECT_STATUSES and "location" in resp.headers:
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise BadResponseError(
                        self._message(method, url, f"more than {MAX_REDIRECTS} redirects"),
                        status=resp.status,
                        url=self._safe_url(url),
                    )
                url = urljoin(url, resp.headers["location"])
                if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                    merged = {k: v for k, v in merged.items() if k.lower() != "content-type"}
                if urlsplit(url).hostname != started_host:
                    # Never hand our credentials to another host.
                    merged = {
                        k: v
                        for k, v in merged.items()
                        if k.lower() not in ("authorization", "cookie", "proxy-authorization")
                    }
                continue

            rate_wait = self._rate_limit_wait(resp)
            if rate_wait is not None:
                wait = rate_wait if rate_wait > 0 else self._backoff(attempt)
                if attempt < self.policy.max_retries and wait <= wait_cap:
                    log.info(
                        "%s %s rate limited (%d); waiting %.1fs",
                        method,
                        self._safe_url(url),
                        resp.status,
                        wait,
                    )
                    self._sleep(wait)
                    attempt += 1
                    continue
                retry_at = self._clock() + max(wait, 0.0)
                raise RateLimitedError(
                    self._message(
                        method,
                        url,
                        f"rate limited ({resp.status}); retry after "
                        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(retry_at))}",
                    ),
                    status=resp.status,
                    url=self._safe_url(url),
                    retry_at=retry_at,
                    body=resp.body,
                    headers=resp.headers,
                )

            if resp.status in self.policy.retry_statuses:
                server_wait = parse_retry_after(resp.headers.get("retry-after"), self._clock())
                wait = server_wait if server_wait is not None else self._backoff(attempt)
                # 503/429 mean "not processed": safe to resend any method.
                resend_ok = may_resend or resp.status == 503
                if resend_ok and attempt < self.policy.max_retries and wait <= wait_cap:
                    log.debug(
                        "%s %s answered %d; retry %d in %.2fs",
                        method,
                        self._safe_url(url),
                        resp.status,
                        attempt + 1,
                        wait,
                    )
                    self._sleep(wait)
                    attempt += 1
                    continue

            if raise_for_status and not (resp.ok or resp.status == 304):
                raise self._status_error(method, url, resp)
            return resp

    def get(self, url: str, **kwargs: Any) -> HttpResponse:
        """``request("GET", url, ...)``."""
        return self.request("GET", url, **kwargs)

    def get_json(self, url: str, **kwargs: Any) -> Any:
        """GET and parse the JSON body (``Accept: application/json`` unless given)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if not any(k.lower() == "accept" for k in headers):
            headers["Accept"] = "application/json"
        return self.request("GET", url, headers=headers, **kwargs).json()

    def post_json(self, url: str, obj: Any, **kwargs: Any) -> Any:
        """POST ``obj`` as JSON and parse the JSON answer (``None`` for an empty body)."""
        resp = self.request("POST", url, json=obj, **kwargs)
        return resp.json() if resp.body else None

    def now(self) -> float:
        """The client's clock (unix time); connectors use it for ``retry_at`` arithmetic."""
        return self._clock()

    def close(self) -> None:
        """Close every pooled connection. Idempotent; later requests fail."""
        self._closed = True
        self._pool.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pool_stats(self) -> tuple[int, int, int]:
        """``(connections created, connections reused, idle now)`` - for tests and describe()."""
        s = self._pool.stats
        return s.created, s.reused, self._pool.idle_count()

    # ------------------------------------------------------------------ internals

    def _base_headers(
        self, headers: Mapping[str, str] | None, body_headers: Mapping[str, str]
    ) -> dict[str, str]:
        merged: dict[str, str] = {
            "User-Agent": self.user_agent,
            "Accept-Encoding": "gzip",
            "Accept": "*/*",
        }
        merged.update(body_headers)
        lowered = {k.lower(): k for k in merged}
        for name, value in (headers or {}).items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} contains a line break")
            existing = lowered.get(name.lower())
            if existing is not None:
                del merged[existing]
            merged[name] = value
            lowered[name.lower()] = name
        return merged

    def _route(self, url: str) -> _Route:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise BadRequestError(f"unsupported URL scheme {scheme!r} in {redact_url(url)}")
        host = parts.hostname
        if not host:
            raise BadRequestError(f"URL has no host: {redact_url(url)}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise BadRequestError(f"URL has a bad port: {redact_url(url)}") from None
        path = parts.path or "/"
        target = f"{path}?{parts.query}" if parts.query else path
        proxy = self._proxy_for(scheme, host)
        if proxy is None:
            return _Route((scheme, host, port, ""), scheme, host, port, target)
        p_scheme, p_host, p_port, _p_headers = proxy
        key = (scheme, host, port, f"{p_scheme}://{p_host}:{p_port}")
        if scheme == "http":
            # Plain HTTP through a proxy: absolute-form request line, no tunnel.
            absolute = urlunsplit(("http", parts.netloc.rpartition("@")[2], path, parts.query, ""))
            return _Route(key, scheme, host, port, absolute, proxy)
        return _Route(key, scheme, host, port, target, proxy)

    def _proxy_for(self, scheme: str, host: str) -> tuple[str, str, int, dict[str, str]] | None:
        if not self._trust_env:
            return None
        # urllib.request (and tempfile, shutil ... behind it) only once a
        # request goes out: an idle daemon does not need its ~1 MB.
        import urllib.request

        proxies = urllib.request.getproxies()
        proxy_url = proxies.get(scheme)
        if not proxy_url:
            return None
        if urllib.request.proxy_bypass(host):
            return None
        p = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
        if not p.hostname:
            return None
        headers: dict[str, str] = {}
        if p.username is not None:
            cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(cred).decode()
            self.redactor.add(p.password)
        p_scheme = (p.scheme or "http").lower()
        return p_scheme, p.hostname, p.port or (443 if p_scheme == "https" else 8080), headers

    def _context(self) -> ssl.SSLContext:
        with self._ssl_lock:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            return self._ssl_context

    def _connect(self, route: _Route, timeout: float) -> http.client.HTTPConnection:
        self._pool.stats.created += 1
        if route.proxy is None:
            if route.scheme == "https":
                return http.client.HTTPSConnection(
                    route.host, route.port, timeout=timeout, context=self._context()
                )
            return http.client.HTTPConnection(route.host, route.port, timeout=timeout)
        _p_scheme, p_host, p_port, p_headers = route.proxy
        conn: http.client.HTTPConnection
        if route.scheme == "https":
            conn = http.client.HTTPSConnection(
                p_host, p_port, timeout=timeout, context=self._context()
            )
            conn.set_tunnel(route.host, route.port, headers=p_headers)
        else:
            conn = http.client.HTTPConnection(p_host, p_port, timeout=timeout)
        return conn

    def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> _Outcome:
        """One request on one connection, plus one silent resend if a pooled one was stale."""
        route = self._route(url)
        send_headers = dict(headers)
        if route.proxy is not None and route.scheme == "http":
            send_headers.update(route.proxy[3])
        for fresh in (False, True):
            conn = None if fresh else self._pool.take(route.key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(route, timeout)
            else:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
            try:
                resp = self._send(conn, method, route, send_headers, body)
            except _STALE_ERRORS as exc:
                conn.close()
                if reused:
                    log.debug("pooled connection to %s was stale: %r", route.host, exc)
                    continue
                return _Outcome(error=exc)
            except _CONNECTION_ERRORS as exc:
                conn.close()
                return _Outcome(error=exc)
            except _TooLarge:
                conn.close()
                raise BadResponseError(
                    self._message(method, url, f"response larger than {self.max_body} bytes"),
                    url=self._safe_url(url),
                ) from None
            except _BadEncoding as exc:
                conn.close()
                raise BadResponseError(
                    self._message(method, url, f"undecodable body: {exc}"),
                    url=self._safe_url(url),
                ) from None
            status, resp_headers, payload, will_close = resp
            if will_close:
                conn.close()
            else:
                self._pool.give(route.key, conn)
            return _Outcome(HttpResponse(status, resp_headers, payload, url), reused=reused)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        route: _Route,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> tuple[int, Headers, bytes, bool]:
        conn.putrequest(method, route.target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        try:
            raw = resp.read(self.max_body + 1) if method != "HEAD" else b""
            if len(raw) > self.max_body:
                raise _TooLarge
            if not resp.isclosed():
                # Drain so the connection is reusable (read(amt) may stop early).
                rest = resp.read()
                if rest:
                    raise _TooLarge
        except _TooLarge:
            resp.close()
            raise
        resp_headers = Headers(resp.getheaders())
        encoding = resp_headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate") and raw:
            raw = self._decompress(raw, encoding)
        return resp.status, resp_headers, raw, bool(resp.will_close)

    def _decompress(self, raw: bytes, encoding: str) -> bytes:
        wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(raw, self.max_body + 1)
            if len(out) > self.max_body or d.unconsumed_tail:
                raise _TooLarge
            return out + d.flush()
        except zlib.error as exc:
            raise _BadEncoding(f"bad {encoding} data: {exc}") from None

    def _rate_limit_wait(self, resp: HttpResponse) -> float | None:
        """Seconds until a rate limit lifts (0: unknown, back off), or None if not limited."""
        status = resp.status
        h = resp.headers
        remaining = h.get("x-ratelimit-remaining", "").strip()
        retry_after = h.get("retry-after")
        if status == 429 or (status == 403 and (remaining == "0" or retry_after is not None)):
            now = self._clock()
            wait = parse_retry_after(retry_after, now)
            if wait is not None:
                return wait
            reset = h.get("x-ratelimit-reset", "").strip()
            if remaining == "0" and reset.isdigit():
                # One extra second: the reset is whole seconds and clocks drift.
                return max(0.0, int(reset) - now) + 1.0
            return 0.0
        return None

    def _backoff(self, attempt: int) -> float:
        cap = min(self.policy.backoff_max, self.policy.backoff_base * (2**attempt))
        return self._rng.uniform(0, cap)

    def _status_error(self, method: str, url: str, resp: HttpResponse) -> HttpError:
        status = resp.status
        cls: type[HttpError]
        if status == 401:
            cls = AuthFailedError
        elif status == 403:
            cls = PermissionDeniedError
        elif status in (404, 410):
            cls = NotFoundError
        elif status >= 500:
            cls = NetworkError
        elif 400 <= status < 500:
            cls = BadRequestError
        else:
            cls = BadResponseError
        return cls(
            self._message(method, url, f"answered HTTP {status}"),
            status=status,
            url=self._safe_url(url),
            body=resp.body,
            headers=resp.headers,
        )

    def _safe_url(self, url: str) -> str:
        return self.redactor.scrub(redact_url(url))

    def _message(self, method: str, url: str, what: str) -> str:
        return self.redactor.scrub(f"{method} {redact_url(url)} {what}")


class _TooLarge(Exception):
    pass


class _BadEncoding(Exception):
    pass


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _with_params(
    url: str, params: Mapping[str, object] | Iterable[tuple[str, object]] | None
) -> str:
    if not params:
        return url
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    encoded = urlencode([(k, _param_str(v)) for k, v in pairs if v is not None])
    if not encoded:
        return url
    parts = urlsplit(url)
    query = f"{parts.query}&{encoded}" if parts.query else encoded
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _param_str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _encode_body(
    json: Any, data: bytes | str | Mapping[str, object] | None
) -> tuple[bytes | None, dict[str, str]]:
    if json is not None and data is not None:
        raise ValueError("pass json or data, not both")
    if json is not None:
        body = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
        return body, {"Content-Type": "application/json"}
    if data is None:
        return None, {}
    if isinstance(data, bytes):
        return data, {}
    if isinstance(data, str):
        return data.encode(), {"Content-Type": "text/plain; charset=utf-8"}
    form = urlencode([(k, _param_str(v)) for k, v in data.items() if v is not None])
    return form.encode(), {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
