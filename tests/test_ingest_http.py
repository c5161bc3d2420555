"""HttpSink against the fake Statewave: wire bytes, headers, errors, fallbacks."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from statewave_runner import __version__
from statewave_runner.connectors.base import Episode, SourcePointer, make_episode
from statewave_runner.errors import AuthError, PermanentError, RetryableError
from statewave_runner.ingest import FALLBACK_BATCH, HttpSink
from tests.fakes import Close, Delay, FakeStatewave, Reset, Respond

KEY = "sw-test-key-0123456789"
STRICT_SUBJECT = r"^[A-Za-z0-9_.\-:]+$"  # a stricter server (see docs/delivery.md)


def ep(n: int, **changes: object) -> Episode:
    base = make_episode(
        subject="repo:acme.widgets",
        kind="github.issue",
        text=f"issue {n}",
        source=SourcePointer("github.issue", str(n), f"https://github.com/acme/widgets/issues/{n}"),
        occurred_at="2024-05-01T10:00:00Z",
        key_parts=["k", n],
    )
    fields: dict[str, object] = {"connector": "github/main", **changes}
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> Iterator[FakeStatewave]:
    with FakeStatewave(KEY) as server:
        yield server


@pytest.fixture
def sink(fake: FakeStatewave) -> Iterator[HttpSink]:
    s = HttpSink(fake.url, api_key=KEY, timeout=5)
    yield s
    s.close()


# --------------------------------------------------------------------------- the wire


def test_recorded_request_is_byte_for_byte_the_documented_format(fake: FakeStatewave) -> None:
    sink = HttpSink(fake.url, api_key=KEY, tenant_id="acme-prod", timeout=5)
    episode = dataclasses.replace(
        make_episode(
            subject="repo:acme/widgets",
            kind="github.issue",
            text="Login fails on Safari — again",
            source=SourcePointer("github.issue", "42", "https://github.com/acme/widgets/issues/42"),
            occurred_at="2024-05-01T10:00:00Z",
            metadata={"repo_owner": "acme"},
        ),
        connector="github/main",
    )
    sink.ingest([episode])
    key = episode.idempotency_key
    producer = f"statewave-runner/{__version__}"
    body = (
        '{"episodes":[{"subject_id":"repo:acme/widgets","source":"github","type":"github.issue",'
        '"payload":{"repo_owner":"acme","text":"Login fails on Safari — again",'
        '"occurred_at":"2024-05-01T10:00:00.000Z","source":{"type":"github.issue","id":"42",'
        '"url":"https://github.com/acme/widgets/issues/42"}},'
        f'"metadata":{{"idempotency_key":"{key}","connector":"github/main"}},'
        f'"provenance":{{"producer":"{producer}","connector":"github/main",'
        '"source":{"type":"github.issue","id":"42","url":"https://github.com/acme/widgets/issues/42"}},'
        f'"occurred_at":"2024-05-01T10:00:00.000Z","idempotency_key":"{key}"}}]}}'
    ).encode()
    head = (
        "POST /v1/episodes/batch HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{fake.port}\r\n"
        f"User-Agent: statewave-runner/{__version__}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: application/json\r\n"
        f"X-API-Key: {KEY}\r\n"
        "X-Tenant-ID: acme-prod\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    (request,) = fake.requests
    assert request.raw == head + body
    assert request.status == 201
    (stored,) = fake.episodes
    assert stored.tenant_id == "acme-prod"
    assert stored.idempotency_key == key
    # Unknown top-level keys are dropped by the server; the key survives in metadata.
    assert "idempotency_key" not in stored.doc
    assert stored.doc["occurred_at"] == "2024-05-01T10:00:00.000Z"


def test_optional_headers_are_omitted_when_unset() -> None:
    with FakeStatewave(api_key=None) as open_server:
        HttpSink(open_server.url).ingest([ep(1)])
        (request,) = open_server.requests
        names = [n.lower() for n, _ in request.headers]
        assert names == ["host", "user-agent", "content-type", "accept", "content-length"]
        assert open_server.episode_count == 1


def test_base_path_in_url_prefixes_the_routes(fake: FakeStatewave) -> None:
    sink = HttpSink(fake.url + "/statewave/", api_key=KEY)
    with pytest.raises(AuthError):
        sink.ingest([ep(1)])  # the fake serves no /statewave prefix: 404 both routes
    paths = [r.path for r in fake.requests]
    assert paths == ["/statewave/v1/episodes/batch", "/statewave/v1/episodes"]


def test_keep_alive_connection_is_reused(fake: FakeStatewave, sink: HttpSink) -> None:
    for n in range(5):
        sink.ingest([ep(n)])
    assert {r.connection for r in fake.requests} == {fake.requests[0].connection}
    assert fake.episode_count == 5


def test_a_batch_is_one_request_all_stored_in_order(fake: FakeStatewave, sink: HttpSink) -> None:
    batch = [ep(n) for n in range(100)]
    sink.ingest(batch)
    assert fake.request_count == 1
    assert fake.idempotency_keys() == [e.idempotency_key for e in batch]
    assert sink.batch_route is True


def test_more_than_100_per_call_is_a_caller_bug(sink: HttpSink) -> None:
    with pytest.raises(ValueError, match="at most 100"):
        sink.ingest([ep(n) for n in range(101)])


def test_nul_characters_are_stripped_so_the_server_does_not_500(
    fake: FakeStatewave, sink: HttpSink
) -> None:
    sink.ingest([ep(1, text="nul\x00inside", metadata={"a\x00": "b\x00"})])
    (stored,) = fake.episodes
    assert stored.doc["payload"]["text"] == "nulinside"
    assert stored.doc["payload"]["a"] == "b"


def test_the_fake_answers_500_to_nul_like_postgres(fake: FakeStatewave) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    body = json.dumps(
        {"subject_id": "s", "source": "x", "type": "t", "payload": {"text": "a\u0000b"}}
    )
    conn.request("POST", "/v1/episodes", body, {"X-API-Key": KEY})
    response = conn.getresponse()
    assert response.status == 500
    assert json.loads(response.read())["error"]["code"] == "internal_error"
    assert fake.episode_count == 0


def test_the_fake_answers_500_to_nan_and_keeps_unknown_keys_out(fake: FakeStatewave) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    good = '{"subject_id":"s","source":"x","type":"t","payload":{},"extra":NaN,"k\\u0000":1}'
    conn.request("POST", "/v1/episodes", good, {"X-API-Key": KEY})
    response = conn.getresponse()
    response.read()
    assert response.status == 201  # unknown top-level keys are dropped before storage
    assert fake.episodes[0].doc.keys() >= {"subject_id", "payload"}
    assert "extra" not in fake.episodes[0].doc
    bad = '{"subject_id":"s","source":"x","type":"t","payload":{"v":Infinity}}'
    conn.request("POST", "/v1/episodes", bad, {"X-API-Key": KEY})
    response = conn.getresponse()
    response.read()
    assert response.status == 500
    assert fake.episode_count == 1


def test_the_fake_ignores_bearer_tokens(fake: FakeStatewave) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    conn.request("POST", "/v1/episodes", "{}", {"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.status == 401
    assert json.loads(response.read())["error"]["code"] == "missing_api_key"


def test_over_long_fields_are_truncated_with_a_warning(
    fake: FakeStatewave, sink: HttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    long = ep(1, subject="s" * 300, kind="k" * 129)
    with caplog.at_level(logging.WARNING, logger="statewave_runner.ingest"):
        sink.ingest([long])
    (stored,) = fake.episodes
    assert len(stored.doc["subject_id"]) == 256 and len(stored.doc["type"]) == 128
    messages = [r.getMessage() for r in caplog.records]
    assert any(long.idempotency_key in m and "subject_id truncated" in m for m in messages)
    assert any("type truncated from 129 to 128" in m for m in messages)


def test_unsendable_episode_fails_before_any_request(fake: FakeStatewave, sink: HttpSink) -> None:
    with pytest.raises(PermanentError) as info:
        sink.ingest([ep(1), ep(2, subject="")])
    assert info.value.index == 1
    assert fake.request_count == 0


# --------------------------------------------------------------------------- auth and config errors


def test_missing_key_is_an_auth_error(fake: FakeStatewave) -> None:
    with pytest.raises(AuthError) as info:
        HttpSink(fake.url).ingest([ep(1)])
    assert info.value.status == 401
    assert "missing_api_key" in str(info.value) and "api_key" in str(info.value)


def test_wrong_key_is_an_auth_error_that_never_shows_the_key(fake: FakeStatewave) -> None:
    with pytest.raises(AuthError) as info:
        HttpSink(fake.url, api_key="wrong-key-9876").ingest([ep(1)])
    assert info.value.status == 403
    assert "wrong-key-9876" not in str(info.value)
    assert "wrong-key-9876" not in repr(HttpSink(fake.url, api_key="wrong-key-9876").describe())


def test_missing_tenant_pauses_rather_than_rejects() -> None:
    with FakeStatewave(KEY, require_tenant=True) as server:
        with pytest.raises(AuthError, match=r"set \[statewave\] tenant_id"):
            HttpSink(server.url, api_key=KEY).ingest([ep(1)])
        HttpSink(server.url, api_key=KEY, tenant_id="t1").ingest([ep(1)])
        assert [e.tenant_id for e in server.episodes] == ["t1"]


def test_redirect_is_reported_with_its_target(fake: FakeStatewave, sink: HttpSink) -> None:
    fake.script(Respond(308, headers=(("Location", "https://elsewhere/v1/episodes/batch"),)))
    with pytest.raises(AuthError, match=r"redirects .* to https://elsewhere"):
        sink.ingest([ep(1)])


def test_other_400_is_permanent_without_index(fake: FakeStatewave, sink: HttpSink) -> None:
    fake.script(Respond(400, body={"error": {"code": "bad", "message": "nope"}}))
    with pytest.raises(PermanentError) as info:
        sink.ingest([ep(1), ep(2)])
    assert info.value.index is None and info.value.status == 400


# --------------------------------------------------------------------------- 422


def test_422_names_the_failing_index_and_stores_nothing() -> None:
    with FakeStatewave(KEY, subject_id_pattern=STRICT_SUBJECT) as server:
        batch = [ep(n) for n in range(5)]
        batch[3] = ep(3, subject="repo:acme/widgets")  # "/" breaks the stricter pattern
        with pytest.raises(PermanentError) as info:
            HttpSink(server.url, api_key=KEY).ingest(batch)
        assert info.value.index == 3
        assert info.value.status == 422
        assert "subject_id: String should match pattern" in str(info.value)
        assert "repo:acme/widgets" not in str(info.value)  # the input is not echoed
        assert server.episode_count == 0  # all-or-nothing


# --------------------------------------------------------------------------- retryable


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retryable(fake: FakeStatewave, sink: HttpSink, status: int) -> None:
    fake.script(Respond(status))
    with pytest.raises(RetryableError) as info:
        sink.ingest([ep(1)])
    assert info.value.status == status
    assert info.value.retry_after is None
    sink.ingest([ep(1)])  # and the next call goes through
    assert fake.episode_count == 1


def test_retry_after_seconds_is_passed_on(fake: FakeStatewave, sink: HttpSink) -> None:
    fake.script(Respond(503, retry_after="17"))
    with pytest.raises(RetryableError) as info:
        sink.ingest([ep(1)])
    assert info.value.retry_after == 17.0


def test_retry_after_http_date_uses_the_sink_clock(fake: FakeStatewave) -> None:
    now = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    sink = HttpSink(fake.url, api_key=KEY, clock=lambda: now.timestamp())
    later = now.replace(minute=1, second=30)
    fake.script(Respond(429, retry_after=format_datetime(later, usegmt=True)))
    with pytest.raises(RetryableError) as info:
        sink.ingest([ep(1)])
    assert info.value.retry_after == 90.0


def test_connection_reset_is_retryable(fake: FakeStatewave, sink: HttpSink) -> None:
    fake.script(Reset())
    with pytest.raises(RetryableError, match="connection reset"):
        sink.ingest([ep(1)])
    sink.ingest([ep(1)])
    assert fake.episode_count == 1


def test_close_without_answer_is_retryable(fake: FakeStatewave, sink: HttpSink) -> None:
    sink.ingest([ep(0)])  # an open keep-alive connection the server then drops
    fake.script(Close())
    with pytest.raises(RetryableError, match="closed"):
        sink.ingest([ep(1)])
    sink.ingest([ep(1)])
    assert fake.episode_count == 2


def test_connection_refused_is_retryable(fake: FakeStatewave, sink: HttpSink) -> None:
    fake.down()
    with pytest.raises(RetryableError, match="connection refused"):
        sink.ingest([ep(1)])
    fake.up()
    sink.ingest([ep(1)])
    assert fake.episode_count == 1


def test_slow_response_times_out_but_may_have_been_stored(fake: FakeStatewave) -> None:
    sink = HttpSink(fake.url, api_key=KEY, timeout=0.3)
    fake.script(Delay(1.0))
    with pytest.raises(RetryableError, match=r"no answer within 0.3s"):
        sink.ingest([ep(1)])
    # The server finished the request after we gave up: a retry would duplicate
    # it on a server without idempotency (documented in docs/delivery.md).
    assert fake.wait_for_episodes(1, timeout=5)


def test_slow_response_within_the_timeout_is_fine(fake: FakeStatewave) -> None:
    sink = HttpSink(fake.url, api_key=KEY, timeout=5)
    fake.script(Delay(0.3))
    sink.ingest([ep(1)])
    assert fake.episode_count == 1


# --------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("status", [404, 405])
def test_batch_route_missing_falls_back_to_one_post_per_episode(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeStatewave(KEY, batch_route=False, missing_route_status=status) as server:
        sink = HttpSink(server.url, api_key=KEY)
        with caplog.at_level(logging.INFO, logger="statewave_runner.ingest"):
            sink.ingest([ep(n) for n in range(3)])
            sink.ingest([ep(n) for n in range(3, 5)])
        assert [r.path for r in server.requests] == ["/v1/episodes/batch"] + ["/v1/episodes"] * 5
        assert server.idempotency_keys() == [ep(n).idempotency_key for n in range(5)]
        assert sink.batch_route is False
        assert sink.max_batch == FALLBACK_BATCH
        assert sum("no /v1/episodes/batch" in r.getMessage() for r in caplog.records) == 1


def test_fallback_failure_half_way_reports_what_was_delivered() -> None:
    with FakeStatewave(KEY, batch_route=False) as server:
        sink = HttpSink(server.url, api_key=KEY)
        sink.ingest([ep(0)])  # learn the route
        server.script(Respond(503, retry_after="1"), path="/v1/episodes")
        # The script applies to the next single request: episode 0 of this call.
        with pytest.raises(RetryableError) as info:
            sink.ingest([ep(1), ep(2)])
        assert info.value.delivered == 0
        sink.ingest([ep(1)])
        server.script(Delay(0), Respond(500), path="/v1/episodes")  # 2nd request fails
        with pytest.raises(RetryableError) as info:
            sink.ingest([ep(2), ep(3), ep(4)])
        assert info.value.delivered == 1
        assert server.idempotency_keys()[-1] == ep(2).idempotency_key


def test_fallback_422_names_the_index_and_delivered_prefix() -> None:
    with FakeStatewave(KEY, batch_route=False, subject_id_pattern=STRICT_SUBJECT) as server:
        sink = HttpSink(server.url, api_key=KEY)
        with pytest.raises(PermanentError) as info:
            sink.ingest([ep(0), ep(1), ep(2, subject="a/b"), ep(3)])
        assert (info.value.index, info.value.delivered) == (2, 2)
        assert server.idempotency_keys() == [ep(0).idempotency_key, ep(1).idempotency_key]


def test_413_splits_the_batch_until_it_fits(fake: FakeStatewave, sink: HttpSink) -> None:
    fake.script(Respond(413), Respond(413), path="/v1/episodes/batch")
    batch = [ep(n) for n in range(8)]
    sink.ingest(batch)
    sizes = [len(r.json()["episodes"]) for r in fake.requests]
    assert sizes == [8, 4, 2, 2, 4]
    assert fake.idempotency_keys() == [e.idempotency_key for e in batch]


def test_413_on_a_single_episode_is_permanent(fake: FakeStatewave, sink: HttpSink) -> None:
    fake.script(Respond(413), path="/v1/episodes/batch")
    with pytest.raises(PermanentError, match="larger than Statewave accepts") as info:
        sink.ingest([ep(1)])
    assert info.value.index == 0


def test_split_failure_in_second_half_counts_the_first_half(
    fake: FakeStatewave, sink: HttpSink
) -> None:
    fake.script(Respond(413), Delay(0), Respond(503), path="/v1/episodes/batch")
    with pytest.raises(RetryableError) as info:
        sink.ingest([ep(n) for n in range(4)])
    assert info.value.delivered == 2
    assert fake.idempotency_keys() == [ep(0).idempotency_key, ep(1).idempotency_key]


def test_wrong_url_pauses_with_a_hint(fake: FakeStatewave) -> None:
    sink = HttpSink(fake.url + "/v2", api_key=KEY)
    with pytest.raises(AuthError, match=r"check \[statewave\] url"):
        sink.ingest([ep(1)])


# --------------------------------------------------------------------------- probe


def test_probe_stores_nothing_and_checks_the_key(fake: FakeStatewave, sink: HttpSink) -> None:
    sink.probe()
    assert fake.episode_count == 0
    assert fake.requests[-1].status == 422
    with pytest.raises(AuthError):
        HttpSink(fake.url, api_key="nope-nope").probe()
    fake.down()
    with pytest.raises(RetryableError):
        sink.probe()


def test_describe_names_the_url_and_never_the_key(sink: HttpSink, fake: FakeStatewave) -> None:
    info = sink.describe()
    assert info["url"] == fake.url and info["kind"] == "http"
    assert KEY not in repr(info)


def test_batch_false_posts_one_episode_per_request_from_the_start(fake: FakeStatewave) -> None:
    sink = HttpSink(fake.url, api_key=KEY, batch=False)
    sink.ingest([ep(1), ep(2)])
    assert [r.path for r in fake.requests] == ["/v1/episodes", "/v1/episodes"]
    assert fake.requests[0].json()["metadata"]["idempotency_key"] == ep(1).idempotency_key
    assert sink.max_batch == FALLBACK_BATCH
