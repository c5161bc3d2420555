"""Slack Events API deliveries, signed with real HMAC-SHA256 as Slack signs them.

Independent of ``statewave_runner.connectors.slack`` (its own ``hmac`` call), so
a test checks the receiver against the scheme, not against itself::

    body = event_callback(message(channel="C1", text="hi"), event_id="Ev1")
    headers = signed_headers(SECRET, body, timestamp=now)
    status, answer = deliver(url, headers, body)   # over a real socket

Slack's published worked example (api.slack.com "Verifying requests from
Slack") is ``DOC_SECRET`` / ``DOC_TIMESTAMP`` / ``DOC_BODY`` -> ``DOC_SIGNATURE``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import itertools
import json
import time
from typing import Any
from urllib.parse import urlsplit

DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TIMESTAMP = "1531420618"
DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

_ids = itertools.count(1)


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """``v0=`` + hex HMAC-SHA256(secret, ``v0:{timestamp}:{body}``)."""
    base = f"v0:{timestamp}:".encode() + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str,
    body: bytes,
    *,
    timestamp: int | float | None = None,
    retry_num: int | None = None,
) -> dict[str, str]:
    """The headers Slack sends with ``body`` (``retry_num`` adds X-Slack-Retry-Num)."""
    ts = str(int(time.time() if timestamp is None else timestamp))
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature(secret, ts, body),
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = "http_error"
    return headers


def encode(payload: Any) -> bytes:
    """Compact JSON, as Slack sends it."""
    return json.dumps(payload, separators=(",", ":")).encode()


def event_callback(
    event: dict[str, Any], *, event_id: str | None = None, team_id: str = "T01ABCD"
) -> bytes:
    """An ``event_callback`` envelope around ``event`` (a fresh event id by default)."""
    return encode(
        {
            "token": "verification-token-unused",
            "team_id": team_id,
            "api_app_id": "A0APP",
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(_ids):08d}",
            "event_time": 1_700_000_000,
        }
    )


def url_verification(challenge: str) -> bytes:
    return encode({"token": "t", "challenge": challenge, "type": "url_verification"})


def message(
    *,
    channel: str = "C01XYZ",
    text: str = "hello",
    ts: str = "1700000000.000100",
    user: str | None = "U01USER",
    thread_ts: str | None = None,
    channel_type: str = "channel",
    **extra: Any,
) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": channel_type,
    }
    if user is not None:
        ev["user"] = user
    if thread_ts is not None:
        ev["thread_ts"] = thread_ts
    ev.update(extra)
    return ev


def reaction(
    *,
    added: bool = True,
    user: str = "U02REACT",
    name: str = "thumbsup",
    channel: str = "C01XYZ",
    item_ts: str = "1700000000.000100",
    event_ts: str = "1700000100.000200",
    item_type: str = "message",
) -> dict[str, Any]:
    return {
        "type": "reaction_added" if added else "reaction_removed",
        "user": user,
        "reaction": name,
        "item_user": "U01USER",
        "item": {"type": item_type, "channel": channel, "ts": item_ts},
        "event_ts": event_ts,
    }


def pin(
    *,
    added: bool = True,
    user: str = "U03PIN",
    channel: str = "C01XYZ",
    message_ts: str | None = "1700000000.000100",
    text: str | None = "remember this",
    event_ts: str = "1700000200.000300",
) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "message", "channel": channel, "created": 1_700_000_200}
    if message_ts is not None:
        item["message"] = {"ts": message_ts, "user": "U01USER"}
        if text is not None:
            item["message"]["text"] = text
    return {
        "type": "pin_added" if added else "pin_removed",
        "user": user,
        "channel_id": channel,
        "item": item,
        "event_ts": event_ts,
    }


def deliver(
    url: str, headers: dict[str, str], body: bytes, *, timeout: float = 10.0
) -> tuple[int, Any]:
    """POST one delivery over a real socket; ``(status, parsed JSON or raw bytes)``."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path or "/", body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw
