"""The ``/metrics`` endpoint: authentication, negotiation, the scrape.

``metrics_handler(registry, auth_kind=...)`` returns a plain
``Callable[[Request], Response]`` the HTTP server mounts at the configured
path. ``/healthz`` and ``/readyz`` never go through it: they stay open.

Every authentication failure - no header, wrong scheme, bad base64, wrong user,
wrong password, wrong token, two headers - gets the same 401, byte for byte,
whatever mode is configured, so a scraper learns nothing about which part was
wrong. Credentials are compared as SHA-256 digests with
:func:`hmac.compare_digest`: equal-length inputs, so the time taken says
nothing about the secret's length or content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable

from .errors import ConfigError, Issue
from .httptypes import Request, Response
from .metrics import Registry

__all__ = ["AUTH_KINDS", "UNAUTHORIZED", "metrics_handler"]

AUTH_KINDS = ("none", "bearer", "basic")

UNAUTHORIZED = Response(
    401,
    b'{"error":"unauthorized"}',
    (
        ("Content-Type", "application/json"),
        ("WWW-Authenticate", 'Basic realm="metrics", Bearer'),
        ("Cache-Control", "no-store"),
    ),
)
"""The one 401 every failed scrape gets, whatever the mode and whatever was wrong."""

_METHOD_NOT_ALLOWED = Response(
    405,
    b'{"error":"method_not_allowed"}',
    (("Content-Type", "application/json"), ("Allow", "GET, HEAD")),
)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _authorizer(
    auth_kind: str,
    token: str | None,
    username: str | None,
    password: str | None,
) -> Callable[[Request], bool]:
    if auth_kind == "none":
        return lambda _request: True
    if auth_kind == "bearer":
        if not token:
            raise ConfigError(
                "metrics auth is incomplete",
                [Issue("runner.metrics.auth.token", 'required when kind = "bearer"')],
            )
        want_token = _digest(token.encode("utf-8"))

        def bearer(request: Request) -> bool:
            presented = _credentials(request, "bearer")
            if presented is None:
                return False
            return hmac.compare_digest(_digest(presented), want_token)

        return bearer
    if auth_kind == "basic":
        issues = [
            Issue(f"runner.metrics.auth.{field}", 'required when kind = "basic"')
            for field, value in (("username", username), ("password", password))
            if not value
        ]
        if issues:
            raise ConfigError("metrics auth is incomplete", issues)
        if username is not None and ":" in username:
            raise ConfigError(
                "metrics auth is invalid",
                [Issue("runner.metrics.auth.username", "must not contain ':' (RFC 7617)")],
            )
        want_user = _digest((username or "").encode("utf-8"))
        want_password = _digest((password or "").encode("utf-8"))

        def basic(request: Request) -> bool:
            presented = _credentials(request, "basic")
            if presented is None:
                return False
            try:
                decoded = base64.b64decode(presented, validate=True)
            except (binascii.Error, ValueError):
                return False
            user, sep, pw = decoded.partition(b":")
            # Both comparisons always run: which one failed must not show in the timing.
            user_ok = hmac.compare_digest(_digest(user), want_user)
            password_ok = hmac.compare_digest(_digest(pw), want_password)
            return bool(sep) & user_ok & password_ok

        return basic
    raise ConfigError(
        "metrics auth is invalid",
        [
            Issue(
                "runner.metrics.auth.kind",
                f"unknown kind {auth_kind!r}; expected one of {', '.join(AUTH_KINDS)}",
            )
        ],
    )


def _credentials(request: Request, scheme: str) -> bytes | None:
    """The credentials after ``scheme`` in the one Authorization header, or None."""
    values = request.headers.get_all("authorization")
    if len(values) != 1:
        return None
    got_scheme, _, rest = values[0].strip().partition(" ")
    if got_scheme.lower() != scheme:  # auth schemes are case-insensitive (RFC 9110 11.1)
        return None
    rest = rest.strip()
    if not rest:
        return None
    try:
        return rest.encode("utf-8")
    except UnicodeEncodeError:
        return None


def metrics_handler(
    registry: Registry,
    *,
    auth_kind: str = "none",
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Callable[[Request], Response]:
    """The ``/metrics`` handler for ``registry`` with the configured auth.

    ``auth_kind`` is ``"none"``, ``"bearer"`` (``token``) or ``"basic"``
    (``username``, ``password``); a missing credential raises
    :class:`~statewave_runner.errors.ConfigError` naming the config key.
    ``GET`` and ``HEAD`` are served (the server drops a HEAD body); other
    methods get 405 - after authentication, so an anonymous caller sees only
    the 401.
    """
    authorized = _authorizer(auth_kind, token, username, password)

    def handle(request: Request) -> Response:
        if not authorized(request):
            return UNAUTHORIZED
        if request.method not in ("GET", "HEAD"):
            return _METHOD_NOT_ALLOWED
        body, headers = registry.render(
            request.headers.get("accept"), request.headers.get("accept-encoding")
        )
        return Response(200, body, (*headers.items(), ("Cache-Control", "no-store")))

    return handle
