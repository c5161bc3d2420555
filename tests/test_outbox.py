"""DeliveryWorker, driven step by step on a fake clock.

The sink is the real HttpSink talking to the fake Statewave over a socket,
except where a scripted sink is needed to produce an answer the HTTP sink
cannot (a failure half-way through a call, a PermanentError without index).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from statewave_runner.connectors.base import Episode, SourcePointer, make_episode
from statewave_runner.errors import (
    DeliveryError,
    PermanentError,
    RetryableError,
    StateError,
)
from statewave_runner.ingest import HttpSink
from statewave_runner.outbox import (
    DeliveryObserver,
    DeliveryStatus,
    DeliveryWorker,
    full_jitter_backoff,
    outbox_item,
)
from statewave_runner.state.base import ClaimedItem, OutboxItem, OutboxSettings
from statewave_runner.state.memory import MemoryState
from tests.fakes import FakeStatewave, Respond

KEY = "sw-outbox-key-42"
START = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder(DeliveryObserver):
    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []
        self.delivered_origins: Counter[str] = Counter()
        self.dead: list[tuple[list[str], str]] = []
        self.states: list[str] = []

    def attempt(self, outcome: str, batch_size: int, seconds: float) -> None:
        assert seconds >= 0
        self.attempts.append((outcome, batch_size))

    def delivered(self, items: Sequence[ClaimedItem]) -> None:
        self.delivered_origins.update(item.origin for item in items)

    def dead_lettered(self, items: Sequence[ClaimedItem], error: str) -> None:
        self.dead.append(([item.key for item in items], error))

    def status_changed(self, status: DeliveryStatus) -> None:
        self.states.append(status.state)


def ep(n: int, **changes: object) -> Episode:
    base = make_episode(
        subject="repo:acme.widgets",
        kind="github.issue",
        text=f"issue {n}",
        source=SourcePointer("github.issue", str(n)),
        occurred_at="2024-05-01T09:00:00Z",
        key_parts=["outbox", n],
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def queue(state: MemoryState, episodes: Sequence[Episode], origin: str = "github/main") -> None:
    assert state.put([outbox_item(e, origin) for e in episodes]) == len(episodes)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> MemoryState:
    return MemoryState(clock=clock)


@pytest.fixture
def fake() -> Iterator[FakeStatewave]:
    with FakeStatewave(KEY) as server:
        yield server


def make_worker(
    state: MemoryState,
    sink: object,
    clock: FakeClock,
    observer: DeliveryObserver | None = None,
    **kwargs: object,
) -> DeliveryWorker:
    options: dict[str, object] = {
        "clock": clock,
        "rng": lambda: 0.5,
        "backoff_initial": 1.0,
        "backoff_max": 60.0,
        "probe_interval": 30.0,
    }
    options.update(kwargs)
    return DeliveryWorker(state, sink, observer=observer, **options)  # type: ignore[arg-type]


def drain(worker: DeliveryWorker, steps: int = 50) -> None:
    """Step until there is nothing to do right now."""
    for _ in range(steps):
        if worker.step() > 0:
            return
    raise AssertionError("worker never went idle")


# --------------------------------------------------------------------------- happy path


def test_queued_episodes_are_delivered_acked_and_counted(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    rec = Recorder()
    worker = make_worker(state, HttpSink(fake.url, api_key=KEY), clock, rec, batch_size=100)
    queue(state, [ep(n) for n in range(150)], origin="github/main")
    queue(state, [ep(n) for n in range(150, 160)], origin="slack/eng")
    drain(worker)
    assert [len(r.json()["episodes"]) for r in fake.requests] == [100, 60]
    assert fake.idempotency_keys() == [ep(n).idempotency_key for n in range(160)]
    assert state.stats().depth == 0
    assert rec.delivered_origins == {"github/main": 150, "slack/eng": 10}
    assert rec.attempts == [("success", 100), ("success", 60)]
    assert worker.status().last_success_at == clock.now
    # metadata.connector comes from the origin the runner queued it under.
    assert fake.episodes[-1].doc["metadata"]["connector"] == "slack/eng"
    assert fake.episodes[-1].doc["source"] == "slack"


def test_batch_size_and_the_sinks_own_limit_are_honoured(
    state: MemoryState, clock: FakeClock
) -> None:
    with FakeStatewave(KEY, batch_route=False) as server:
        sink = HttpSink(server.url, api_key=KEY)
        worker = make_worker(state, sink, clock, batch_size=7)
        queue(state, [ep(n) for n in range(30)])
        drain(worker)
        singles = [r for r in server.requests if r.path == "/v1/episodes"]
        assert len(singles) == 30  # one POST per episode after the 404
        assert server.episode_count == 30
        assert sink.max_batch == 10


def test_undecodable_outbox_rows_are_dead_lettered_not_retried(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    rec = Recorder()
    worker = make_worker(state, HttpSink(fake.url, api_key=KEY), clock, rec)
    state.put([OutboxItem("broken-1", "{not json", "github/main")])
    state.put([OutboxItem("broken-2", json.dumps({"subject": "x"}), "github/main")])
    queue(state, [ep(1)])
    drain(worker)
    assert fake.idempotency_keys() == [ep(1).idempotency_key]
    assert sorted(k for keys, _ in rec.dead for k in keys) == ["broken-1", "broken-2"]
    assert state.stats().dead == 2


def test_outbox_item_cleans_what_backends_cannot_store() -> None:
    item = outbox_item(ep(1, text="a\x00b\ud800", metadata={"x": float("nan")}), "gh/a")
    assert "\\u0000" not in item.body and "NaN" not in item.body
    item.body.encode("utf-8")  # no lone surrogate left
    back = Episode.from_dict(json.loads(item.body))
    assert back.text == "ab\ufffd" and back.connector == "gh/a" and item.origin == "gh/a"


# --------------------------------------------------------------------------- 422


def test_422_dead_letters_only_the_named_episode_and_delivers_the_rest(
    state: MemoryState, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeStatewave(KEY, subject_id_pattern=r"^[A-Za-z0-9_.\-:]+$") as server:
        rec = Recorder()
        worker = make_worker(state, HttpSink(server.url, api_key=KEY), clock, rec)
        batch = [ep(n) for n in range(10)]
        batch[4] = ep(4, subject="repo:acme/widgets")
        queue(state, batch)
        with caplog.at_level(logging.WARNING, logger="statewave_runner.delivery"):
            drain(worker)
        good = [e.idempotency_key for i, e in enumerate(batch) if i != 4]
        assert server.idempotency_keys() == good
        assert len(rec.dead) == 1
        (keys, error) = rec.dead[0]
        assert keys == [batch[4].idempotency_key]
        assert "subject_id: String should match pattern" in error
        assert state.stats().dead == 1 and state.stats().depth == 0
        (dead,) = state.peek(10, dead=True)
        assert dead.key == batch[4].idempotency_key and "422" in (dead.last_error or "")
        assert [o for o, _ in rec.attempts] == ["permanent", "success"]
        assert worker.status().state == "running"
        lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
        assert len(lines) == 1 and batch[4].idempotency_key in lines[0]


class ScriptedSink:
    """A sink answering from a script, recording every call (for shapes HTTP cannot give)."""

    def __init__(self, *answers: DeliveryError | None) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []
        self.accepted: list[str] = []

    def ingest(self, episodes: Sequence[Episode]) -> None:
        keys = [e.idempotency_key for e in episodes]
        self.calls.append(keys)
        answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            self.accepted.extend(keys)
            return
        self.accepted.extend(keys[: answer.delivered])
        raise answer


def test_permanent_error_without_index_isolates_the_bad_episode(
    state: MemoryState, clock: FakeClock
) -> None:
    bad = ep(2).idempotency_key

    class Picky(ScriptedSink):
        def ingest(self, episodes: Sequence[Episode]) -> None:
            keys = [e.idempotency_key for e in episodes]
            self.calls.append(keys)
            if bad in keys:
                raise PermanentError("HTTP 400: nope")
            self.accepted.extend(keys)

    sink = Picky()
    rec = Recorder()
    worker = make_worker(state, sink, clock, rec)
    queue(state, [ep(n) for n in range(4)])
    drain(worker)
    assert sink.calls[0] == [ep(n).idempotency_key for n in range(4)]
    assert sink.calls[1:] == [[ep(n).idempotency_key] for n in range(4)]
    assert sorted(sink.accepted) == sorted(ep(n).idempotency_key for n in (0, 1, 3))
    assert rec.dead == [([bad], "HTTP 400: nope")]


def test_partial_delivery_before_a_retryable_error_acks_the_prefix(
    state: MemoryState, clock: FakeClock
) -> None:
    sink = ScriptedSink(RetryableError("503", delivered=2, retry_after=5))
    worker = make_worker(state, sink, clock)
    queue(state, [ep(n) for n in range(5)])
    worker.step()
    assert state.stats().depth == 3
    clock.advance(5)
    drain(worker)
    keys = [ep(n).idempotency_key for n in range(5)]
    assert Counter(sink.accepted) == Counter(keys)  # nothing twice
    assert sink.calls[1] == keys[2:3]  # the trial after the stall is one item


def test_partial_delivery_then_permanent_index_is_relative_to_the_call(
    state: MemoryState, clock: FakeClock
) -> None:
    sink = ScriptedSink(PermanentError("422", index=3, delivered=2))
    rec = Recorder()
    worker = make_worker(state, sink, clock, rec)
    queue(state, [ep(n) for n in range(5)])
    drain(worker)
    keys = [ep(n).idempotency_key for n in range(5)]
    assert rec.dead == [([keys[3]], "422")]
    assert sink.calls == [keys, [keys[2], keys[4]]]
    assert sorted(sink.accepted) == sorted(keys[:3] + keys[4:])


# --------------------------------------------------------------------------- retries and backoff


def test_retry_after_seconds_is_honoured_on_the_fake_clock(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    worker = make_worker(state, HttpSink(fake.url, api_key=KEY, clock=clock), clock)
    queue(state, [ep(n) for n in range(3)])
    fake.script(Respond(503, retry_after="120"))
    worker.step()
    status = worker.status()
    assert status.state == "stalled" and "503" in status.reason
    assert status.next_attempt_at == clock.now + 120
    sent = fake.request_count
    clock.advance(119.9)
    assert worker.step() > 0
    assert fake.request_count == sent  # nothing before Retry-After
    clock.advance(0.1)
    drain(worker)
    assert Counter(fake.idempotency_keys()) == Counter(ep(n).idempotency_key for n in range(3))
    assert worker.status().state == "running"


def test_retry_after_http_date_is_honoured_on_the_fake_clock(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    worker = make_worker(state, HttpSink(fake.url, api_key=KEY, clock=clock), clock)
    queue(state, [ep(1)])
    when = datetime.fromtimestamp(clock.now + 300, UTC)
    fake.script(Respond(429, retry_after=format_datetime(when, usegmt=True)))
    worker.step()
    assert worker.status().next_attempt_at == clock.now + 300
    clock.advance(299)
    worker.step()
    assert fake.episode_count == 0
    clock.advance(1)
    drain(worker)
    assert fake.episode_count == 1


def test_backoff_grows_with_full_jitter_and_a_cap_without_spending_attempts(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    draws = iter([1.0, 1.0, 0.25, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    worker = make_worker(
        state,
        HttpSink(fake.url, api_key=KEY, timeout=2),
        clock,
        rng=lambda: next(draws),
        backoff_initial=1.0,
        backoff_max=10.0,
    )
    queue(state, [ep(n) for n in range(20)])
    fake.down()
    delays = []
    for _ in range(7):
        worker.step()
        status = worker.status()
        assert status.next_attempt_at is not None
        delays.append(status.next_attempt_at - clock.now)
        clock.advance(delays[-1])
    # 1*2^0, 1*2^1, 0.25*2^2, 8, then the 10 s cap.
    assert delays == [1.0, 2.0, 1.0, 8.0, 10.0, 10.0, 10.0]
    # Only the first (failed) claim spent an attempt; probes spend none.
    assert {item.attempts for item in state.peek(100)} == {1}
    assert state.stats().dead == 0
    fake.up()
    drain(worker)
    assert fake.episode_count == 20


def test_after_a_stall_batches_grow_back_one_two_four(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    worker = make_worker(state, HttpSink(fake.url, api_key=KEY, clock=clock), clock)
    queue(state, [ep(n) for n in range(40)])
    fake.script(Respond(500))
    worker.step()
    clock.advance(60)
    drain(worker)
    sizes = [len(r.json()["episodes"]) for r in fake.requests if r.path.endswith("/batch")]
    assert sizes == [40, 1, 2, 4, 8, 16, 9]
    assert fake.episode_count == 40


def test_long_insert_outage_spreads_trial_attempts_and_dead_letters_nothing(
    clock: FakeClock, fake: FakeStatewave
) -> None:
    # The server answers (probes pass) but every insert fails, like a database
    # outage behind a running Statewave: each trial spends one attempt.
    state = MemoryState(OutboxSettings(max_attempts=20), clock=clock)
    worker = make_worker(state, HttpSink(fake.url, api_key=KEY), clock, backoff_max=10.0)
    queue(state, [ep(n) for n in range(8)])
    fake.db_down = True
    for _ in range(720):  # an hour of trials every 5 s
        worker.step()
        clock.advance(5)
    trials = [r for r in fake.requests if r.path.endswith("/batch")]
    assert len(trials) >= 40
    attempts = [item.attempts for item in state.peek(100)]
    assert max(attempts) <= 10  # spread over the queue and parked, far from 20
    assert state.stats().dead == 0
    assert worker.status().state == "stalled"
    fake.db_down = False
    for _ in range(800):  # parked items come back within MAX_PARK (an hour)
        worker.step()
        clock.advance(5)
    assert Counter(fake.idempotency_keys()) == Counter(ep(n).idempotency_key for n in range(8))
    assert worker.status().state == "running"


def test_full_jitter_backoff_bounds() -> None:
    assert full_jitter_backoff(1, 0.5, 30, lambda: 1.0) == 0.5
    assert full_jitter_backoff(4, 0.5, 30, lambda: 1.0) == 4.0
    assert full_jitter_backoff(100, 0.5, 30, lambda: 1.0) == 30
    assert full_jitter_backoff(3, 0.5, 30, lambda: 0.0) == 0.0


def test_stall_logs_once_reminds_and_logs_recovery(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    worker = make_worker(
        state,
        HttpSink(fake.url, api_key=KEY, timeout=2),
        clock,
        rec,
        backoff_max=20.0,
        stall_log_interval=100.0,
    )
    queue(state, [ep(1)])
    fake.down()
    with caplog.at_level(logging.INFO, logger="statewave_runner.delivery"):
        for _ in range(12):
            worker.step()
            clock.advance(20)
        fake.up()
        drain(worker)
    messages = [r.getMessage() for r in caplog.records]
    stalled = [m for m in messages if "delivery stalled" in m]
    reminders = [m for m in messages if "still stalled" in m]
    recovered = [m for m in messages if "recovered" in m]
    assert len(stalled) == 1 and "connection refused" in stalled[0]
    assert 1 <= len(reminders) <= 3 and "1 episodes queued" in reminders[0]
    assert len(recovered) == 1
    assert rec.states == ["running", "stalled", "running"]
    assert worker.status().last_error is not None


# --------------------------------------------------------------------------- auth pause


def test_401_pauses_with_one_clear_line_dead_letters_nothing_and_resumes(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    worker = make_worker(state, HttpSink(fake.url, api_key="old-key-1234"), clock, rec)
    queue(state, [ep(n) for n in range(30)])
    with caplog.at_level(logging.INFO, logger="statewave_runner.delivery"):
        worker.step()
        status = worker.status()
        assert status.state == "paused_auth"
        assert "403" in status.reason and "api_key" in status.reason
        for _ in range(10):  # ten probe rounds, still refused
            clock.advance(30)
            worker.step()
        fake.api_key = "old-key-1234"  # the server accepts our key again
        clock.advance(30)
        drain(worker)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "paused" in errors[0].getMessage() and "old-key-1234" not in errors[0].getMessage()
    assert rec.dead == [] and state.stats().dead == 0
    assert Counter(fake.idempotency_keys()) == Counter(ep(n).idempotency_key for n in range(30))
    probes = [r for r in fake.requests if r.body == b"{}"]
    assert len(probes) == 11  # one per probe interval, nothing in between
    assert rec.states == ["running", "paused_auth", "running"]
    assert any("resumed" in r.getMessage() for r in caplog.records)


def test_auth_pause_spends_one_attempt_only(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    worker = make_worker(state, HttpSink(fake.url), clock)  # no key at all: 401
    queue(state, [ep(n) for n in range(5)])
    for _ in range(20):
        worker.step()
        clock.advance(30)
    assert {item.attempts for item in state.peek(10)} == {1}
    assert worker.status().state == "paused_auth" and "401" in worker.status().reason


def test_restart_with_fixed_key_resumes_at_once(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    worker = make_worker(state, HttpSink(fake.url, api_key="bad-key-000"), clock)
    queue(state, [ep(n) for n in range(5)])
    worker.step()
    assert worker.status().state == "paused_auth"
    fixed = make_worker(state, HttpSink(fake.url, api_key=KEY), clock)
    drain(fixed)
    assert fake.episode_count == 5


# --------------------------------------------------------------------------- robustness


def test_unexpected_sink_exception_is_retryable(state: MemoryState, clock: FakeClock) -> None:
    class Buggy:
        calls = 0

        def ingest(self, episodes: Sequence[Episode]) -> None:
            Buggy.calls += 1
            if Buggy.calls == 1:
                raise ZeroDivisionError("oops")

    worker = make_worker(state, Buggy(), clock)
    queue(state, [ep(1)])
    worker.step()
    assert worker.status().state == "stalled"
    assert "ZeroDivisionError" in worker.status().reason
    clock.advance(60)
    drain(worker)
    assert state.stats().depth == 0 and worker.status().state == "running"


def test_state_backend_errors_do_not_kill_the_worker(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(MemoryState):
        fail = 3

        def claim(self, limit: int, lease_seconds: float) -> list[ClaimedItem]:
            if Flaky.fail:
                Flaky.fail -= 1
                raise StateError("database is locked")
            return super().claim(limit, lease_seconds)

    flaky = Flaky(clock=clock)
    queue(flaky, [ep(1)])
    worker = make_worker(flaky, HttpSink(fake.url, api_key=KEY), clock)
    with caplog.at_level(logging.INFO, logger="statewave_runner.delivery"):
        for _ in range(3):
            assert worker.step() > 0
        drain(worker)
    assert fake.episode_count == 1
    assert sum("state backend failed" in r.getMessage() for r in caplog.records) == 1


def test_observer_failures_do_not_break_delivery(
    state: MemoryState, fake: FakeStatewave, clock: FakeClock
) -> None:
    class Broken(DeliveryObserver):
        def delivered(self, items: Sequence[ClaimedItem]) -> None:
            raise RuntimeError("metrics down")

    worker = make_worker(state, HttpSink(fake.url, api_key=KEY), clock, Broken())
    queue(state, [ep(1), ep(2)])
    drain(worker)
    assert fake.episode_count == 2 and state.stats().depth == 0


def test_invalid_settings_are_refused(state: MemoryState, clock: FakeClock) -> None:
    sink = ScriptedSink()
    for bad in (
        {"batch_size": 0},
        {"concurrency": 0},
        {"lease_seconds": 0},
        {"backoff_initial": 5.0, "backoff_max": 1.0},
    ):
        with pytest.raises(ValueError):
            make_worker(state, sink, clock, **bad)
