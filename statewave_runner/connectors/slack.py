"""Push receiver ``slack``: the Slack Events API, mounted at ``/slack/<name>/events``.

Check order, status codes, response bodies, episode shapes and idempotency
keys are those of the Node receiver (``@statewavedev/connectors-slack``
``webhook.ts``), except where it loses or misreads events:

* the ``event_id`` is marked as seen only together with its episode
  (``ctx.emit_once()``, one transaction), and an emit failure answers 503 so
  Slack retries (Node marks first and answers 200: the event is lost);
* dedup lives in the state backend with a TTL (Node: a per-process set);
* a timestamp header that is not an integer (``1700000000abc``) is refused,
  a signed body that is JSON but not an object is 400, a body over 1 MiB is 413;
* the configured ``subject`` overrides every episode subject (Node ignores it);
* ``message_changed`` / ``message_deleted`` become ``*.message.edited`` /
  ``*.message.deleted`` episodes (Node drops them as ``empty_text``).

Nothing here does network I/O: a request costs one HMAC and one durable
``emit_once`` (the put and the event-id mark in one transaction, which also
tells a retry apart), well inside Slack's 3-second budget.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import EmitError
from ..httptypes import Request, Response
from ._js import js_parse_float, js_trim
from .base import (
    ConnectorSpec,
    Episode,
    MappingError,
    PushConfig,
    PushContext,
    SourcePointer,
    iso_utc,
    make_episode,
    option,
    secret,
)

MAX_AGE_SECONDS = 300
MAX_BODY_BYTES = 1024 * 1024
# Slack retries for about an hour (immediately, 1 min, 5 min); a day is ample.
DEDUP_TTL_SECONDS = 24 * 3600.0
PIN_SNIPPET = 240
_TIMESTAMP = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True, kw_only=True)
class SlackPushConfig(PushConfig):
    """``[[push.slack]]``: a Slack app's Events API request URL."""

    signing_secret: str = secret(doc="the app's Signing Secret (Basic Information page)")
    channels: list[str] = option(
        doc="channel ids (C.../G...) whose messages, reactions and pins are kept; "
        "DMs and group DMs are governed by accept_dms / accept_mpim",
        example='["C0123ABCD"]',
    )
    accept_dms: bool = option(False, doc="keep direct messages to the bot (message.im)")
    accept_mpim: bool = option(False, doc="keep group direct messages (message.mpim)")

    def check(self) -> Iterable[tuple[str, str]]:
        if not self.signing_secret:
            yield ("signing_secret", "must not be empty")
        if not self.channels:
            yield ("channels", "required (non-empty array of channel ids)")
        elif any(not isinstance(c, str) or not c for c in self.channels):
            yield ("channels", "entries must be non-empty channel ids")


# --------------------------------------------------------------------------- signature


def sign(signing_secret: str, timestamp: str, body: bytes) -> str:
    """``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}`` - Slack's signature v0."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def verify(
    signing_secret: str,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    now: float,
    max_age: int = MAX_AGE_SECONDS,
) -> str | None:
    """``None`` if the request is authentic and fresh, else the Node error word.

    ``missing_headers`` (a header absent, empty or not an integer),
    ``stale_timestamp`` (more than ``max_age`` seconds off, either way; exactly
    ``max_age`` passes) or ``bad_signature``. The MAC covers the raw bytes and
    is compared in constant time.
    """
    if not signature or not timestamp:
        return "missing_headers"
    stamp = js_trim(timestamp)
    if not _TIMESTAMP.match(stamp):
        return "missing_headers"
    ts = int(stamp)
    if abs(math.floor(now) - ts) > max_age:
        return "stale_timestamp"
    # Node signs the parsed integer; identical for every timestamp Slack sends.
    expected = sign(signing_secret, str(ts), body).encode()
    given = signature.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(expected, given):
        return "bad_signature"
    return None


# --------------------------------------------------------------------------- mapping


def _ts_to_iso(ts: Any) -> str:
    """Slack ``"seconds.micros"`` -> ISO, as Node's ``new Date(parseFloat(ts) * 1000)``."""
    seconds = js_parse_float(ts) if isinstance(ts, str) else math.nan
    if not math.isfinite(seconds):
        return iso_utc(None)
    return iso_utc(math.trunc(seconds * 1000))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _surface(channel_type: Any) -> str:
    """``dm``, ``mpim`` or ``channel``."""
    if channel_type == "im":
        return "dm"
    if channel_type == "mpim":
        return "mpim"
    return "channel"


_KIND_PREFIX = {"dm": "slack.dm.", "mpim": "slack.mpim.", "channel": "slack."}


def _message_subject(
    surface: str, channel: str, user: str | None, team_subject: str, override: str | None
) -> str:
    if override:
        return override
    if surface == "dm" and user:
        return f"dm:{user}"
    if surface == "mpim":
        return f"mpim:{channel}"
    return team_subject


def _author(user: str | None, bot_id: str | None) -> str:
    if user:
        return f"<@{user}>"
    if bot_id:
        return f"bot:{bot_id}"
    return "unknown user"


def _render(surface: str, author: str, channel: str, text: str) -> str:
    if surface == "dm":
        return f"{author} (DM): {text}"
    if surface == "mpim":
        return f"{author} (group DM): {text}"
    return f"{author} in {channel}: {text}"


def _workspace_meta(team: str, surface: str, channel: str, dm_user: str | None) -> dict[str, Any]:
    return {
        "workspace_id": team,
        "channel_id": channel,
        "dm_user_id": (dm_user if surface == "dm" else None),
        "is_mpim": True if surface == "mpim" else None,
    }


def map_message(ev: Mapping[str, Any], team: str, subject: str | None) -> Episode:
    """A posted message or thread reply (channel, DM or group DM), as Node maps it."""
    channel = str(ev.get("channel") or "")
    ts = ev.get("ts")
    if not isinstance(ts, str) or not ts:
        raise MappingError("message event has no ts")
    user = _str(ev.get("user"))
    bot_id = _str(ev.get("bot_id"))
    surface = _surface(ev.get("channel_type"))
    thread_ts = ev.get("thread_ts") if ev.get("thread_ts") is not None else ts
    reply = isinstance(thread_ts, str) and thread_ts != ts
    what = "thread.replied" if reply else "message.posted"
    kind = _KIND_PREFIX[surface] + what
    source_type = _KIND_PREFIX[surface] + ("thread.reply" if reply else "message")
    author = _author(user, bot_id)
    text = ev.get("text") if isinstance(ev.get("text"), str) else ""
    return make_episode(
        subject=_message_subject(surface, channel, user, f"team:{team}", subject),
        kind=kind,
        text=_render(surface, author, channel, str(text)),
        occurred_at=_ts_to_iso(ts),
        source=SourcePointer(source_type, f"{channel}:{ts}"),
        key_parts=["slack", team, channel, ts, kind],
        metadata={
            **_workspace_meta(team, surface, channel, user),
            "author_id": user,
            "author_label": author,
            "bot_id": bot_id,
            "thread_ts": thread_ts,
            "reply_count": 0,
        },
    )


def map_message_changed(ev: Mapping[str, Any], team: str, subject: str | None) -> Episode:
    """An edit: ``<author> edited <ts> in <channel>: <new text>`` (not in Node)."""
    message = ev.get("message")
    msg: Mapping[str, Any] = message if isinstance(message, dict) else {}
    channel = str(ev.get("channel") or "")
    surface = _surface(ev.get("channel_type"))
    orig_ts = msg.get("ts")
    edited = msg.get("edited")
    edit_ts = (edited or {}).get("ts") if isinstance(edited, dict) else None
    edit_ts = edit_ts or ev.get("event_ts") or ev.get("ts")
    user = _str(msg.get("user"))
    author = _author(user, _str(msg.get("bot_id")))
    kind = _KIND_PREFIX[surface] + "message.edited"
    text = msg.get("text") if isinstance(msg.get("text"), str) else ""
    where = {"dm": " (DM)", "mpim": " (group DM)", "channel": f" in {channel}"}[surface]
    return make_episode(
        subject=_message_subject(surface, channel, user, f"team:{team}", subject),
        kind=kind,
        text=f"{author} edited message {orig_ts}{where}: {text}",
        occurred_at=_ts_to_iso(edit_ts),
        source=SourcePointer(
            _KIND_PREFIX[surface] + "message.edit", f"{channel}:{orig_ts}:{edit_ts}"
        ),
        key_parts=["slack", team, channel, orig_ts, "edit", edit_ts, kind],
        metadata={
            **_workspace_meta(team, surface, channel, user),
            "author_id": user,
            "author_label": author,
            "message_ts": orig_ts,
            "edit_ts": edit_ts,
            "thread_ts": msg.get("thread_ts"),
        },
    )


def map_message_deleted(ev: Mapping[str, Any], team: str, subject: str | None) -> Episode:
    """A deletion: who wrote it and when it went, never the deleted text (not in Node)."""
    previous = ev.get("previous_message")
    prev: Mapping[str, Any] = previous if isinstance(previous, dict) else {}
    channel = str(ev.get("channel") or "")
    surface = _surface(ev.get("channel_type"))
    deleted_ts = ev.get("deleted_ts") or prev.get("ts")
    when = ev.get("event_ts") or ev.get("ts")
    user = _str(prev.get("user"))
    author = _author(user, _str(prev.get("bot_id")))
    kind = _KIND_PREFIX[surface] + "message.deleted"
    where = {"dm": " (DM)", "mpim": " (group DM)", "channel": f" in {channel}"}[surface]
    return make_episode(
        subject=_message_subject(surface, channel, user, f"team:{team}", subject),
        kind=kind,
        text=f"message {deleted_ts} by {author}{where} was deleted",
        occurred_at=_ts_to_iso(when),
        source=SourcePointer(_KIND_PREFIX[surface] + "message.delete", f"{channel}:{deleted_ts}"),
        key_parts=["slack", team, channel, deleted_ts, "delete", kind],
        metadata={
            **_workspace_meta(team, surface, channel, user),
            "author_id": user,
            "message_ts": deleted_ts,
            "thread_ts": prev.get("thread_ts"),
        },
    )


def map_reaction(ev: Mapping[str, Any], team: str, subject: str | None) -> Episode:
    """``reaction_added`` / ``reaction_removed`` as Node maps them."""
    added = ev.get("type") == "reaction_added"
    kind = "slack.reaction.added" if added else "slack.reaction.removed"
    item = ev["item"]
    user = ev.get("user")
    reaction = ev.get("reaction")
    channel, item_ts = item.get("channel"), item.get("ts")
    verb = "reacted" if added else "removed reaction"
    reactor = f"<@{user}>"
    return make_episode(
        subject=subject or f"team:{team}",
        kind=kind,
        text=f"{reactor} {verb} :{reaction}: on message {item_ts} in {channel}",
        occurred_at=_ts_to_iso(ev.get("event_ts")),
        source=SourcePointer(
            "slack.reaction.add" if added else "slack.reaction.remove",
            f"{channel}:{item_ts}:{user}:{reaction}",
        ),
        key_parts=["slack", team, channel, item_ts, "reaction", reaction, user, kind],
        metadata={
            "workspace_id": team,
            "channel_id": channel,
            "reactor_id": user,
            "reactor_label": reactor,
            "reaction": reaction,
            "item_message_ts": item_ts,
            "item_user_id": ev.get("item_user"),
        },
    )


def map_pin(ev: Mapping[str, Any], team: str, subject: str | None) -> Episode:
    """``pin_added`` / ``pin_removed`` as Node maps them (text snippet of 240 chars)."""
    added = ev.get("type") == "pin_added"
    kind = "slack.pin.added" if added else "slack.pin.removed"
    item = ev["item"]
    message = item.get("message") if isinstance(item.get("message"), dict) else None
    channel = ev.get("channel_id")
    pinner = f"<@{ev.get('user')}>"
    verb = "pinned" if added else "unpinned"
    message_ts = (message or {}).get("ts") or "(unknown ts)"
    raw_text = (message or {}).get("text")
    snippet = raw_text[:PIN_SNIPPET] if isinstance(raw_text, str) else ""
    text = f"{pinner} {verb} message {message_ts} in {channel}"
    if snippet:
        text += f': "{snippet}"'
    return make_episode(
        subject=subject or f"team:{team}",
        kind=kind,
        text=text,
        occurred_at=_ts_to_iso(ev.get("event_ts")),
        source=SourcePointer(
            "slack.pin.add" if added else "slack.pin.remove", f"{channel}:{message_ts}"
        ),
        key_parts=["slack", team, channel, message_ts, "pin", kind],
        metadata={
            "workspace_id": team,
            "channel_id": channel,
            "pinner_id": ev.get("user"),
            "pinner_label": pinner,
            "message_ts": message_ts,
            "message_user_id": (message or {}).get("user"),
            "thread_ts": (message or {}).get("thread_ts"),
        },
    )


# --------------------------------------------------------------------------- receiver


def _json_response(status: int, body: Mapping[str, Any]) -> Response:
    return Response.json(status, dict(body))


_OK = Response.json(200, {"ok": True})  # immutable: one for every plain acceptance


def _ok(**extra: Any) -> Response:
    if not extra:
        return _OK
    return _json_response(200, {"ok": True, **extra})


class SlackReceiver:
    """One Slack app's Events API endpoint."""

    def __init__(self, config: SlackPushConfig):
        self.config = config
        self.channels = frozenset(config.channels)
        self._secret = config.signing_secret

    def filter_reason(self, ev: Mapping[str, Any]) -> str | None:
        """Why an event is not ingested (the Node reason words), or ``None``."""
        etype = ev.get("type")
        if etype == "message":
            subtype = ev.get("subtype")
            if subtype in ("channel_join", "channel_leave"):
                return "subtype_skipped"
            if subtype == "message_changed":
                msg = ev.get("message")
                if not isinstance(msg, dict) or not js_trim(str(msg.get("text") or "")):
                    return "empty_text"
                prev = ev.get("previous_message")
                if isinstance(prev, dict) and prev.get("text") == msg.get("text"):
                    # Unfurls and attachment updates re-send the same text.
                    return "unchanged_text"
            elif subtype == "message_deleted":
                if not (ev.get("deleted_ts") or isinstance(ev.get("previous_message"), dict)):
                    return "empty_text"
            else:
                text = ev.get("text")
                if not isinstance(text, str) or js_trim(text) == "":
                    return "empty_text"
            channel_type = ev.get("channel_type")
            if channel_type == "im":
                return None if self.config.accept_dms else "dms_disabled"
            if channel_type == "mpim":
                return None if self.config.accept_mpim else "mpim_disabled"
            if self.channels and ev.get("channel") not in self.channels:
                return "channel_not_allowed"
            return None
        if etype in ("reaction_added", "reaction_removed"):
            item = ev.get("item")
            if not isinstance(item, dict) or item.get("type") != "message":
                return "non_message_item"
            if self.channels and item.get("channel") not in self.channels:
                return "channel_not_allowed"
            return None
        if etype in ("pin_added", "pin_removed"):
            item = ev.get("item")
            if not isinstance(item, dict) or item.get("type") != "message":
                return "non_message_item"
            if self.channels and ev.get("channel_id") not in self.channels:
                return "channel_not_allowed"
            return None
        return "unknown_event_type"

    def map_event(self, ev: Mapping[str, Any], team: str, subject: str | None) -> Episode:
        """The episode for an event that passed :meth:`filter_reason`."""
        etype = ev.get("type")
        if etype == "message":
            subtype = ev.get("subtype")
            if subtype == "message_changed":
                return map_message_changed(ev, team, subject)
            if subtype == "message_deleted":
                return map_message_deleted(ev, team, subject)
            return map_message(ev, team, subject)
        if etype in ("reaction_added", "reaction_removed"):
            return map_reaction(ev, team, subject)
        return map_pin(ev, team, subject)

    def handle(self, request: Request, ctx: PushContext) -> Response:
        """Verify, filter, map and durably queue (once per event id) one Events API delivery."""
        if request.method.upper() != "POST":
            return _json_response(405, {"error": "method_not_allowed"})
        body = request.body
        if len(body) > MAX_BODY_BYTES:
            return _json_response(413, {"error": "payload_too_large"})
        problem = verify(
            self._secret,
            body,
            request.headers.get("x-slack-signature"),
            request.headers.get("x-slack-request-timestamp"),
            ctx.now(),
        )
        if problem is not None:
            ctx.log.warning("slack/%s: signature rejected: %s", ctx.name, problem)
            return _json_response(401, {"error": problem})
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return _json_response(400, {"error": "invalid_json"})
        if not isinstance(payload, dict):
            return _json_response(400, {"error": "invalid_json"})

        ptype = payload.get("type")
        if ptype == "url_verification":
            # Node echoes {challenge: payload.challenge}; JSON drops it when absent.
            echo = {"challenge": payload["challenge"]} if "challenge" in payload else {}
            return _json_response(200, echo)
        if ptype != "event_callback":
            ctx.log.info("slack/%s: unhandled top-level type %r", ctx.name, ptype)
            return _ok(ignored="unhandled_type")
        event_id = payload.get("event_id")
        if not event_id or not isinstance(event_id, str | int):
            ctx.log.warning("slack/%s: event_callback without event_id", ctx.name)
            return _ok(ignored="no_event_id")
        event_key = f"slack/{ctx.name}:{event_id}"
        retry = request.headers.get("x-slack-retry-num")
        if retry is not None and ctx.dedup.contains(event_key):
            # Slack's retry of an event we took: a read answers it. First
            # deliveries skip the read; emit_once below decides for them.
            return self._duplicate(ctx, event_id, retry)

        ev = payload.get("event")
        if not isinstance(ev, dict):
            return _ok(ignored="unknown_event_type")
        reason = self.filter_reason(ev)
        if reason is not None:
            return _ok(ignored=reason)
        team = str(payload.get("team_id") or "")
        subject = self.config.subject or ctx.subject
        try:
            episode = self.map_event(ev, team, subject)
        except (MappingError, KeyError, TypeError, AttributeError, ValueError) as exc:
            # Permanent: a retry carries the same body. Say so and do not retry.
            ctx.log.warning("slack/%s: event %s not mappable: %s", ctx.name, event_id, exc)
            return _ok(ignored="unmappable")
        # One atomic step: queued and marked, or neither (a failure lets the
        # retry through); an id marked before queues nothing.
        try:
            new = ctx.emit_once(event_key, [episode], DEDUP_TTL_SECONDS)
        except EmitError as exc:
            ctx.log.error("slack/%s: could not queue event %s: %s", ctx.name, event_id, exc)
            return _json_response(503, {"error": "emit_failed"})
        if not new:
            return self._duplicate(ctx, event_id, retry)
        return _ok()

    @staticmethod
    def _duplicate(ctx: PushContext, event_id: object, retry: str | None) -> Response:
        # Debug, not info: the access line already records every request, and
        # a burst of retries would double the log (and its cost) for nothing.
        ctx.log.debug(
            "slack/%s: duplicate event %s suppressed (retry %s)", ctx.name, event_id, retry
        )
        return _ok(deduplicated=True)


def _factory(config: SlackPushConfig) -> SlackReceiver:
    return SlackReceiver(config)


PUSH_SPEC = ConnectorSpec(
    kind="slack",
    mode="push",
    config_class=SlackPushConfig,
    factory=_factory,
    summary="Slack Events API: messages, threads, DMs, edits, deletions, reactions, pins",
)

__all__ = [
    "PUSH_SPEC",
    "SlackPushConfig",
    "SlackReceiver",
    "map_message",
    "map_message_changed",
    "map_message_deleted",
    "map_pin",
    "map_reaction",
    "sign",
    "verify",
]
