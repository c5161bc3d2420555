"""The delivery worker's threads against the fake Statewave: outages, resets, stop, wake."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest

from statewave_runner.connectors.base import Episode, SourcePointer, make_episode
from statewave_runner.ingest import CallableSink, HttpSink
from statewave_runner.outbox import DeliveryWorker, outbox_item
from statewave_runner.state.base import ClaimedItem
from statewave_runner.state.memory import MemoryState
from tests.fakes import Close, Delay, FakeStatewave, Reset

KEY = "sw-pipeline-key-7"


def ep(n: int, subject: str = "team:core") -> Episode:
    return dataclasses.replace(
        make_episode(
            subject=subject,
            kind="message",
            text=f"event {n}",
            source=SourcePointer("test.event", str(n)),
            occurred_at=1_700_000_000_000 + n,
            key_parts=["pipeline", n],
        )
    )


def fast_worker(state: MemoryState, sink: HttpSink, **kwargs: object) -> DeliveryWorker:
    options: dict[str, object] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.3,
        "poll_interval": 0.05,
        "probe_interval": 0.2,
        "lease_seconds": 30.0,
    }
    options.update(kwargs)
    return DeliveryWorker(state, sink, **options)  # type: ignore[arg-type]


def wait_until(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def fake() -> Iterator[FakeStatewave]:
    with FakeStatewave(KEY) as server:
        yield server


@pytest.mark.slow
def test_outage_5000_episodes_from_pull_and_push_each_delivered_once(
    fake: FakeStatewave, caplog: pytest.LogCaptureFixture
) -> None:
    state = MemoryState()
    sink = HttpSink(fake.url, api_key=KEY, timeout=2)
    worker = fast_worker(state, sink)
    fake.down()
    worker.start()
    expected: set[str] = set()
    lock = threading.Lock()

    def pull(source: int) -> None:
        # 10 pages of 100; each page re-fetches the last 20 of the previous one
        # (an overlapping window), which must not be queued twice.
        base = source * 10_000
        start = 0
        for page in range(10):
            episodes = [ep(base + n) for n in range(max(0, start - 20), start + 100)]
            items = [outbox_item(e, f"github/repo{source}") for e in episodes]
            state.put_and_set_cursor(items, "github", f"repo{source}", f"page-{page}")
            worker.wake()
            with lock:
                expected.update(e.idempotency_key for e in episodes)
            start += 100

    def push(receiver: int) -> None:
        base = 100_000 + receiver * 10_000
        for n in range(750):
            episode = ep(base + n)
            state.put([outbox_item(episode, f"slack/hook{receiver}")])
            if n % 10 == 0:  # a sender retrying a webhook it already sent
                state.put([outbox_item(episode, f"slack/hook{receiver}")])
            worker.wake()
            with lock:
                expected.add(episode.idempotency_key)

    with caplog.at_level(logging.INFO, logger="statewave_runner.delivery"):
        producers = [threading.Thread(target=pull, args=(i,)) for i in range(2)]
        producers += [threading.Thread(target=push, args=(i,)) for i in range(4)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join()
        assert len(expected) == 5000
        assert state.stats().depth == 5000
        assert wait_until(lambda: worker.status().consecutive_failures >= 3)
        assert worker.status().state == "stalled"
        assert fake.episode_count == 0
        fake.up()
        assert fake.wait_for_episodes(5000, timeout=60)
        worker.stop(5)
    delivered = Counter(fake.idempotency_keys())
    assert set(delivered) == expected
    assert max(delivered.values()) == 1  # none twice
    assert state.stats().depth == 0 and state.stats().dead == 0
    assert state.get_cursor("github", "repo1") == "page-9"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("delivery stalled" in m for m in messages) == 1
    assert sum("recovered" in m for m in messages) == 1


def test_resets_and_timeouts_are_retried_duplicates_only_from_the_timed_out_request(
    fake: FakeStatewave,
) -> None:
    state = MemoryState()
    worker = fast_worker(state, HttpSink(fake.url, api_key=KEY, timeout=0.5), batch_size=50)
    episodes = [ep(n) for n in range(400)]
    fake.script(Reset(), Delay(1.2), Close(), path="/v1/episodes/batch")
    state.put([outbox_item(e, "test/x") for e in episodes])
    worker.start()
    try:
        assert fake.wait_for_episodes(400, timeout=30)
        assert wait_until(lambda: state.stats().depth == 0)
    finally:
        worker.stop(5)
    assert fake.wait_idle()  # the delayed request lands after we gave up on it
    delivered = Counter(fake.idempotency_keys())
    assert set(delivered) == {e.idempotency_key for e in episodes}
    twice = {key for key, count in delivered.items() if count > 1}
    assert max(delivered.values()) <= 2
    # The only request the server stored but we never heard back from is the
    # delayed one: every duplicate comes from that single request.
    carriers = [
        {e.idempotency_key for e in fake.episodes if e.request == i}
        for i in range(fake.request_count)
    ]
    assert twice, "the timed-out request was stored by the server and sent again"
    assert any(twice == keys for keys in carriers)
    assert len(twice) <= 50
    statuses = [r.status for r in fake.requests if r.path == "/v1/episodes/batch"]
    assert statuses.count(None) == 2  # the reset and the close


def test_batch_route_404_delivers_one_by_one_in_the_pipeline() -> None:
    with FakeStatewave(KEY, batch_route=False) as server:
        state = MemoryState()
        worker = fast_worker(state, HttpSink(server.url, api_key=KEY))
        state.put([outbox_item(ep(n), "test/x") for n in range(60)])
        worker.start()
        try:
            assert server.wait_for_episodes(60, timeout=20)
        finally:
            worker.stop(5)
        assert Counter(server.idempotency_keys()) == Counter(
            ep(n).idempotency_key for n in range(60)
        )


def test_wake_starts_delivery_without_waiting_for_the_poll(fake: FakeStatewave) -> None:
    state = MemoryState()
    worker = fast_worker(state, HttpSink(fake.url, api_key=KEY), poll_interval=120.0)
    worker.start()
    try:
        time.sleep(0.2)  # the threads are now asleep for a poll interval of 2 minutes
        state.put([outbox_item(ep(n), "test/x") for n in range(10)])
        worker.wake()
        assert fake.wait_for_episodes(10, timeout=15)
    finally:
        worker.stop(5)


def test_wake_between_an_empty_claim_and_the_sleep_is_not_lost() -> None:
    # A producer queues and wakes right after the worker found nothing due and
    # before it sleeps: the item must not wait for the (2-minute) poll.
    delivered: list[Episode] = []
    worker: DeliveryWorker

    class RacingState(MemoryState):
        raced = False

        def claim(self, limit: int, lease_seconds: float) -> list[ClaimedItem]:
            items = super().claim(limit, lease_seconds)
            if not items and not self.raced:
                self.raced = True
                self.put([outbox_item(ep(1), "test/x")])
                worker.wake()
            return items

    state = RacingState()
    worker = DeliveryWorker(
        state, CallableSink(delivered.extend), concurrency=1, poll_interval=120.0
    )
    worker.start()
    try:
        assert wait_until(lambda: len(delivered) == 1, timeout=10)
    finally:
        worker.stop(5)


def test_wake_takes_no_lock_while_every_delivery_thread_is_busy() -> None:
    entered, release = threading.Event(), threading.Event()
    delivered: list[Episode] = []

    def sink(episodes: Sequence[Episode]) -> None:
        entered.set()
        release.wait(10)
        delivered.extend(episodes)

    state = MemoryState()
    state.put([outbox_item(ep(1), "test/x")])
    worker = DeliveryWorker(state, CallableSink(sink), concurrency=1, poll_interval=120.0)
    worker.start()
    try:
        assert entered.wait(10)
        # The only delivery thread is inside the sink. Hold the worker's lock:
        # a wake() that took it would block.
        with worker._lock:
            state.put([outbox_item(ep(2), "test/x")])
            waker = threading.Thread(target=worker.wake)
            waker.start()
            waker.join(2)
            assert not waker.is_alive()
        release.set()
        assert wait_until(lambda: len(delivered) == 2, timeout=10)
    finally:
        release.set()
        worker.stop(5)


def test_stop_flushes_what_is_queued(fake: FakeStatewave) -> None:
    state = MemoryState()
    worker = fast_worker(state, HttpSink(fake.url, api_key=KEY), poll_interval=120.0)
    worker.start()
    time.sleep(0.2)
    state.put([outbox_item(ep(n), "test/x") for n in range(300)])  # no wake()
    worker.stop(timeout=20)
    assert fake.episode_count == 300
    assert state.stats().depth == 0
    assert worker.status().state == "stopped"


def test_stop_while_stalled_leaves_everything_queued_for_the_next_start(
    fake: FakeStatewave,
) -> None:
    state = MemoryState()
    fake.down()
    worker = fast_worker(state, HttpSink(fake.url, api_key=KEY, timeout=1))
    state.put([outbox_item(ep(n), "test/x") for n in range(50)])
    worker.start()
    assert wait_until(lambda: worker.status().state == "stalled")
    worker.stop(timeout=5)
    assert worker.status().state == "stopped"
    assert state.stats().depth == 50 and state.stats().dead == 0
    fake.up()
    worker.start()  # the same worker again, like a runner restart in-process
    try:
        assert fake.wait_for_episodes(50, timeout=20)
    finally:
        worker.stop(5)


def test_start_and_stop_are_idempotent(fake: FakeStatewave) -> None:
    state = MemoryState()
    worker = fast_worker(state, HttpSink(fake.url, api_key=KEY), concurrency=3)

    def ours() -> int:
        return sum(t.name.startswith("statewave-delivery-") for t in threading.enumerate())

    before = ours()
    worker.stop()
    worker.start()
    worker.start()
    assert ours() - before == 3
    worker.stop(5)
    worker.stop(5)
    assert wait_until(lambda: ours() == before, timeout=10)
