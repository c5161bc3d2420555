"""timers.py with fake clocks: no sleeps-and-hope.

Time is moved by hand (FakeClock.advance / jump_wall) and the loop is driven by
``run_pending()`` (or, for the thread test, ``wake()``). Ticks run on real
worker threads; tests synchronise with events and ``wait_idle``, all with
generous real-time timeouts that only matter when something is broken.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from statewave_runner.schedule import parse
from statewave_runner.timers import TimerInfo, Timers

WAIT = 10.0  # real seconds; reached only when a test is about to fail anyway
T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, wall: float = T0, mono: float = 1000.0):
        self._wall = wall
        self._mono = mono
        self._lock = threading.Lock()

    def wall(self) -> float:
        with self._lock:
            return self._wall

    def mono(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def jump_wall(self, seconds: float) -> None:
        with self._lock:
            self._wall += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock: FakeClock) -> Iterator[Callable[..., Timers]]:
    made: list[Timers] = []

    def factory(**kw: object) -> Timers:
        t = Timers(wall_clock=clock.wall, monotonic=clock.mono, **kw)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield factory
    for t in made:
        t.stop(timeout=WAIT)


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.n += 1


def step(timers: Timers, clock: FakeClock, seconds: float) -> None:
    """Advance time, dispatch what is due, wait for the ticks to finish."""
    clock.advance(seconds)
    timers.run_pending()
    assert timers.wait_idle(WAIT)


def test_no_fire_at_start_first_tick_one_period_out(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make()
    count = Counter()
    timers.add("github/a", parse("every 60s"), count)
    timers.start(run_thread=False)
    assert timers.run_pending() == pytest.approx(60.0)
    assert timers.wait_idle(WAIT) and count.n == 0
    step(timers, clock, 59.9)
    assert count.n == 0
    step(timers, clock, 0.1)
    assert count.n == 1
    info = timers.info("github/a")
    assert info.fires == 1 and info.skipped == 0 and not info.running
    assert info.last_fire_at == pytest.approx(T0 + 60)
    assert info.next_fire_at == pytest.approx(T0 + 120)


def test_interval_is_fixed_rate_and_skips_missed_periods(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make()
    count = Counter()
    timers.add("a", parse("every 10s"), count)
    timers.start(run_thread=False)
    for _ in range(5):
        step(timers, clock, 10)
    assert count.n == 5
    # A stall of 95 s (e.g. the process was stopped): one tick, not nine.
    step(timers, clock, 95)
    assert count.n == 6
    # Still on the arming grid: due at +100+50=150 s... i.e. 5 s from now.
    assert timers.info("a").next_fire_at == pytest.approx(clock.wall() + 5)


def test_cron_fires_on_wall_clock_boundaries(make: Callable[..., Timers], clock: FakeClock) -> None:
    timers = make()
    fired: list[float] = []
    timers.add("c", parse("*/30 * * * * *"), lambda: fired.append(clock.wall()))
    clock.advance(7)  # 12:00:07
    timers.start(run_thread=False)
    assert timers.info("c").next_fire_at == T0 + 30
    step(timers, clock, 22.9)
    assert fired == []
    step(timers, clock, 0.1)  # 12:00:30
    step(timers, clock, 30)  # 12:01:00
    assert fired == [pytest.approx(T0 + 30), pytest.approx(T0 + 60)]


def test_slow_tick_is_coalesced_not_queued(make: Callable[..., Timers], clock: FakeClock) -> None:
    skipped: list[str] = []
    timers = make(on_skip=skipped.append)
    release = threading.Event()
    started = threading.Event()
    count = Counter()

    def slow() -> None:
        count()
        started.set()
        assert release.wait(WAIT)

    timers.add("slow", parse("every 10s"), slow)
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending()
    assert started.wait(WAIT)
    assert timers.info("slow").running
    for _ in range(3):
        clock.advance(10)
        timers.run_pending()
    info = timers.info("slow")
    assert (info.fires, info.skipped, info.running) == (1, 3, True)
    assert skipped == ["slow"] * 3
    release.set()
    assert timers.wait_idle(WAIT)
    assert count.n == 1  # no catch-up burst after the slow tick
    step(timers, clock, 10)
    assert count.n == 2
    assert timers.info("slow").skipped == 3


def test_slow_source_does_not_delay_another(make: Callable[..., Timers], clock: FakeClock) -> None:
    timers = make(max_workers=4)
    release = threading.Event()
    slow_started = threading.Event()
    fast = Counter()
    fast_fired = threading.Event()

    def slow() -> None:
        slow_started.set()
        assert release.wait(WAIT)

    def quick() -> None:
        fast()
        fast_fired.set()

    timers.add("slow", parse("every 10s"), slow)
    timers.add("fast", parse("every 10s"), quick)
    timers.start(run_thread=False)
    for _ in range(3):
        clock.advance(10)
        timers.run_pending()
        assert fast_fired.wait(WAIT)
        fast_fired.clear()
    assert slow_started.is_set()
    assert fast.n == 3
    assert timers.running() == ["slow"]
    assert timers.info("fast").last_lateness == pytest.approx(0.0)
    release.set()


def test_pool_is_bounded_and_ticks_wait_in_fifo_order(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make(max_workers=1)
    release = threading.Event()
    order: list[str] = []

    def blocker() -> None:
        order.append("blocker")
        assert release.wait(WAIT)

    timers.add("blocker", parse("every 10s"), blocker)
    timers.add("other", parse("every 10s"), lambda: order.append("other"))
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending()
    clock.advance(3)  # "other" has been waiting 3 s for the only worker
    release.set()
    assert timers.wait_idle(WAIT)
    assert order == ["blocker", "other"]
    assert timers.info("other").last_lateness == pytest.approx(3.0)


def test_stop_waits_for_in_flight_tick_and_reports_stragglers(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make()
    release = threading.Event()
    started = threading.Event()
    count = Counter()

    def slow() -> None:
        count()
        started.set()
        release.wait(WAIT)

    timers.add("slow", parse("every 10s"), slow)
    timers.add("idle", parse("every 1h"), Counter())
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending()
    assert started.wait(WAIT)
    assert timers.stop(timeout=0.05) == ["slow"]
    assert timers.armed() == 0
    assert timers.info("slow").next_fire_at is None
    release.set()
    assert timers.stop(timeout=WAIT) == []  # idempotent; now drained
    clock.advance(100)
    assert timers.run_pending() is None
    assert count.n == 1
    with pytest.raises(RuntimeError):
        timers.start()


def test_stop_lets_a_finishing_tick_complete(make: Callable[..., Timers], clock: FakeClock) -> None:
    timers = make()
    started = threading.Event()
    finished = threading.Event()
    gate = threading.Event()

    def tick() -> None:
        started.set()
        gate.wait(WAIT)
        finished.set()

    timers.add("a", parse("every 5s"), tick)
    timers.start(run_thread=False)
    clock.advance(5)
    timers.run_pending()
    assert started.wait(WAIT)
    threading.Timer(0.05, gate.set).start()
    assert timers.stop(timeout=WAIT) == []
    assert finished.is_set()


def test_forward_wall_jump_rearms_cron_without_a_burst(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make(jump_threshold=5.0)
    fired: list[float] = []
    timers.add("c", parse("*/10 * * * * *"), lambda: fired.append(clock.wall()))
    timers.add("i", parse("every 10s"), Counter())
    timers.start(run_thread=False)
    step(timers, clock, 10)
    assert fired == [pytest.approx(T0 + 10)]
    clock.jump_wall(3600)  # NTP step / resume: wall is an hour ahead
    step(timers, clock, 0.5)
    assert len(fired) == 1  # no catch-up for the missed hour
    assert timers.info("c").next_fire_at == pytest.approx(T0 + 3610 + 10)
    step(timers, clock, 9.5)
    assert fired[-1] == pytest.approx(T0 + 3620) and len(fired) == 2
    assert timers.info("i").fires == 2  # intervals run on the monotonic clock


def test_backward_wall_jump_does_not_stall_cron(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make(jump_threshold=5.0)
    fired: list[float] = []
    timers.add("c", parse("0 * * * * *"), lambda: fired.append(clock.wall()))  # every minute
    timers.start(run_thread=False)
    step(timers, clock, 60)
    assert fired == [pytest.approx(T0 + 60)]
    clock.jump_wall(-3600)  # wall goes back an hour
    step(timers, clock, 1)
    # re-armed from the new wall time: due in 59 s, not in an hour
    assert timers.info("c").next_fire_at == pytest.approx(T0 - 3600 + 120)
    step(timers, clock, 59)
    assert len(fired) == 2


def test_small_wall_drift_never_fires_cron_early(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make(jump_threshold=5.0)
    count = Counter()
    timers.add("c", parse("0 * * * * *"), count)
    timers.start(run_thread=False)
    clock.jump_wall(-2)  # below the jump threshold: wall now 2 s behind
    step(timers, clock, 60)  # monotonic due reached, wall says 12:00:58
    assert count.n == 0
    step(timers, clock, 2)
    assert count.n == 1


def test_exceptions_go_to_on_error_and_the_timer_survives(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    errors: list[tuple[str, str]] = []
    timers = make(on_error=lambda key, exc: errors.append((key, str(exc))))
    calls = Counter()

    def boom() -> None:
        calls()
        raise RuntimeError("upstream said no")

    timers.add("bad", parse("every 1s"), boom)
    timers.start(run_thread=False)
    for _ in range(3):
        step(timers, clock, 1)
    assert calls.n == 3
    assert errors == [("bad", "upstream said no")] * 3


def test_exceptions_without_hook_are_logged_and_broken_hooks_survive(
    make: Callable[..., Timers], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_hook(key: str, exc: BaseException) -> None:
        raise ValueError("hook bug")

    timers = make()
    timers.add("a", parse("every 1s"), lambda: 1 / 0)  # type: ignore[func-returns-value]
    timers.start(run_thread=False)
    with caplog.at_level(logging.ERROR, logger="statewave_runner.timers"):
        step(timers, clock, 1)
        timers.on_error = bad_hook
        timers.on_fire = lambda key, lateness: (_ for _ in ()).throw(KeyError(key))
        step(timers, clock, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert "timer a: tick failed" in messages
    assert "timer a: on_error hook failed" in messages
    assert "timer a: on_fire hook failed" in messages
    assert timers.info("a").fires == 2


def test_add_remove_and_info(make: Callable[..., Timers], clock: FakeClock) -> None:
    timers = make()
    a, b = Counter(), Counter()
    timers.add("a", parse("every 10s"), a)
    with pytest.raises(ValueError, match="already exists"):
        timers.add("a", parse("every 10s"), a)
    assert timers.info("a") == TimerInfo(None, None, False, 0, 0, None)
    assert timers.armed() == 0
    timers.start(run_thread=False)
    timers.start(run_thread=False)  # idempotent
    clock.advance(5)
    timers.add("b", parse("every 10s"), b)  # added later: first tick one period from now
    assert timers.armed() == 2
    assert timers.keys() == ["a", "b"]
    step(timers, clock, 5)
    assert (a.n, b.n) == (1, 0)
    step(timers, clock, 5)
    assert (a.n, b.n) == (1, 1)
    assert timers.remove("a") is True
    assert timers.remove("a") is False
    for _ in range(3):
        step(timers, clock, 10)
    assert (a.n, b.n) == (1, 4)
    with pytest.raises(KeyError):
        timers.info("a")


def test_removed_and_re_added_key_never_overlaps_its_old_tick(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make()
    release = threading.Event()
    started = threading.Event()

    def slow() -> None:
        started.set()
        assert release.wait(WAIT)

    timers.add("k", parse("every 10s"), slow)
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending()
    assert started.wait(WAIT)
    timers.remove("k")
    second = Counter()
    timers.add("k", parse("every 10s"), second)
    clock.advance(10)
    timers.run_pending()
    assert second.n == 0 and timers.info("k").skipped == 1
    release.set()
    assert timers.wait_idle(WAIT)
    step(timers, clock, 10)
    assert second.n == 1


def test_on_fire_reports_lateness(make: Callable[..., Timers], clock: FakeClock) -> None:
    seen: list[tuple[str, float]] = []
    timers = make(on_fire=lambda key, late: seen.append((key, late)))
    timers.add("a", parse("every 10s"), Counter())
    timers.start(run_thread=False)
    step(timers, clock, 12.5)  # the loop looked 2.5 s late
    assert seen == [("a", pytest.approx(2.5))]


def test_timer_thread_with_fake_clock_and_wake(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make(max_sleep=0.05)
    fired = threading.Event()
    timers.add("a", parse("every 30s"), fired.set)
    timers.start()
    clock.advance(29)
    timers.wake()
    assert not fired.wait(0.2)  # 0.2 s of real time lets the thread loop several times
    clock.advance(1)
    timers.wake()
    assert fired.wait(WAIT)
    assert timers.stop(timeout=WAIT) == []


def test_real_clocks_smoke() -> None:
    timers = Timers()
    fired = threading.Event()
    timers.add("a", parse("*/1 * * * * *"), fired.set)
    timers.start()
    try:
        assert fired.wait(WAIT)
        info = timers.info("a")
        assert info.fires >= 1 and info.last_lateness is not None
    finally:
        assert timers.stop(timeout=WAIT) == []


def test_validation() -> None:
    with pytest.raises(ValueError):
        Timers(max_workers=0)
    with pytest.raises(ValueError):
        Timers(jump_threshold=0)


def test_queued_members_of_a_burst_are_coalesced_once(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    # Sources armed together with one period fire together; with the only worker
    # held by one of them, the others' next firing comes while they are still
    # queued: skipped, and each runs once (not twice) when the worker frees up.
    skipped: list[str] = []
    timers = make(max_workers=1, on_skip=skipped.append)
    release = threading.Event()
    started = threading.Event()
    counts = {k: Counter() for k in ("a", "b")}

    def blocker() -> None:
        started.set()
        assert release.wait(WAIT)

    timers.add("blocker", parse("every 10s"), blocker)
    for key, count in counts.items():
        timers.add(key, parse("every 10s"), count)
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending()
    assert started.wait(WAIT)
    clock.advance(10)
    timers.run_pending()  # blocker running, a and b still queued
    assert sorted(skipped) == ["a", "b", "blocker"]
    release.set()
    assert timers.wait_idle(WAIT)
    assert [c.n for c in counts.values()] == [1, 1]
    assert timers.info("a").last_lateness == pytest.approx(10.0)  # waited for the worker
    step(timers, clock, 10)  # all idle again: everyone fires
    assert [c.n for c in counts.values()] == [2, 2]
    assert [timers.info(k).fires for k in ("blocker", "a", "b")] == [2, 2, 2]
    assert [timers.info(k).skipped for k in ("blocker", "a", "b")] == [1, 1, 1]


def test_queued_member_skipped_again_then_runs_normally(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    # A firing skipped while an earlier one was queued must not make later
    # firings look queued once that earlier one has run.
    timers = make(max_workers=1)
    release = threading.Event()
    started = threading.Event()
    late = Counter()

    def blocker() -> None:
        started.set()
        assert release.wait(WAIT)

    timers.add("blocker", parse("every 10s"), blocker)
    timers.add("late", parse("every 10s"), late)
    timers.add("other", parse("every 10s"), Counter())
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending()
    assert started.wait(WAIT)
    for _ in range(2):  # two more firings while "late" waits behind the blocker
        clock.advance(10)
        timers.run_pending()
    release.set()
    assert timers.wait_idle(WAIT)
    assert (late.n, timers.info("late").skipped) == (1, 2)
    for _ in range(3):
        step(timers, clock, 10)
    assert (late.n, timers.info("late").skipped) == (4, 2)


def test_removed_source_queued_in_a_burst_never_runs(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    timers = make(max_workers=1)
    release = threading.Event()
    started = threading.Event()
    gone, kept = Counter(), Counter()

    def blocker() -> None:
        started.set()
        assert release.wait(WAIT)

    timers.add("blocker", parse("every 10s"), blocker)
    timers.add("gone", parse("every 10s"), gone)
    timers.add("kept", parse("every 10s"), kept)
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending()
    assert started.wait(WAIT)
    assert timers.remove("gone")
    release.set()
    assert timers.wait_idle(WAIT)
    assert (gone.n, kept.n) == (0, 1)
    for _ in range(2):
        step(timers, clock, 10)
    assert (gone.n, kept.n) == (0, 3)
    assert timers.armed() == 2


def test_sources_sharing_a_schedule_keep_their_own_state(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    # Many sources on one cron expression and one interval fire together; removing
    # most of them, and adding one later, leaves each with its own fire times.
    timers = make()
    counts = {f"c{i}": Counter() for i in range(50)} | {f"i{i}": Counter() for i in range(50)}
    for key, count in counts.items():
        timers.add(key, parse("*/10 * * * * *" if key[0] == "c" else "every 10s"), count)
    timers.start(run_thread=False)
    step(timers, clock, 10)
    assert all(c.n == 1 for c in counts.values())
    for i in range(40):  # more than half of each group: the group compacts
        assert timers.remove(f"c{i}") and timers.remove(f"i{i}")
    clock.advance(5)
    late = Counter()
    timers.add("late", parse("every 10s"), late)
    step(timers, clock, 5)
    assert late.n == 0
    step(timers, clock, 5)
    assert late.n == 1
    expected = {k: (1 if int(k[1:]) < 40 else 2) for k in counts}
    assert {k: c.n for k, c in counts.items()} == expected
    assert timers.armed() == 21
    assert timers.info("i45").next_fire_at == pytest.approx(clock.wall() + 5)
    assert timers.info("c45").next_fire_at == pytest.approx(T0 + 30)


def test_member_queued_by_a_partial_firing_is_coalesced(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    # A keeps a worker; the group's next firing queues only B and x; B keeps the
    # other worker, so x is still queued when the group fires again: skipped.
    timers = make(max_workers=2)
    release = threading.Event()
    a_started, b_blocking = threading.Event(), threading.Event()
    b_calls = Counter()
    x = Counter()

    def a() -> None:
        a_started.set()
        assert release.wait(WAIT)

    def b() -> None:
        b_calls()
        if b_calls.n == 2:
            b_blocking.set()
            assert release.wait(WAIT)

    timers.add("a", parse("every 10s"), a)
    timers.add("b", parse("every 10s"), b)
    x_ran = threading.Event()

    def x_tick() -> None:
        x()
        x_ran.set()

    timers.add("x", parse("every 10s"), x_tick)
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending()
    assert a_started.wait(WAIT)
    assert x_ran.wait(WAIT)  # b and x ran on the second worker
    assert (b_calls.n, x.n) == (1, 1)
    clock.advance(10)
    timers.run_pending()  # a running: b and x queued; b blocks the second worker
    assert b_blocking.wait(WAIT)
    clock.advance(10)
    timers.run_pending()  # x still queued: skipped, not queued twice
    assert timers.info("x").skipped == 1
    release.set()
    assert timers.wait_idle(WAIT)
    assert x.n == 2
    step(timers, clock, 10)
    assert (x.n, timers.info("x").skipped, timers.info("x").fires) == (3, 1, 3)


BURST = 64  # timers._BURST: groups this large are queued ahead of their due time


def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll (real time) until ``predicate()``; fail after WAIT seconds."""
    pause = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
    assert predicate()


class Recorder:
    """Counts ticks per key and keeps on_fire's lateness."""

    def __init__(self) -> None:
        self.fired: dict[str, int] = {}
        self.lateness: list[float] = []
        self.lock = threading.Lock()

    def tick(self, key: str) -> Callable[[], None]:
        def fn() -> None:
            with self.lock:
                self.fired[key] = self.fired.get(key, 0) + 1

        return fn

    def on_fire(self, key: str, late: float) -> None:
        with self.lock:
            self.lateness.append(late)

    def total(self) -> int:
        with self.lock:
            return sum(self.fired.values())


def test_burst_is_queued_ahead_and_starts_when_due_not_before(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    rec = Recorder()
    timers = make(on_fire=rec.on_fire)
    for i in range(BURST):
        timers.add(f"s{i}", parse("every 10s"), rec.tick(f"s{i}"))
    timers.add("small", parse("every 20s"), rec.tick("small"))
    timers.start(run_thread=False)
    # The timer thread is told to wake `lead` before a burst, not before a small group.
    assert timers.run_pending(lead=0.001) == pytest.approx(10 - 0.001)
    clock.advance(9.9995)
    timers.run_pending(lead=0.001)  # queued ahead: a worker waits for the due time
    assert timers.info("s0").next_fire_at == pytest.approx(T0 + 20)
    assert not timers.wait_idle(0.2)  # 0.2 s of real time: nothing may start early
    assert rec.total() == 0
    clock.advance(0.0005)
    assert timers.wait_idle(WAIT)
    assert rec.total() == BURST and set(rec.fired.values()) == {1}
    assert max(rec.lateness) == pytest.approx(0.0, abs=1e-9)
    assert all(timers.info(f"s{i}").fires == 1 for i in range(BURST))
    clock.advance(9.9995)
    # The burst is queued ahead; what is left to wait for is the small group.
    assert timers.run_pending(lead=0.001) == pytest.approx(0.0005)
    clock.advance(0.0005)
    timers.run_pending(lead=0.001)
    assert timers.wait_idle(WAIT)
    assert rec.fired["small"] == 1 and rec.fired["s0"] == 2


def test_burst_with_a_member_still_running_waits_for_its_due_time(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    # Whether a member's firing is skipped is decided when due, so a burst with a
    # member running is not queued ahead.
    skipped: list[str] = []
    rec = Recorder()
    timers = make(on_skip=skipped.append)
    release, started = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        assert release.wait(WAIT)

    timers.add("slow", parse("every 10s"), slow)
    for i in range(BURST):
        timers.add(f"s{i}", parse("every 10s"), rec.tick(f"s{i}"))
    timers.start(run_thread=False)
    clock.advance(10)
    timers.run_pending(lead=0.001)
    assert started.wait(WAIT)
    clock.advance(0.02)  # the others waited 10+ ms behind "slow": a helper drains them
    timers.run_pending(lead=0.001)
    wait_for(lambda: rec.total() == BURST)
    # Second firing: "slow" still running, the burst is not queued ahead.
    clock.advance(9.9795)
    assert timers.run_pending(lead=0.001) == pytest.approx(0.0005)
    assert skipped == [] and timers.wait_idle(0.05) is False  # only "slow" runs
    clock.advance(0.0005)
    timers.run_pending(lead=0.001)
    assert skipped == ["slow"]
    release.set()
    assert timers.wait_idle(WAIT)
    assert rec.total() == 2 * BURST
    assert timers.info("slow").fires == 1


def test_tick_due_now_is_not_held_behind_a_burst_queued_ahead(clock: FakeClock) -> None:
    # A worker waiting for a burst queued ahead still starts what comes due first.
    clock = FakeClock(wall=T0 - 0.0003)  # the cron burst is due 0.3 ms after "first"
    timers = Timers(wall_clock=clock.wall, monotonic=clock.mono, max_workers=1)
    rec = Recorder()
    first = threading.Event()
    try:
        for i in range(BURST):
            timers.add(f"c{i}", parse("*/10 * * * * *"), rec.tick(f"c{i}"))
        timers.add("first", parse("every 10s"), first.set)
        timers.start(run_thread=False)
        step(timers, clock, 0.0003)  # the cron burst's first fire: 12:00:00
        assert rec.total() == BURST
        clock.advance(9.9994)
        timers.run_pending(lead=0.001)  # the burst (due at 12:00:10) is queued ahead
        assert not timers.wait_idle(0.2)  # real time for the worker to start waiting for it
        clock.advance(0.0003)
        timers.run_pending(lead=0.001)  # "first" is due now: queued before the burst
        assert first.wait(WAIT)
        assert rec.total() == BURST
        clock.advance(0.0003)
        assert timers.wait_idle(WAIT)
        assert rec.total() == 2 * BURST
    finally:
        assert timers.stop(timeout=WAIT) == []


def test_stop_while_a_worker_waits_for_a_burst(
    make: Callable[..., Timers], clock: FakeClock
) -> None:
    rec = Recorder()
    timers = make()
    for i in range(BURST):
        timers.add(f"s{i}", parse("every 10s"), rec.tick(f"s{i}"))
    timers.start(run_thread=False)
    clock.advance(9.9995)
    timers.run_pending(lead=0.001)
    assert timers.stop(timeout=WAIT) == []
    clock.advance(1)
    assert timers.wait_idle(WAIT)
    assert rec.total() == 0


def test_real_clocks_burst_smoke() -> None:
    rec = Recorder()
    timers = Timers(on_fire=rec.on_fire)
    for i in range(2 * BURST):
        timers.add(f"s{i}", parse("*/1 * * * * *"), rec.tick(f"s{i}"))
    timers.start()
    try:
        wait_for(lambda: len(rec.fired) == 2 * BURST)
        assert all(timers.info(f"s{i}").fires >= 1 for i in range(2 * BURST))
        assert all(late >= 0 for late in rec.lateness)
    finally:
        assert timers.stop(timeout=WAIT) == []
