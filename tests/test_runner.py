"""The Runner wired for real: state, delivery worker, timers, HTTP server, metrics.

Connectors are the test kinds from ``demo_connectors``; delivery goes to an
in-test sink (a callable), so these tests pin the runner's own behaviour.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from statewave_runner.config import Config, parse_config
from statewave_runner.connectors.base import Episode
from statewave_runner.errors import RetryableError, RunnerError, StateError
from statewave_runner.runner import Runner
from statewave_runner.state import MemoryState, OutboxItem

from . import demo_connectors
from ._metrics_oracle import SampleKey, check_text

SECRET = "demo-signing-secret-1"
TOKEN = "ghp_secret_token_123"

BASE = f"""
[statewave]
url = "https://statewave.invalid"
api_key = "sk_test_abcdef"
backoff_initial = 0.01
backoff_max = 0.05

[runner]
host = "127.0.0.1"
port = 0
stop_timeout = 5
log_format = "text"

[[pull.demo]]
name = "main"
schedule = "every 1h"
repo = "a/b"
pages = 2
token = "{TOKEN}"

[[pull.demo]]
name = "dry"
schedule = "0 9 * * MON"
repo = "a/dry"
dry_run = true

[[push.demo]]
name = "hooks"
signing_secret = "{SECRET}"
channels = ["C1"]
"""


def config(text: str = BASE) -> Config:
    return parse_config(text, env={}, registry=demo_connectors.registry())


class Sink:
    """Records delivered episodes; can be made to fail."""

    def __init__(self) -> None:
        self.episodes: list[Episode] = []
        self.fail_with: Exception | None = None
        self.lock = threading.Lock()

    def __call__(self, episodes: Sequence[Episode]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        with self.lock:
            self.episodes.extend(episodes)

    def keys(self) -> list[str]:
        with self.lock:
            return [e.idempotency_key for e in self.episodes]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _reset_demo() -> Iterator[None]:
    demo_connectors.DemoPull.calls.clear()
    demo_connectors.DemoPull.gate = None
    yield
    demo_connectors.DemoPull.gate = None


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def runner(sink: Sink) -> Iterator[Runner]:
    r = Runner(config(), ingest=sink)
    r.start()
    yield r
    r.stop()


def request(
    r: Runner,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = r.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def push(r: Runner, event_id: str, text: str = "hi") -> tuple[int, dict[str, Any]]:
    body = json.dumps({"id": event_id, "text": text}).encode()
    status, _, raw = request(
        r,
        "POST",
        "/demo/hooks/events",
        body,
        {"X-Demo-Secret": SECRET, "Content-Type": "application/json"},
    )
    return status, json.loads(raw)


def scrape(r: Runner, *, promtool: bool = False) -> dict[SampleKey, float]:
    """One scrape over HTTP, parsed by prometheus_client's parser (and promtool on request)."""
    status, _, body = request(r, "GET", "/metrics")
    assert status == 200
    return check_text(body, promtool=promtool)


def sample(samples: dict[SampleKey, float], series: str, /, **labels: str) -> float:
    return samples[(series, tuple(sorted(labels.items())))]


# --------------------------------------------------------------------------- lifecycle


def test_start_and_stop_are_idempotent_and_flip_readiness(sink: Sink) -> None:
    r = Runner(config(), ingest=sink)
    assert not r.ready
    r.start()
    r.start()
    assert r.ready
    assert request(r, "GET", "/readyz")[0] == 200
    assert request(r, "GET", "/healthz")[0] == 200
    r.stop()
    r.stop()
    assert not r.ready
    with pytest.raises(RunnerError, match="cannot be started again"):
        r.start()


def test_start_and_stop_from_many_threads(sink: Sink) -> None:
    r = Runner(config(), ingest=sink)
    threads = [threading.Thread(target=r.start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.ready
    threads = [threading.Thread(target=r.stop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not r.ready


def test_context_manager(sink: Sink) -> None:
    with Runner(config(), ingest=sink) as r:
        assert r.ready
    assert not r.ready


def test_no_tick_fires_at_start(runner: Runner) -> None:
    assert demo_connectors.DemoPull.calls == []
    info = runner.describe()["pull"][0]
    assert info["last_fire_at"] is None and info["next_fire_at"] is not None


def test_failed_start_leaves_nothing_running(sink: Sink) -> None:
    r1 = Runner(config(), ingest=sink)
    r1.start()
    try:
        _, port = r1.address
        r2 = Runner(config(BASE.replace("port = 0", f"port = {port}")), ingest=sink)
        before = set(threading.enumerate())
        with pytest.raises(RunnerError, match=f"cannot listen on 127.0.0.1:{port}"):
            r2.start()
        assert not r2.ready
        assert set(threading.enumerate()) - before == set()  # worker and timers are gone
        with pytest.raises(RunnerError, match="not running"):
            r2.state  # noqa: B018 - the property raises once the runner is torn down
    finally:
        r1.stop()


# --------------------------------------------------------------------------- pull


def test_tick_queues_checkpoints_moves_cursor_and_delivers(runner: Runner, sink: Sink) -> None:
    result = runner.run_tick("demo/main")
    assert (result.outcome, result.emitted, result.queued) == ("ok", 4, 4)
    assert runner.state.get_cursor("demo", "main") == "2"
    wait_for(lambda: len(sink.episodes) == 4)
    assert {e.connector for e in sink.episodes} == {"demo/main"}
    # The next tick resumes from the cursor: new pages, new keys.
    runner.run_tick("demo/main")
    assert demo_connectors.DemoPull.calls == [None, "2"]
    wait_for(lambda: len(sink.episodes) == 8)
    assert len(set(sink.keys())) == 8
    samples = scrape(runner)
    assert sample(samples, "statewave_runner_pull_ticks_total", kind="demo", name="main") == 2
    assert (
        sample(samples, "statewave_runner_pull_episodes_emitted_total", kind="demo", name="main")
        == 8
    )
    wait_for(
        lambda: (
            sample(
                scrape(runner),
                "statewave_runner_pull_episodes_ingested_total",
                kind="demo",
                name="main",
            )
            == 8
        )
    )


def test_from_scratch_refetch_is_absorbed_by_dedup(runner: Runner, sink: Sink) -> None:
    runner.run_tick("demo/main")
    result = runner.run_tick("demo/main", from_scratch=True)
    assert (result.emitted, result.queued) == (4, 0)
    wait_for(lambda: len(sink.episodes) == 4)
    time.sleep(0.1)
    assert len(sink.episodes) == 4


def test_dry_run_queues_nothing_and_keeps_cursor(runner: Runner, sink: Sink) -> None:
    result = runner.run_tick("demo/dry")
    assert (result.outcome, result.emitted, result.queued, result.dry_run) == ("ok", 2, 0, True)
    assert runner.state.get_cursor("demo", "dry") is None
    assert runner.state.stats().depth == 0
    samples = scrape(runner)
    assert (
        sample(samples, "statewave_runner_pull_episodes_emitted_total", kind="demo", name="dry")
        == 2
    )


def test_cursor_does_not_move_when_queueing_fails(sink: Sink) -> None:
    class FailingPut(MemoryState):
        def put_and_set_cursor(
            self, items: Sequence[OutboxItem], kind: str, name: str, cursor: str | None
        ) -> int:
            raise StateError("disk full")

    state = FailingPut()
    with Runner(config(), ingest=sink, state=state) as r:
        result = r.run_tick("demo/main")
        assert result.outcome == "queue_error" and "disk full" in (result.error or "")
        assert state.get_cursor("demo", "main") is None
        samples = scrape(r)
        assert (
            sample(
                samples,
                "statewave_runner_pull_errors_total",
                kind="demo",
                name="main",
                reason="ingest",
            )
            == 1
        )


def test_connector_exception_is_a_sync_error_and_keeps_progress(runner: Runner, sink: Sink) -> None:
    original = demo_connectors.DemoPull.sync

    def explode_after_first(self: demo_connectors.DemoPull, request: Any) -> Iterator[Any]:
        gen = original(self, request)
        yield next(gen)
        raise ValueError(f"upstream broke, token {TOKEN}")

    demo_connectors.DemoPull.sync = explode_after_first  # type: ignore[method-assign]
    try:
        result = runner.run_tick("demo/main")
    finally:
        demo_connectors.DemoPull.sync = original  # type: ignore[method-assign]
    assert result.outcome == "sync_error"
    assert TOKEN not in (result.error or "") and "upstream broke" in (result.error or "")
    assert runner.state.get_cursor("demo", "main") == "1"  # the first checkpoint stands
    samples = scrape(runner)
    assert (
        sample(
            samples, "statewave_runner_pull_errors_total", kind="demo", name="main", reason="sync"
        )
        == 1
    )


def test_rate_limit_ends_the_tick_early_with_its_progress(runner: Runner) -> None:
    from statewave_runner.httpclient import RateLimitedError

    original = demo_connectors.DemoPull.sync

    def limited(self: demo_connectors.DemoPull, request: Any) -> Iterator[Any]:
        gen = original(self, request)
        yield next(gen)
        raise RateLimitedError("rate limit exhausted", status=403, retry_at=2_000_000_000.0)

    demo_connectors.DemoPull.sync = limited  # type: ignore[method-assign]
    try:
        result = runner.run_tick("demo/main")
    finally:
        demo_connectors.DemoPull.sync = original  # type: ignore[method-assign]
    assert result.outcome == "rate_limited"
    assert "until 2033-05-18T03:33:20Z" in (result.error or "")
    assert runner.state.get_cursor("demo", "main") == "1"
    samples = scrape(runner)
    assert (
        sample(
            samples, "statewave_runner_pull_errors_total", kind="demo", name="main", reason="sync"
        )
        == 1
    )


def test_delivery_retries_until_the_sink_recovers(runner: Runner, sink: Sink) -> None:
    sink.fail_with = RetryableError("statewave down", retry_after=0.01)
    runner.run_tick("demo/main")
    wait_for(lambda: runner.describe()["delivery"]["state"] != "running")
    assert sink.episodes == []
    sink.fail_with = None
    wait_for(lambda: len(sink.episodes) == 4)
    assert runner.state.stats().depth == 0


# --------------------------------------------------------------------------- push


def test_push_is_acknowledged_after_durable_queue_and_delivered(runner: Runner, sink: Sink) -> None:
    assert push(runner, "e1") == (200, {"ok": True})
    assert push(runner, "e1") == (200, {"ok": True, "deduplicated": True})
    wait_for(lambda: len(sink.episodes) == 1)
    (episode,) = sink.episodes
    assert episode.connector == "demo/hooks" and episode.subject == "demo:push"
    samples = scrape(runner)
    assert sample(samples, "statewave_runner_push_deliveries_total", kind="demo", name="hooks") == 2
    assert (
        sample(
            samples,
            "statewave_runner_push_responses_total",
            kind="demo",
            name="hooks",
            status="200",
        )
        == 2
    )


def test_emit_failure_answers_503_and_the_retry_is_delivered_once(sink: Sink) -> None:
    class Flaky(MemoryState):
        fail = True

        def put(self, items: Sequence[OutboxItem]) -> int:
            if self.fail:
                raise StateError("database is locked")
            return super().put(items)

    state = Flaky()
    with Runner(config(), ingest=sink, state=state) as r:
        assert push(r, "e9")[0] == 503
        state.fail = False
        assert push(r, "e9") == (200, {"ok": True})
        assert push(r, "e9")[1].get("deduplicated") is True
        wait_for(lambda: len(sink.episodes) == 1)
        time.sleep(0.1)
        assert len(sink.episodes) == 1


def test_configured_push_subject_overrides(sink: Sink) -> None:
    text = BASE.replace('signing_secret = "', 'subject = "team:override"\nsigning_secret = "')
    with Runner(config(text), ingest=sink) as r:
        assert push(r, "s1")[0] == 200
        wait_for(lambda: len(sink.episodes) == 1)
        assert sink.episodes[0].subject == "team:override"


ONCE = BASE.replace('channels = ["C1"]\n', 'channels = ["C1"]\nonce = true\n')


def test_emit_once_queues_marks_and_answers_the_retry_from_the_mark(sink: Sink) -> None:
    with Runner(config(ONCE), ingest=sink) as r:
        assert push(r, "e1") == (200, {"ok": True})
        assert r.state.contains("e1")
        assert push(r, "e1") == (200, {"ok": True, "deduplicated": True})
        wait_for(lambda: len(sink.episodes) == 1)
        (episode,) = sink.episodes
        assert episode.connector == "demo/hooks" and episode.subject == "demo:push"
        time.sleep(0.1)
        assert len(sink.episodes) == 1


def test_emit_once_failure_is_503_marks_nothing_and_the_retry_is_delivered_once(
    sink: Sink,
) -> None:
    class Flaky(MemoryState):
        fail = True

        def put_and_mark(
            self, items: Sequence[OutboxItem], key: str, ttl_seconds: float
        ) -> tuple[int, bool]:
            if self.fail:
                raise StateError("database is locked")
            return super().put_and_mark(items, key, ttl_seconds)

    state = Flaky()
    with Runner(config(ONCE), ingest=sink, state=state) as r:
        assert push(r, "e9")[0] == 503
        assert not state.contains("e9") and state.stats().depth == 0
        state.fail = False
        assert push(r, "e9") == (200, {"ok": True})
        assert push(r, "e9")[1].get("deduplicated") is True
        wait_for(lambda: len(sink.episodes) == 1)
        time.sleep(0.1)
        assert len(sink.episodes) == 1


def test_emit_once_applies_the_configured_push_subject(sink: Sink) -> None:
    text = ONCE.replace('signing_secret = "', 'subject = "team:override"\nsigning_secret = "')
    with Runner(config(text), ingest=sink) as r:
        assert push(r, "s1")[0] == 200
        wait_for(lambda: len(sink.episodes) == 1)
        assert sink.episodes[0].subject == "team:override"


def test_receiver_exception_is_500_with_request_id(runner: Runner, sink: Sink) -> None:
    status, _, raw = request(
        runner, "POST", "/demo/hooks/events", b"{not json", {"X-Demo-Secret": SECRET}
    )
    assert status == 500
    body = json.loads(raw)
    assert body["error"] == "handler_threw" and body["request_id"]
    samples = scrape(runner)
    assert (
        sample(samples, "statewave_runner_push_handler_errors_total", kind="demo", name="hooks")
        == 1
    )
    assert request(runner, "GET", "/healthz")[0] == 200


def test_receivers_answer_non_post_with_405(runner: Runner) -> None:
    status, headers, _ = request(runner, "GET", "/demo/hooks/events")
    assert status == 405 and "POST" in headers["allow"]


def test_unknown_path_hint_lists_mounts(runner: Runner) -> None:
    status, _, raw = request(runner, "GET", "/nope")
    assert status == 404
    assert json.loads(raw) == {
        "error": "not_found",
        "hint": "mounted: /healthz, /readyz, /metrics, /demo/hooks/events",
    }


# --------------------------------------------------------------------------- stop


def test_stop_flips_readyz_first_and_lets_the_tick_finish(sink: Sink) -> None:
    gate = threading.Event()
    demo_connectors.DemoPull.gate = gate
    r = Runner(config(), ingest=sink)
    r.start()
    results: list[Any] = []
    ticker = threading.Thread(target=lambda: results.append(r.run_tick("demo/main")))
    ticker.start()
    wait_for(lambda: demo_connectors.DemoPull.calls != [])
    stopper = threading.Thread(target=r.stop)
    stopper.start()
    wait_for(lambda: not r.ready)
    gate.set()
    stopper.join(10)
    ticker.join(10)
    assert not stopper.is_alive()
    # A stop interrupts a multi-page tick at the next checkpoint; what was
    # queued before is delivered or stays queued, never half-applied.
    (result,) = results
    assert result.outcome == "ok" and result.interrupted
    assert result.queued == 2


# --------------------------------------------------------------------------- describe / metrics


def test_describe_reports_status_without_secrets(runner: Runner) -> None:
    runner.run_tick("demo/main")
    info = runner.describe()
    text = json.dumps(info)
    for secret in (SECRET, TOKEN, "sk_test_abcdef"):
        assert secret not in text
    assert info["ready"] is True
    assert info["sink"] == {"kind": "http", "url": "https://statewave.invalid"}
    main = next(p for p in info["pull"] if p["key"] == "demo/main")
    assert main["last_outcome"] == "ok" and main["schedule"] == "every 1h"
    assert info["push"][0]["path"] == "/demo/hooks/events"
    assert "delivery" in info and "outbox" in info


def test_every_source_has_series_from_the_first_scrape(runner: Runner) -> None:
    samples = scrape(runner, promtool=True)
    for name in ("main", "dry"):
        assert sample(samples, "statewave_runner_pull_ticks_total", kind="demo", name=name) == 0
        for reason in ("load", "sync", "ingest"):
            assert (
                sample(
                    samples,
                    "statewave_runner_pull_errors_total",
                    kind="demo",
                    name=name,
                    reason=reason,
                )
                == 0
            )
    assert sample(samples, "statewave_runner_push_deliveries_total", kind="demo", name="hooks") == 0
    assert sample(samples, "statewave_runner_schedules_armed") == 2
    assert sample(samples, "statewave_runner_push_receivers_mounted") == 1
    assert sample(samples, "statewave_runner_ready") == 1
    assert (
        sample(
            samples, "statewave_runner_pull_next_fire_timestamp_seconds", kind="demo", name="main"
        )
        > time.time()
    )


def test_two_runners_in_one_process_do_not_share_metrics(sink: Sink) -> None:
    with Runner(config(), ingest=sink) as a, Runner(config(), ingest=sink) as b:
        a.run_tick("demo/main")
        assert sample(scrape(a), "statewave_runner_pull_ticks_total", kind="demo", name="main") == 1
        assert sample(scrape(b), "statewave_runner_pull_ticks_total", kind="demo", name="main") == 0


def test_sync_once_runs_one_tick_and_flushes(tmp_path: Path, sink: Sink) -> None:
    r = Runner(config(), ingest=sink)
    seen: list[Episode] = []
    result = r.sync_once("demo/main", on_episodes=seen.extend, flush_timeout=5)
    assert result.outcome == "ok" and len(seen) == 4
    assert len(sink.episodes) == 4
    with pytest.raises(RunnerError, match="no pull source 'demo/x'"):
        Runner(config(), ingest=sink).sync_once("demo/x")


def test_logger_is_the_parent_of_every_runner_logger(sink: Sink) -> None:
    import logging

    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    parent = logging.getLogger("embedder.statewave")
    parent.setLevel(logging.DEBUG)
    handler = Capture()
    parent.addHandler(handler)
    try:
        with Runner(config(), ingest=sink, logger=parent) as r:
            r.run_tick("demo/main")
        names = {rec.name for rec in records}
        assert "embedder.statewave.pull" in names and "embedder.statewave" in names
        tick = next(rec for rec in records if rec.name == "embedder.statewave.pull")
        assert tick.getMessage().startswith("tick complete")
    finally:
        parent.removeHandler(handler)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_leases_give_one_tick_per_slot_across_replicas(sink: Sink) -> None:
    clock = FakeClock(1_700_000_000.0)  # 40 minutes into an hour: "every 1h" slot ends at :00
    state = MemoryState(clock=clock)
    a = Runner(
        config(BASE.replace("[runner]", '[runner]\nreplica_id = "a"')),
        ingest=sink,
        state=state,
        clock=clock,
    )
    b = Runner(
        config(BASE.replace("[runner]", '[runner]\nreplica_id = "b"')),
        ingest=sink,
        state=state,
        clock=clock,
    )
    a.lease_heartbeat = 0.02
    with a, b:
        assert a.run_tick("demo/main").outcome == "ok"
        # Same slot: the other replica skips, the holder itself may tick again.
        assert b.run_tick("demo/main").outcome == "leased_elsewhere"
        assert a.run_tick("demo/main").outcome == "ok"
        clock.advance(3600)  # next slot: whoever fires first takes it
        assert b.run_tick("demo/main").outcome == "ok"
        assert a.run_tick("demo/main").outcome == "leased_elsewhere"

        # A tick that outlives its slot keeps its lease through the heartbeat.
        gate = threading.Event()
        demo_connectors.DemoPull.gate = gate
        clock.advance(3600)
        results: list[Any] = []
        ticker = threading.Thread(target=lambda: results.append(a.run_tick("demo/main")))
        ticker.start()
        wait_for(lambda: len(demo_connectors.DemoPull.calls) == 4)
        clock.advance(3 * 3600)  # far past the slot and the 30 s running lease
        time.sleep(0.2)  # several heartbeats
        assert b.run_tick("demo/main").outcome == "leased_elsewhere"
        gate.set()
        ticker.join(10)
        assert results[0].outcome == "ok" and not results[0].interrupted
        # The finished tick's lease was cut back to the end of its slot.
        assert b.run_tick("demo/main").outcome == "leased_elsewhere"
        clock.advance(3600)
        assert b.run_tick("demo/main").outcome == "ok"


def test_state_failure_at_tick_start_is_counted_not_raised(sink: Sink) -> None:
    class Down(MemoryState):
        def acquire(self, key: str, owner: str, ttl_seconds: float) -> bool:
            raise StateError("connection refused by db.internal")

    with Runner(config(), ingest=sink, state=Down()) as r:
        result = r.run_tick("demo/main")
        assert result.outcome == "state_error" and "connection refused" in (result.error or "")
        samples = scrape(r)
        assert (
            sample(
                samples,
                "statewave_runner_pull_errors_total",
                kind="demo",
                name="main",
                reason="load",
            )
            == 1
        )


def test_serve_forever_runs_housekeeping_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    import os
    import signal

    cfg = config(
        '[statewave]\nurl = "http://127.0.0.1:9"\n[runner]\nhost = "127.0.0.1"\nport = 0\n'
    )
    calls: list[bool] = []

    def housekeeping() -> None:
        calls.append(True)
        if len(calls) == 1:
            raise RuntimeError("boom")  # logged; serving goes on
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    runner = Runner(cfg, ingest=Sink())
    code = runner.serve_forever(housekeeping=housekeeping, housekeeping_interval=0.01)
    assert code == 0
    assert len(calls) == 3
    assert not runner.ready
    assert "housekeeping raised" in caplog.text
