from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from statewave_runner.connectors.base import Episode, PushReceiver
from statewave_runner.connectors.slack import (
    DEDUP_TTL_SECONDS,
    PUSH_SPEC,
    SlackPushConfig,
    SlackReceiver,
    sign,
    verify,
)
from statewave_runner.errors import EmitError
from statewave_runner.httpclient import HttpClient
from statewave_runner.httptypes import Headers, Request, Response
from statewave_runner.state.base import OutboxItem
from statewave_runner.state.memory import MemoryState
from tests.fakes import slack as fake

SECRET = "s3cr3t-signing-secret-for-tests"
NOW = 1_700_000_000.0
LOG = logging.getLogger("test.slack")


class Ctx:
    """A PushContext backed by the real in-memory state backend."""

    kind = "slack"

    def __init__(self, state: MemoryState, *, name: str = "main", subject: str | None = None):
        self.state = state
        self.name = name
        self.subject = subject
        self.dedup = state
        self.http = HttpClient(trust_env=False)
        self.log = LOG
        self.clock = NOW
        self.fail_emit = False
        self.emitted: list[Episode] = []
        self.marks: list[tuple[str, float]] = []

    def emit(self, episodes: Sequence[Episode]) -> int:
        if self.fail_emit:
            raise EmitError("state backend unavailable")
        added = self.state.put(self._items(episodes))
        self.emitted.extend(episodes)
        return added

    def _items(self, episodes: Sequence[Episode]) -> list[OutboxItem]:
        return [
            OutboxItem(e.idempotency_key, json.dumps(e.to_dict()), f"slack/{self.name}")
            for e in episodes
        ]

    def emit_once(self, event_key: str, episodes: Sequence[Episode], ttl_seconds: float) -> bool:
        if self.fail_emit:
            raise EmitError("state backend unavailable")
        self.marks.append((event_key, ttl_seconds))
        _, new = self.state.put_and_mark(self._items(episodes), event_key, ttl_seconds)
        if new:
            self.emitted.extend(episodes)
        return new

    def get_cursor(self) -> str | None:
        return self.state.get_cursor(self.kind, self.name)

    def set_cursor(self, cursor: str) -> None:
        self.state.set_cursor(self.kind, self.name, cursor)

    def now(self) -> float:
        return self.clock


def receiver(**kw: Any) -> SlackReceiver:
    kw.setdefault("channels", ["C01XYZ"])
    return SlackReceiver(SlackPushConfig(name="main", signing_secret=SECRET, **kw))


@pytest.fixture
def ctx() -> Ctx:
    return Ctx(MemoryState())


def post(
    rcv: SlackReceiver,
    ctx: Ctx,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, Any]:
    hdrs = fake.signed_headers(SECRET, body, timestamp=ctx.clock) if headers is None else headers
    resp: Response = rcv.handle(
        Request(method, "/slack/main/events", headers=Headers(hdrs), body=body), ctx
    )
    assert resp.header("content-type") == "application/json"
    return resp.status, json.loads(resp.body)


def queued(ctx: Ctx) -> int:
    return ctx.state.stats().depth


# --------------------------------------------------------------------------- signature


def test_slack_published_example_signature() -> None:
    assert fake.signature(fake.DOC_SECRET, fake.DOC_TIMESTAMP, fake.DOC_BODY) == fake.DOC_SIGNATURE
    assert sign(fake.DOC_SECRET, fake.DOC_TIMESTAMP, fake.DOC_BODY) == fake.DOC_SIGNATURE
    ts = int(fake.DOC_TIMESTAMP)
    assert (
        verify(fake.DOC_SECRET, fake.DOC_BODY, fake.DOC_SIGNATURE, fake.DOC_TIMESTAMP, ts + 60)
        is None
    )
    assert (
        verify("other", fake.DOC_BODY, fake.DOC_SIGNATURE, fake.DOC_TIMESTAMP, ts)
        == "bad_signature"
    )


def test_slack_example_passes_the_receivers_signature_check(ctx: Ctx) -> None:
    rcv = SlackReceiver(
        SlackPushConfig(name="main", signing_secret=fake.DOC_SECRET, channels=["C1"])
    )
    ctx.clock = float(fake.DOC_TIMESTAMP) + 10
    headers = {
        "X-Slack-Signature": fake.DOC_SIGNATURE,
        "X-Slack-Request-Timestamp": fake.DOC_TIMESTAMP,
    }
    # Authentic, but a slash-command form body is not an Events API JSON object.
    assert post(rcv, ctx, fake.DOC_BODY, headers=headers) == (400, {"error": "invalid_json"})
    headers["X-Slack-Signature"] = fake.DOC_SIGNATURE[:-1] + "4"
    assert post(rcv, ctx, fake.DOC_BODY, headers=headers) == (401, {"error": "bad_signature"})


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda h: h.pop("X-Slack-Signature"), "missing_headers"),
        (lambda h: h.pop("X-Slack-Request-Timestamp"), "missing_headers"),
        (lambda h: h.update({"X-Slack-Signature": ""}), "missing_headers"),
        (lambda h: h.update({"X-Slack-Request-Timestamp": "soon"}), "missing_headers"),
        (lambda h: h.update({"X-Slack-Request-Timestamp": "1700000000abc"}), "missing_headers"),
        (lambda h: h.update({"X-Slack-Signature": "v0=" + "0" * 64}), "bad_signature"),
        (lambda h: h.update({"X-Slack-Signature": "v0=short"}), "bad_signature"),
        (lambda h: h.update({"X-Slack-Signature": "v0=\u00e9" * 5}), "bad_signature"),
    ],
)
def test_bad_signatures_are_401_and_emit_nothing(ctx: Ctx, mutate: Any, error: str) -> None:
    body = fake.event_callback(fake.message())
    headers = fake.signed_headers(SECRET, body, timestamp=NOW)
    mutate(headers)
    assert post(receiver(), ctx, body, headers=headers) == (401, {"error": error})
    assert ctx.emitted == [] and queued(ctx) == 0


def test_wrong_secret_and_tampered_body(ctx: Ctx) -> None:
    body = fake.event_callback(fake.message())
    other = fake.signed_headers("another-secret", body, timestamp=NOW)
    assert post(receiver(), ctx, body, headers=other) == (401, {"error": "bad_signature"})
    good = fake.signed_headers(SECRET, body, timestamp=NOW)
    tampered = body.replace(b"hello", b"HELLO")
    assert post(receiver(), ctx, tampered, headers=good) == (401, {"error": "bad_signature"})
    assert queued(ctx) == 0


@pytest.mark.parametrize(("offset", "ok"), [(-300, True), (300, True), (-301, False), (301, False)])
def test_five_minute_window_both_ways(ctx: Ctx, offset: int, ok: bool) -> None:
    body = fake.event_callback(fake.message())
    headers = fake.signed_headers(SECRET, body, timestamp=NOW + offset)
    status, answer = post(receiver(), ctx, body, headers=headers)
    if ok:
        assert (status, answer) == (200, {"ok": True})
    else:
        assert (status, answer) == (401, {"error": "stale_timestamp"})
        assert queued(ctx) == 0


# --------------------------------------------------------------------------- request shape


@pytest.mark.parametrize("body", [b"{not json", b"", b"null", b"[1,2]", b'"text"', b"\xff\xfe{}"])
def test_malformed_or_non_object_json_is_400(ctx: Ctx, body: bytes) -> None:
    assert post(receiver(), ctx, body) == (400, {"error": "invalid_json"})
    assert queued(ctx) == 0


def test_huge_body_is_413_before_any_hmac(ctx: Ctx) -> None:
    body = fake.event_callback(fake.message(text="x" * (1024 * 1024)))
    assert post(receiver(), ctx, body) == (413, {"error": "payload_too_large"})
    assert queued(ctx) == 0


def test_non_post_is_405(ctx: Ctx) -> None:
    assert post(receiver(), ctx, b"", method="GET") == (405, {"error": "method_not_allowed"})


def test_url_verification_echoes_the_challenge(ctx: Ctx) -> None:
    body = fake.url_verification("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    status, answer = post(receiver(), ctx, body)
    assert (status, answer) == (
        200,
        {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"},
    )
    assert queued(ctx) == 0
    unsigned = {"X-Slack-Request-Timestamp": str(int(NOW))}
    assert post(receiver(), ctx, body, headers=unsigned)[0] == 401


def test_other_envelopes(ctx: Ctx) -> None:
    assert post(receiver(), ctx, fake.encode({"type": "app_rate_limited"})) == (
        200,
        {"ok": True, "ignored": "unhandled_type"},
    )
    no_id = fake.encode({"type": "event_callback", "team_id": "T1", "event": fake.message()})
    assert post(receiver(), ctx, no_id) == (200, {"ok": True, "ignored": "no_event_id"})
    no_event = fake.encode({"type": "event_callback", "event_id": "Ev1", "event": None})
    assert post(receiver(), ctx, no_event) == (200, {"ok": True, "ignored": "unknown_event_type"})
    assert queued(ctx) == 0


# --------------------------------------------------------------------------- mapping


def test_channel_message_matches_node_episode_and_key(ctx: Ctx) -> None:
    body = fake.event_callback(fake.message(), event_id="Ev01")
    assert post(receiver(), ctx, body) == (200, {"ok": True})
    (ep,) = ctx.emitted
    # push.md: parts slack|T01ABCD|C01XYZ|1700000000.000100|slack.message.posted
    assert ep.idempotency_key == "7b3f8ad168bd8eff944297d883d8ad99"
    assert ep.to_dict() == {
        "subject": "team:T01ABCD",
        "kind": "slack.message.posted",
        "text": "<@U01USER> in C01XYZ: hello",
        "occurred_at": "2023-11-14T22:13:20.000Z",
        "source": {"type": "slack.message", "id": "C01XYZ:1700000000.000100"},
        "idempotency_key": "7b3f8ad168bd8eff944297d883d8ad99",
        "metadata": {
            "workspace_id": "T01ABCD",
            "channel_id": "C01XYZ",
            "dm_user_id": None,
            "is_mpim": None,
            "author_id": "U01USER",
            "author_label": "<@U01USER>",
            "bot_id": None,
            "thread_ts": "1700000000.000100",
            "reply_count": 0,
        },
    }
    assert queued(ctx) == 1


def test_thread_reply_bot_message_and_subject_override(ctx: Ctx) -> None:
    reply = fake.message(ts="1700000050.000200", thread_ts="1700000000.000100", text="+1")
    post(receiver(), ctx, fake.event_callback(reply))
    bot = fake.message(ts="1700000060.000300", user=None, bot_id="B0BOT", subtype="bot_message")
    post(receiver(), ctx, fake.event_callback(bot))
    r, b = ctx.emitted
    assert (r.kind, r.source.type, r.idempotency_key) == (
        "slack.thread.replied",
        "slack.thread.reply",
        "049fff4a6414ea653c6be1240eef1b16",
    )
    assert r.occurred_at == "2023-11-14T22:14:10.000Z"
    assert b.text == "bot:B0BOT in C01XYZ: hello" and b.kind == "slack.message.posted"

    ctx2 = Ctx(MemoryState())
    post(receiver(subject="team:acme"), ctx2, fake.event_callback(fake.message()))
    assert ctx2.emitted[0].subject == "team:acme"


def test_dm_and_mpim_gating_and_mapping(ctx: Ctx) -> None:
    dm = fake.message(channel="D0DM", channel_type="im")
    mpim = fake.message(channel="G0GRP", channel_type="mpim", ts="1700000001.000000")
    assert post(receiver(), ctx, fake.event_callback(dm)) == (
        200,
        {"ok": True, "ignored": "dms_disabled"},
    )
    assert post(receiver(), ctx, fake.event_callback(mpim)) == (
        200,
        {"ok": True, "ignored": "mpim_disabled"},
    )
    rcv = receiver(accept_dms=True, accept_mpim=True)
    post(rcv, ctx, fake.event_callback(dm))
    post(rcv, ctx, fake.event_callback(mpim))
    d, m = ctx.emitted
    assert (d.subject, d.kind, d.text, d.source.type) == (
        "dm:U01USER",
        "slack.dm.message.posted",
        "<@U01USER> (DM): hello",
        "slack.dm.message",
    )
    assert d.idempotency_key == "b71c5f9a22201cf75e5e6e9d53e79530"
    assert d.metadata["dm_user_id"] == "U01USER"
    assert (m.subject, m.kind, m.text) == (
        "mpim:G0GRP",
        "slack.mpim.message.posted",
        "<@U01USER> (group DM): hello",
    )
    assert m.metadata["is_mpim"] is True


def test_reaction_and_pin_match_node(ctx: Ctx) -> None:
    post(receiver(), ctx, fake.event_callback(fake.reaction()))
    post(receiver(), ctx, fake.event_callback(fake.pin()))
    post(receiver(), ctx, fake.event_callback(fake.pin(added=False, message_ts=None)))
    r, p, unpin = ctx.emitted
    assert r.kind == "slack.reaction.added"
    assert r.text == "<@U02REACT> reacted :thumbsup: on message 1700000000.000100 in C01XYZ"
    assert r.source.id == "C01XYZ:1700000000.000100:U02REACT:thumbsup"
    assert r.occurred_at == "2023-11-14T22:15:00.000Z"
    assert r.idempotency_key == "51230ae8d6e440522be4234de0fbcc87"
    assert p.text == '<@U03PIN> pinned message 1700000000.000100 in C01XYZ: "remember this"'
    assert p.idempotency_key == "4cfc8e52582ee8be4805f838ceecf133"
    assert unpin.kind == "slack.pin.removed"
    assert unpin.text == "<@U03PIN> unpinned message (unknown ts) in C01XYZ"
    long_pin = fake.pin(text="y" * 500, message_ts="1700000009.000000")
    post(receiver(), ctx, fake.event_callback(long_pin))
    assert ctx.emitted[-1].text.endswith('"' + "y" * 240 + '"')


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (fake.message(subtype="channel_join"), "subtype_skipped"),
        (fake.message(subtype="channel_leave"), "subtype_skipped"),
        (fake.message(text="   \n"), "empty_text"),
        (fake.message(channel="C0OTHER"), "channel_not_allowed"),
        (fake.reaction(item_type="file"), "non_message_item"),
        (fake.reaction(channel="C0OTHER"), "channel_not_allowed"),
        (fake.pin(channel="C0OTHER"), "channel_not_allowed"),
        ({"type": "app_mention", "text": "hi", "channel": "C01XYZ"}, "unknown_event_type"),
        (
            fake.message(
                subtype="message_changed",
                text=None,
                message={"text": "same"},
                previous_message={"text": "same"},
            ),
            "unchanged_text",
        ),
    ],
)
def test_filters(ctx: Ctx, event: dict[str, Any], reason: str) -> None:
    assert post(receiver(), ctx, fake.event_callback(event)) == (
        200,
        {"ok": True, "ignored": reason},
    )
    assert queued(ctx) == 0


def test_message_changed_and_deleted(ctx: Ctx) -> None:
    changed = {
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "channel": "C01XYZ",
        "channel_type": "channel",
        "ts": "1700000300.000000",
        "event_ts": "1700000300.000000",
        "message": {
            "type": "message",
            "user": "U01USER",
            "text": "hello, world",
            "ts": "1700000000.000100",
            "edited": {"user": "U01USER", "ts": "1700000299.000000"},
        },
        "previous_message": {"type": "message", "user": "U01USER", "text": "hello"},
    }
    deleted = {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "channel": "C01XYZ",
        "channel_type": "channel",
        "ts": "1700000400.000000",
        "event_ts": "1700000400.000000",
        "deleted_ts": "1700000000.000100",
        "previous_message": {"type": "message", "user": "U01USER", "text": "secret plans"},
    }
    assert post(receiver(), ctx, fake.event_callback(changed)) == (200, {"ok": True})
    assert post(receiver(), ctx, fake.event_callback(deleted)) == (200, {"ok": True})
    edit, gone = ctx.emitted
    assert edit.kind == "slack.message.edited"
    assert edit.text == "<@U01USER> edited message 1700000000.000100 in C01XYZ: hello, world"
    assert edit.source.id == "C01XYZ:1700000000.000100:1700000299.000000"
    assert edit.occurred_at == "2023-11-14T22:18:19.000Z"
    assert gone.kind == "slack.message.deleted"
    assert gone.text == "message 1700000000.000100 by <@U01USER> in C01XYZ was deleted"
    assert "secret plans" not in json.dumps(gone.to_dict())
    assert len({edit.idempotency_key, gone.idempotency_key}) == 2


# --------------------------------------------------------------------------- dedup and emit


def test_retry_with_same_event_id_is_deduplicated(ctx: Ctx) -> None:
    body = fake.event_callback(fake.message(), event_id="EvSAME")
    assert post(receiver(), ctx, body) == (200, {"ok": True})
    ctx.clock += 60  # Slack's retry: fresh timestamp and signature, same event id
    retry_headers = fake.signed_headers(SECRET, body, timestamp=ctx.clock, retry_num=1)
    assert post(receiver(), ctx, body, headers=retry_headers) == (
        200,
        {"ok": True, "deduplicated": True},
    )
    assert len(ctx.emitted) == 1 and queued(ctx) == 1
    assert ctx.state.contains("slack/main:EvSAME")


def test_emit_failure_is_503_and_the_retry_is_delivered_once(ctx: Ctx) -> None:
    body = fake.event_callback(fake.message(), event_id="EvFAIL")
    ctx.fail_emit = True
    assert post(receiver(), ctx, body) == (503, {"error": "emit_failed"})
    assert not ctx.state.contains("slack/main:EvFAIL")  # not marked: the retry must get through
    ctx.fail_emit = False
    ctx.clock += 60
    headers = fake.signed_headers(SECRET, body, timestamp=ctx.clock, retry_num=1)
    assert post(receiver(), ctx, body, headers=headers) == (200, {"ok": True})
    assert post(receiver(), ctx, body, headers=headers) == (200, {"ok": True, "deduplicated": True})
    assert queued(ctx) == 1 and len(ctx.emitted) == 1


def test_concurrent_duplicates_queue_one_episode(ctx: Ctx) -> None:
    body = fake.event_callback(fake.message(), event_id="EvRACE")
    rcv = receiver()
    results: list[int] = []

    def send() -> None:
        results.append(post(rcv, ctx, body)[0])

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 8
    assert queued(ctx) == 1  # the outbox dedups by idempotency key


class NoLookups:
    """A dedup store a receiver must not touch: emit_once does it all in one transaction."""

    def contains(self, key: str) -> bool:
        raise AssertionError(f"dedup lookup of {key} before queuing")

    def mark_if_new(self, key: str, ttl_seconds: float) -> bool:
        raise AssertionError(f"separate mark of {key} after queuing")


def test_one_state_call_per_delivery_marks_with_the_episode(ctx: Ctx) -> None:
    ctx.dedup = NoLookups()
    body = fake.event_callback(fake.message(), event_id="EvONE")
    assert post(receiver(), ctx, body) == (200, {"ok": True})
    assert post(receiver(), ctx, body) == (200, {"ok": True, "deduplicated": True})
    # Slack retries for about an hour: the mark outlives that.
    assert ctx.marks == [("slack/main:EvONE", DEDUP_TTL_SECONDS)] * 2
    assert DEDUP_TTL_SECONDS >= 3600
    assert queued(ctx) == 1 and len(ctx.emitted) == 1


class CountingLookups:
    def __init__(self, state: MemoryState):
        self.state = state
        self.lookups: list[str] = []

    def contains(self, key: str) -> bool:
        self.lookups.append(key)
        return self.state.contains(key)

    def mark_if_new(self, key: str, ttl_seconds: float) -> bool:
        raise AssertionError(f"separate mark of {key} after queuing")


def test_a_slack_retry_of_a_marked_event_is_answered_by_one_read(ctx: Ctx) -> None:
    lookups = CountingLookups(ctx.state)
    ctx.dedup = lookups
    body = fake.event_callback(fake.message(), event_id="EvRETRY")
    assert post(receiver(), ctx, body) == (200, {"ok": True})
    assert lookups.lookups == []  # a first delivery does not look
    ctx.clock += 60
    headers = fake.signed_headers(SECRET, body, timestamp=ctx.clock, retry_num=1)
    assert post(receiver(), ctx, body, headers=headers) == (
        200,
        {"ok": True, "deduplicated": True},
    )
    assert lookups.lookups == ["slack/main:EvRETRY"]
    assert len(ctx.marks) == 1  # answered by the read, no write
    # A retry of an event never taken (its emit failed) still goes through.
    other = fake.event_callback(fake.message(ts="1700000001.000200"), event_id="EvLOST")
    headers = fake.signed_headers(SECRET, other, timestamp=ctx.clock, retry_num=2)
    assert post(receiver(), ctx, other, headers=headers) == (200, {"ok": True})
    assert queued(ctx) == 2 and ctx.state.contains("slack/main:EvLOST")


def test_concurrent_copies_of_one_event_answer_ok_exactly_once(ctx: Ctx) -> None:
    body = fake.event_callback(fake.message(), event_id="EvCOPIES")
    rcv = receiver()
    answers: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def send() -> None:
        answer = post(rcv, ctx, body)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert (
        sorted(answers, key=lambda a: len(a[1]))
        == [(200, {"ok": True})] + [(200, {"ok": True, "deduplicated": True})] * 7
    )
    assert queued(ctx) == 1


def test_filtered_events_are_not_marked(ctx: Ctx) -> None:
    body = fake.event_callback(fake.message(channel="COTHER"), event_id="EvFILTERED")
    assert post(receiver(), ctx, body) == (200, {"ok": True, "ignored": "channel_not_allowed"})
    assert ctx.marks == [] and not ctx.state.contains("slack/main:EvFILTERED")


def test_secret_never_logged(ctx: Ctx, caplog: pytest.LogCaptureFixture) -> None:
    body = fake.event_callback(fake.message())
    with caplog.at_level(logging.DEBUG):
        post(receiver(), ctx, body, headers=fake.signed_headers("wrong", body, timestamp=NOW))
        post(receiver(), ctx, body)
    assert SECRET not in caplog.text
    assert "bad_signature" in caplog.text


# --------------------------------------------------------------------------- config


def test_spec_and_config() -> None:
    assert (PUSH_SPEC.kind, PUSH_SPEC.mode, PUSH_SPEC.config_class) == (
        "slack",
        "push",
        SlackPushConfig,
    )
    rcv = PUSH_SPEC.factory(SlackPushConfig(name="m", signing_secret="x", channels=["C1"]))
    assert isinstance(rcv, PushReceiver)
    fields = {f.name: f for f in dataclasses.fields(SlackPushConfig)}
    assert {"name", "subject", "signing_secret", "channels", "accept_dms", "accept_mpim"} <= set(
        fields
    )
    assert fields["signing_secret"].metadata["secret"] is True
    assert fields["channels"].default is dataclasses.MISSING
    assert [k for k, _ in SlackPushConfig(name="m", signing_secret="", channels=[]).check()] == [
        "signing_secret",
        "channels",
    ]


def test_registry_resolves_the_builtin() -> None:
    from statewave_runner.connectors.registry import Registry

    assert Registry().get("push", "slack") is PUSH_SPEC
