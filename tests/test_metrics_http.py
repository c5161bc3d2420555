"""The /metrics handler: auth matrix, identical 401s, negotiation over a real socket."""

from __future__ import annotations

import base64
import gzip
import http.client
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from statewave_runner.errors import ConfigError
from statewave_runner.httptypes import Headers, Request, Response
from statewave_runner.metrics import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, Registry
from statewave_runner.metrics_http import UNAUTHORIZED, metrics_handler
from tests._metrics_oracle import check_openmetrics, check_text

TOKEN = "s3cr3t-token-value"
USER, PASSWORD = "ops", "sword:fish ✓"


def _registry() -> Registry:
    r = Registry()
    r.counter("app_scrapes_total", "x", ["kind"]).labels("github").inc(7)
    return r


def _get(*headers: tuple[str, str], method: str = "GET") -> Request:
    return Request(method=method, path="/metrics", headers=Headers(headers))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


HANDLERS: dict[str, Callable[[], Callable[[Request], Response]]] = {
    "none": lambda: metrics_handler(_registry()),
    "bearer": lambda: metrics_handler(_registry(), auth_kind="bearer", token=TOKEN),
    "basic": lambda: metrics_handler(
        _registry(), auth_kind="basic", username=USER, password=PASSWORD
    ),
}

# (description, headers, allowed-under-modes)
CASES: list[tuple[str, tuple[tuple[str, str], ...], set[str]]] = [
    ("missing", (), {"none"}),
    ("right bearer", (("Authorization", f"Bearer {TOKEN}"),), {"none", "bearer"}),
    ("bearer, scheme lower-case", (("authorization", f"bearer {TOKEN}"),), {"none", "bearer"}),
    ("wrong bearer", (("Authorization", "Bearer wrong"),), {"none"}),
    ("bearer prefix of token", (("Authorization", f"Bearer {TOKEN[:-1]}"),), {"none"}),
    ("bearer token + suffix", (("Authorization", f"Bearer {TOKEN}x"),), {"none"}),
    ("bearer empty", (("Authorization", "Bearer "),), {"none"}),
    ("bearer bare scheme", (("Authorization", "Bearer"),), {"none"}),
    ("token without scheme", (("Authorization", TOKEN),), {"none"}),
    ("right basic", (("Authorization", _basic(USER, PASSWORD)),), {"none", "basic"}),
    ("basic wrong password", (("Authorization", _basic(USER, "nope")),), {"none"}),
    ("basic wrong user", (("Authorization", _basic("admin", PASSWORD)),), {"none"}),
    (
        "basic no colon",
        (("Authorization", "Basic " + base64.b64encode(b"ops").decode()),),
        {"none"},
    ),
    ("basic bad base64", (("Authorization", "Basic !!!not-base64"),), {"none"}),
    ("basic empty", (("Authorization", "Basic "),), {"none"}),
    (
        "basic creds as bearer",
        (("Authorization", "Bearer " + _basic(USER, PASSWORD)[6:]),),
        {"none"},
    ),
    ("token as basic", (("Authorization", f"Basic {TOKEN}"),), {"none"}),
    (
        "two headers",
        (("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")),
        {"none"},
    ),
    ("unknown scheme", (("Authorization", f"Digest {TOKEN}"),), {"none"}),
    ("non-ascii", (("Authorization", "Bearer tökén"),), {"none"}),
]


@pytest.mark.parametrize("mode", sorted(HANDLERS))
@pytest.mark.parametrize(("case", "headers", "allowed"), CASES, ids=[c[0] for c in CASES])
def test_auth_matrix(
    mode: str, case: str, headers: tuple[tuple[str, str], ...], allowed: set[str]
) -> None:
    response = HANDLERS[mode]()(_get(*headers))
    if mode in allowed:
        assert response.status == 200, case
        check_text(response.body, promtool=False)
    else:
        assert response == UNAUTHORIZED, case


def test_every_401_is_identical_whatever_the_mode_or_fault() -> None:
    seen = set()
    for mode in ("bearer", "basic"):
        handler = HANDLERS[mode]()
        for _case, headers, allowed in CASES:
            if mode in allowed:
                continue
            r = handler(_get(*headers))
            seen.add((r.status, r.body, r.headers))
    assert seen == {
        (
            401,
            b'{"error":"unauthorized"}',
            (
                ("Content-Type", "application/json"),
                ("WWW-Authenticate", 'Basic realm="metrics", Bearer'),
                ("Cache-Control", "no-store"),
            ),
        )
    }


def test_the_401_does_not_echo_credentials() -> None:
    r = HANDLERS["bearer"]()(_get(("Authorization", "Bearer guess-123")))
    assert b"guess-123" not in r.body and all("guess" not in v for _, v in r.headers)


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"auth_kind": "bearer"}, "runner.metrics.auth.token"),
        ({"auth_kind": "bearer", "token": ""}, "runner.metrics.auth.token"),
        ({"auth_kind": "basic", "username": "u"}, "runner.metrics.auth.password"),
        ({"auth_kind": "basic", "password": "pw-123456"}, "runner.metrics.auth.username"),
        (
            {"auth_kind": "basic", "username": "a:b", "password": "pw-123456"},
            "runner.metrics.auth.username",
        ),
        ({"auth_kind": "digest"}, "runner.metrics.auth.kind"),
    ],
)
def test_incomplete_auth_config_is_a_config_error(kwargs: dict[str, str], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        metrics_handler(Registry(), **kwargs)  # type: ignore[arg-type]
    assert path in str(info.value)
    secret = kwargs.get("token") or kwargs.get("password")
    if secret:
        assert secret not in str(info.value)


def test_methods() -> None:
    handler = HANDLERS["bearer"]()
    auth = ("Authorization", f"Bearer {TOKEN}")
    assert handler(_get(auth, method="HEAD")).status == 200
    assert handler(_get(auth, method="POST")).status == 405
    # Unauthenticated callers learn nothing, not even the method rule.
    assert handler(_get(method="POST")) == UNAUTHORIZED


def test_handler_negotiates_format_and_encoding() -> None:
    handler = HANDLERS["none"]()
    r = handler(
        _get(
            ("Accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
            ("Accept-Encoding", "gzip"),
        )
    )
    assert r.header("Content-Type") == CONTENT_TYPE_OPENMETRICS
    assert r.header("Content-Encoding") == "gzip"
    samples = check_openmetrics(gzip.decompress(r.body))
    assert samples[("app_scrapes_total", (("kind", "github"),))] == 7


# --------------------------------------------------------------------------- real socket


@pytest.fixture
def served() -> Iterator[tuple[str, int]]:
    """The bearer handler behind a minimal stdlib HTTP server on 127.0.0.1:0."""
    handler = HANDLERS["bearer"]()

    class Adapter(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            request = Request(
                method=self.command,
                path=self.path,
                headers=Headers(list(self.headers.items())),
                remote_addr=self.client_address[0],
            )
            response = handler(request)
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_HEAD = do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Adapter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _fetch(addr: tuple[str, int], headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_scrape_over_a_real_socket(served: tuple[str, int]) -> None:
    status, headers, body = _fetch(served, {})
    assert status == 401
    assert headers["www-authenticate"] == 'Basic realm="metrics", Bearer'

    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = _fetch(served, auth)
    assert status == 200 and headers["content-type"] == CONTENT_TYPE_TEXT
    assert check_text(body)[("app_scrapes_total", (("kind", "github"),))] == 7

    status, headers, body = _fetch(
        served,
        {
            **auth,
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "Accept-Encoding": "gzip",
        },
    )
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_OPENMETRICS
    assert headers["content-encoding"] == "gzip"
    check_openmetrics(gzip.decompress(body))
