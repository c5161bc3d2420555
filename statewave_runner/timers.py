"""The timer loop: one thread, one heap, an elastic worker pool, one tick per source at a time.

A :class:`Timers` holds every source's :class:`~statewave_runner.schedule.Schedule`
and callback. One timer thread keeps a ``heapq`` of (due, source) on the
monotonic clock and sleeps on a condition until the earliest due time, a change
(``add``/``remove``/``stop``/``wake``), or ``max_sleep`` (so a wall-clock step is
noticed within a second). Due ticks go to a worker pool, so a slow source never
holds up the timer thread or another source's tick.

Rules (see docs/schedules.md):

* No fire at start: the first tick of every source lands one period out.
* ``every <N><unit>`` runs on the monotonic clock from arming, at a fixed rate
  (due times are ``armed + k * interval``; missed periods are not replayed).
* Cron runs on the wall clock. After a wall-clock step larger than
  ``jump_threshold`` seconds (NTP step, suspend/resume) every cron source is
  re-armed from the current wall time: no burst of catch-up fires, no long stall.
* A source never runs two ticks at once. A firing that comes due while the
  source's previous tick is still queued or running is skipped (coalesced),
  counted in ``TimerInfo.skipped``, reported to ``on_skip`` and logged at debug.
* The pool starts empty and grows on demand up to ``max_workers`` threads;
  idle workers exit after ``idle_worker_timeout`` seconds. Bounded because a
  thundering herd (thousands of sources on ``0 * * * *``) must not become
  thousands of threads. While every worker is busy, due ticks wait in FIFO
  order (``TimerInfo.last_lateness`` shows it); size ``max_workers`` to the
  number of sources that may be slow at the same time.
* Exceptions from a tick (or from a hook) never kill the timer thread or a
  worker: they go to ``on_error`` (or the log).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .schedule import Schedule

__all__ = ["TimerInfo", "Timers"]

log = logging.getLogger(__name__)

# Fire a cron tick this much before its wall time at the earliest: the
# monotonic and wall clocks drift apart slightly (NTP slewing) between arming
# and firing, and a tick must not run early by more than that.
_EARLY_TOLERANCE = 0.0005

# Due ticks dispatched per lock hold; a burst larger than this is dispatched in
# slices so workers can start the first ticks while the rest are being queued.
_DISPATCH_CHUNK = 32

# In a burst longer than the pool, another worker is woken (or started) only
# once the oldest queued tick has waited this long. Waking one worker per queued
# tick made a burst of fast ticks (a thousand sources due on the same second) a
# lock convoy between eight threads: measured on 2 cores, 1,300 no-op ticks
# drained in 5 ms with one worker and in 22 ms with eight. Slow ticks still get
# help within this bound (at once when only a few ticks are queued).
_HELP_AFTER = 0.01


@dataclass(frozen=True, slots=True)
class TimerInfo:
    """A snapshot of one source's timer (unix times in seconds)."""

    next_fire_at: float | None
    """When the next tick is due; None when not armed (not started, stopped, removed)."""
    last_fire_at: float | None
    """When the last tick started running; None before the first."""
    running: bool
    """A tick of this source is running right now."""
    fires: int
    """Ticks started so far."""
    skipped: int
    """Firings skipped because the previous tick was still queued or running."""
    last_lateness: float | None
    """Seconds between the last tick's due time and its start; None before the first."""


class _Entry:
    __slots__ = (
        "due",
        "fires",
        "fn",
        "key",
        "last_fire_at",
        "last_lateness",
        "next_wall",
        "queued",
        "removed",
        "running",
        "schedule",
        "seq",
        "skipped",
    )

    def __init__(self, key: str, schedule: Schedule, fn: Callable[[], None]):
        self.key = key
        self.schedule = schedule
        self.fn = fn
        self.due: float | None = None  # monotonic
        self.next_wall: float | None = None  # cron only: the wall time of the next fire
        self.seq = -1  # heap entries with another seq are stale
        self.running = False
        self.queued = False
        self.removed = False
        self.fires = 0
        self.skipped = 0
        self.last_fire_at: float | None = None
        self.last_lateness: float | None = None


_Hook = Callable[[], None]


class Timers:
    """Runs each source's callback on its schedule. Thread-safe.

    ``wall_clock`` and ``monotonic`` are injectable so tests drive time by hand:
    advance a fake clock, then call :meth:`run_pending` (or :meth:`wake` when the
    timer thread runs). ``max_sleep`` bounds how long the thread sleeps without
    looking at the clocks.
    """

    def __init__(
        self,
        *,
        max_workers: int = 8,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        jump_threshold: float = 5.0,
        max_sleep: float = 1.0,
        idle_worker_timeout: float = 60.0,
        on_skip: Callable[[str], None] | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
        on_fire: Callable[[str, float], None] | None = None,
        name: str = "statewave-timers",
    ):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if jump_threshold <= 0 or max_sleep <= 0:
            raise ValueError("jump_threshold and max_sleep must be positive")
        self.max_workers = max_workers
        self.jump_threshold = jump_threshold
        self.max_sleep = max_sleep
        self.idle_worker_timeout = idle_worker_timeout
        self.on_skip = on_skip
        """Called with the source key when a firing is skipped (coalesced)."""
        self.on_error = on_error
        """Called with the key and the exception when a tick raises."""
        self.on_fire = on_fire
        """Called with the key and the lateness in seconds when a tick starts."""
        self._name = name
        self._wall = wall_clock
        self._mono = monotonic
        self._lock = threading.Lock()
        self._timer_cv = threading.Condition(self._lock)
        self._work_cv = threading.Condition(self._lock)
        self._idle_cv = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        # (entry, due, queued_at): queued_at on the monotonic clock, for _help().
        self._ready: deque[tuple[_Entry, float, float]] = deque()
        self._workers = 0
        self._idle_workers = 0
        self._busy = 0  # workers inside a tick's callback
        self._wakeups = 0  # workers notified or started that have not woken yet
        self._started = False
        self._stopping = False
        self._dirty = False
        self._offset: float | None = None  # wall - monotonic at the last look
        self._thread: threading.Thread | None = None
        # Running ticks by key, including those of removed sources: a key removed
        # and added again must still never overlap its old tick.
        self._inflight: dict[str, int] = {}

    # ------------------------------------------------------------------ public API

    def add(self, key: str, schedule: Schedule, fn: Callable[[], None]) -> None:
        """Register a source. Before or after :meth:`start`; never fires on adding."""
        with self._lock:
            if key in self._entries:
                raise ValueError(f"a timer named {key!r} already exists")
            entry = _Entry(key, schedule, fn)
            self._entries[key] = entry
            if self._started and not self._stopping:
                self._arm(entry, self._mono(), self._wall())
                self._poke()

    def remove(self, key: str) -> bool:
        """Forget a source; a tick already running finishes. False if unknown."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            entry.removed = True
            entry.due = None
            if entry.queued:
                entry.queued = False
                self._ready = deque(item for item in self._ready if item[0] is not entry)
            self._poke()
            return True

    def start(self, *, run_thread: bool = True) -> None:
        """Arm every source (first fire one period out) and start the timer thread.

        Idempotent. ``run_thread=False`` arms without a thread: the caller drives
        the loop with :meth:`run_pending` (deterministic tests).
        """
        with self._lock:
            if self._stopping:
                raise RuntimeError("Timers cannot be restarted after stop()")
            if self._started:
                return
            self._started = True
            mono, wall = self._mono(), self._wall()
            self._offset = wall - mono
            for entry in self._entries.values():
                self._arm(entry, mono, wall)
            if run_thread:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float) -> list[str]:
        """Stop arming, drop queued ticks, wait up to ``timeout`` s for running ones.

        Returns the keys of ticks still running at the deadline (sorted). Idempotent.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            self._stopping = True
            for entry, _due, _queued_at in self._ready:
                entry.queued = False
            self._ready.clear()
            self._heap.clear()
            for entry in self._entries.values():
                entry.due = None
            self._timer_cv.notify_all()
            self._work_cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            while True:
                busy = sorted(self._inflight)
                remaining = deadline - time.monotonic()
                if not busy or remaining <= 0:
                    return busy
                self._idle_cv.wait(remaining)

    def wake(self) -> None:
        """Make the timer thread look at the clocks now (e.g. after a known clock change)."""
        with self._lock:
            self._poke()

    def info(self, key: str) -> TimerInfo:
        """The state of one source's timer. Raises KeyError for an unknown key."""
        with self._lock:
            e = self._entries[key]
            next_at: float | None = None
            if e.due is not None:
                next_at = (
                    e.next_wall
                    if e.next_wall is not None
                    else self._wall() + (e.due - self._mono())
                )
            return TimerInfo(
                next_fire_at=next_at,
                last_fire_at=e.last_fire_at,
                running=e.running,
                fires=e.fires,
                skipped=e.skipped,
                last_lateness=e.last_lateness,
            )

    def keys(self) -> list[str]:
        """Registered source keys, in insertion order."""
        with self._lock:
            return list(self._entries)

    def armed(self) -> int:
        """How many sources have a pending next fire."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.due is not None)

    def running(self) -> list[str]:
        """Keys whose tick is running right now (sorted)."""
        with self._lock:
            return sorted(self._inflight)

    def wait_idle(self, timeout: float) -> bool:
        """Wait (real time) until no tick is queued or running; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._ready or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle_cv.wait(remaining)
            return True

    def run_pending(self) -> float | None:
        """Dispatch every tick that is due now; return seconds until the next due time.

        The timer thread calls this in a loop; tests that use ``start(run_thread=False)``
        call it after advancing their fake clocks.
        """
        hooks: list[_Hook] = []
        first = True
        while True:
            with self._lock:
                if not self._started or self._stopping:
                    return None
                mono, wall = self._mono(), self._wall()
                if first:
                    self._check_jump(mono, wall)
                    first = False
                heap = self._heap
                budget = _DISPATCH_CHUNK
                # Sources sharing a cron expression (parse() returns one object per
                # expression) and a fire time share the next fire time too: a burst
                # of 600 "*/5 * * * * *" sources computes it once, not 600 times.
                memo: dict[tuple[Schedule, float], float] = {}
                while heap and heap[0][0] <= mono and budget:
                    due, seq, entry = heapq.heappop(heap)
                    if entry.removed or seq != entry.seq:
                        continue
                    budget -= 1
                    if entry.next_wall is not None and wall < entry.next_wall - _EARLY_TOLERANCE:
                        # The monotonic due time came before the wall time it stands
                        # for (clock slew, small step back): wait the difference.
                        self._push(entry, mono + (entry.next_wall - wall))
                        continue
                    self._fire(entry, due, mono, wall, hooks, memo)
                more = bool(budget == 0 and heap and heap[0][0] <= mono)
                nxt = heap[0][0] - mono if heap else None
                if self._ready:
                    self._help(mono)
                    # Look again soon: a tick stuck behind a slow one needs help.
                    nxt = _HELP_AFTER if nxt is None else min(nxt, _HELP_AFTER)
            for hook in hooks:
                self._call_hook(hook)
            hooks.clear()
            if not more:
                return nxt
            # A burst (many sources due at once): let workers take the lock and
            # start the ticks dispatched so far before dispatching the rest.

    # ------------------------------------------------------------------ internals

    def _poke(self) -> None:
        self._dirty = True
        self._timer_cv.notify_all()

    def _push(self, entry: _Entry, due: float) -> None:
        entry.seq = next(self._seq)
        entry.due = due
        heapq.heappush(self._heap, (due, entry.seq, entry))

    def _arm(self, entry: _Entry, mono: float, wall: float) -> None:
        interval = entry.schedule.interval_seconds
        if interval is not None:
            entry.next_wall = None
            self._push(entry, mono + interval)
        else:
            entry.next_wall = self._next_wall(entry.schedule, wall)
            self._push(entry, mono + (entry.next_wall - wall))

    @staticmethod
    def _next_wall(schedule: Schedule, after: float) -> float:
        return schedule.next_after(datetime.fromtimestamp(after, UTC)).timestamp()

    def _check_jump(self, mono: float, wall: float) -> None:
        offset = wall - mono
        previous, self._offset = self._offset, offset
        if previous is None or abs(offset - previous) <= self.jump_threshold:
            return
        rearmed = 0
        for entry in self._entries.values():
            if entry.schedule.interval_seconds is None and entry.due is not None:
                entry.next_wall = self._next_wall(entry.schedule, wall)
                self._push(entry, mono + (entry.next_wall - wall))
                rearmed += 1
        log.info(
            "wall clock jumped by %+.1f s; re-armed %d cron schedule(s) from the current time",
            offset - previous,
            rearmed,
        )

    def _fire(
        self,
        entry: _Entry,
        due: float,
        mono: float,
        wall: float,
        hooks: list[_Hook],
        memo: dict[tuple[Schedule, float], float],
    ) -> None:
        interval = entry.schedule.interval_seconds
        if interval is not None:
            # Fixed rate from arming; after a stall, skip to the next future slot.
            periods = int((mono - due) // interval) + 1
            self._push(entry, due + periods * interval)
        else:
            base = wall if entry.next_wall is None else max(entry.next_wall, wall)
            memo_key = (entry.schedule, base)
            nxt = memo.get(memo_key)
            if nxt is None:
                nxt = memo[memo_key] = self._next_wall(entry.schedule, base)
            entry.next_wall = nxt
            self._push(entry, mono + (entry.next_wall - wall))
        if entry.running or entry.queued or entry.key in self._inflight:
            entry.skipped += 1
            log.debug("timer %s: previous tick still running, firing skipped", entry.key)
            on_skip = self.on_skip
            if on_skip is not None:
                key = entry.key
                hooks.append(lambda: on_skip(key))
            return
        entry.queued = True
        self._ready.append((entry, due, mono))
        self._help(mono)

    def _help(self, mono: float) -> None:
        """Wake or start a worker when queued ticks would otherwise wait (lock held).

        A worker that is awake but not inside a tick will take the next one, so
        nobody is woken then. Otherwise a worker is woken at once while the
        queue is short (a slow tick must not hold up a few others), but for a
        burst longer than the pool only once the oldest queued tick has waited
        _HELP_AFTER: a burst of fast ticks drains fastest on one thread.
        """
        if not self._ready or self._wakeups:
            return
        awake = self._workers - self._idle_workers
        if awake > self._busy:
            return
        if awake and len(self._ready) > self.max_workers and mono - self._ready[0][2] < _HELP_AFTER:
            return
        if self._idle_workers:
            self._wakeups += 1
            self._work_cv.notify()
        elif self._workers < self.max_workers:
            self._workers += 1
            self._wakeups += 1
            threading.Thread(target=self._work, name=f"{self._name}-worker", daemon=True).start()

    def _work(self) -> None:
        entry: _Entry | None = None
        lateness = 0.0
        with self._lock:
            self._wakeups -= 1  # a started worker has woken
        while True:
            # One lock hold finishes the previous tick and takes the next: in a
            # burst that halves the lock traffic per tick.
            with self._lock:
                if entry is not None:
                    self._busy -= 1
                    entry.running = False
                    left = self._inflight.pop(entry.key) - 1
                    if left:
                        self._inflight[entry.key] = left
                    if self._stopping or not self._ready:
                        self._idle_cv.notify_all()
                    entry = None
                while not self._ready and not self._stopping:
                    self._idle_workers += 1
                    woke = self._work_cv.wait(self.idle_worker_timeout)
                    self._idle_workers -= 1
                    if woke and self._wakeups:
                        self._wakeups -= 1
                    if not woke and not self._ready:
                        self._workers -= 1
                        return
                if not self._ready:  # stopping
                    self._workers -= 1
                    return
                entry, due, _queued_at = self._ready.popleft()
                entry.queued = False
                entry.running = True
                entry.fires += 1
                entry.last_fire_at = self._wall()
                mono = self._mono()
                lateness = max(mono - due, 0.0)
                entry.last_lateness = lateness
                self._inflight[entry.key] = self._inflight.get(entry.key, 0) + 1
                self._busy += 1
                self._help(mono)
            on_fire = self.on_fire
            if on_fire is not None:
                try:
                    on_fire(entry.key, lateness)
                except BaseException:
                    log.exception("timer %s: on_fire hook failed", entry.key)
            try:
                entry.fn()
            except BaseException as exc:  # a tick must never kill the worker
                self._report(entry.key, exc)

    def _report(self, key: str, exc: BaseException) -> None:
        on_error = self.on_error
        if on_error is None:
            log.error("timer %s: tick failed", key, exc_info=exc)
            return
        try:
            on_error(key, exc)
        except BaseException:
            log.exception("timer %s: on_error hook failed", key)

    @staticmethod
    def _call_hook(hook: _Hook) -> None:
        try:
            hook()
        except BaseException:
            log.exception("timer hook failed")

    def _loop(self) -> None:
        while True:
            try:
                timeout = self.run_pending()
            except BaseException:  # keep the thread alive whatever a schedule does
                log.exception("timer loop iteration failed")
                timeout = self.max_sleep
            with self._lock:
                if self._stopping:
                    return
                if self._dirty:
                    self._dirty = False
                    continue
                wait = self.max_sleep if timeout is None else min(max(timeout, 0.0), self.max_sleep)
                if wait > 0:
                    self._timer_cv.wait(wait)
                self._dirty = False
