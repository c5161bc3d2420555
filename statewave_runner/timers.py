"""The timer loop: one thread, one heap, an elastic worker pool, one tick per source at a time.

A :class:`Timers` holds every source's :class:`~statewave_runner.schedule.Schedule`
and callback. One timer thread keeps a ``heapq`` of (due, sources) on the
monotonic clock and sleeps on a condition until the earliest due time, a change
(``add``/``remove``/``stop``/``wake``), or ``max_sleep`` (so a wall-clock step is
noticed within a second). Due ticks go to a worker pool, so a slow source never
holds up the timer thread or another source's tick.

A heap item is a *group*: the sources that are due at the same instant and stay
so, because they re-arm by the same rule (interval sources armed together with
the same period; cron sources with the same parsed schedule and the same next
fire time). Ten thousand sources in a few dozen groups make a burst of a
thousand due ticks one heap pop, one next-fire computation, one heap push and
one C-level ``deque.extend`` for the timer thread, which therefore gives the
GIL back to the workers within microseconds of the due time instead of
spending milliseconds per burst on per-source bookkeeping. A large group is
even queued 1 ms ahead, and a worker spins to its due instant (see _LEAD).

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

import functools
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

# In a burst longer than the pool, another worker is woken (or started) only
# once the oldest queued tick has waited this long. Waking one worker per queued
# tick made a burst of fast ticks (a thousand sources due on the same second) a
# lock convoy between eight threads: measured on 2 cores, 1,300 no-op ticks
# drained in 5 ms with one worker and in 22 ms with eight. Slow ticks still get
# help within this bound (at once when only a few ticks are queued).
_HELP_AFTER = 0.01

# A group of at least _BURST sources is queued _LEAD seconds before it is due
# (when nothing of it is queued or running): a worker takes the batch and spins
# to the due instant, so the burst's first tick starts within microseconds of
# it instead of after the timer thread's late wake-up (a timed wait returns
# ~0.2 ms late on a VM), its dispatch and a worker's wake-up (~0.35 ms in all,
# added to every tick of the burst). The spin costs at most _LEAD of one CPU per
# burst; smaller groups are queued when due.
_LEAD = 0.001
_BURST = 64

_NEVER = float("-inf")


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
        "claimed",
        "fires",
        "fn",
        "group",
        "included",
        "key",
        "last_start",
        "removed",
        "running",
        "schedule",
        "shadow",
        "skipped",
    )

    def __init__(self, key: str, schedule: Schedule, fn: Callable[[], None]):
        self.key = key
        self.schedule = schedule
        self.fn = fn
        self.group: _Group | None = None  # set when armed; never changes afterwards
        self.running = False
        self.removed = False
        # Due time of the last firing a worker took, and of the last firing that
        # queued this source alone (not with its whole group, see _Group.last_full).
        # Taken before the later of included and group.last_full: a firing is queued.
        self.claimed = _NEVER
        self.included = _NEVER
        # A removed source with the same key whose tick was running when this one
        # was added: this one must not start while that one runs.
        self.shadow: _Entry | None = None
        self.fires = 0
        self.skipped = 0
        self.last_start: float | None = None  # monotonic; the lateness is last_start - claimed


class _Group:
    """Sources due at the same instant that re-arm by the same rule (a heap item)."""

    __slots__ = (
        "busy",
        "check",
        "due",
        "entries",
        "interval",
        "last_full",
        "next_wall",
        "removed",
        "schedule",
        "seq",
    )

    def __init__(self, schedule: Schedule, entries: list[_Entry]):
        self.schedule = schedule
        self.interval = schedule.interval_seconds
        self.entries = entries
        self.due: float | None = None  # monotonic; None when disarmed
        self.next_wall: float | None = None  # cron only: the wall time of the next fire
        self.seq = -1  # heap items with another seq are stale
        # Firings of members queued or running. While 0, a due firing runs every
        # member without looking at each (the common case, and the burst case).
        self.busy = 0
        self.check = False  # a member has a shadow: look at each member when due
        self.last_full = _NEVER  # due time of the last firing that queued every member
        self.removed = 0  # removed members still in entries


class _Batch:
    """One due firing of a group's members, taken by workers in order (a ready item).

    The timer thread queues the member list as it is (no per-member work, no
    allocation per tick: the members' memory is cold after a second of sleep,
    and touching a thousand of them cost the first tick of a burst ~150 us).
    """

    __slots__ = ("due", "entries", "pos")

    def __init__(self, entries: list[_Entry], due: float):
        self.entries = entries  # never mutated: groups replace their list instead
        self.pos = 0  # next member to take
        self.due = due


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
        self._heap: list[tuple[float, int, _Group]] = []
        self._seq = itertools.count()
        # Batches in due order; removed entries are dropped when taken.
        self._ready: deque[_Batch] = deque()
        self._queued = 0  # entries in _ready not taken yet
        self._changes = 0  # bumped whenever _ready changes under a spinning worker
        self._spinning = False  # a worker waits for a burst queued ahead
        self._workers = 0
        self._idle_workers = 0
        self._busy = 0  # workers inside a tick's callback
        self._wakeups = 0  # workers notified or started that have not woken yet
        self._started = False
        self._stopping = False
        self._dirty = False
        self._offset: float | None = None  # wall - monotonic at the last look
        self._thread: threading.Thread | None = None
        # Removed sources whose tick is still running: a key removed and added
        # again must still never overlap its old tick, and stop() reports them.
        self._orphans: set[_Entry] = set()

    # ------------------------------------------------------------------ public API

    def add(self, key: str, schedule: Schedule, fn: Callable[[], None]) -> None:
        """Register a source. Before or after :meth:`start`; never fires on adding."""
        with self._lock:
            if key in self._entries:
                raise ValueError(f"a timer named {key!r} already exists")
            entry = _Entry(key, schedule, fn)
            for orphan in self._orphans:
                if orphan.key == key:
                    entry.shadow = orphan
            self._entries[key] = entry
            if self._started and not self._stopping:
                self._arm([entry], self._mono(), self._wall())
                self._poke()

    def remove(self, key: str) -> bool:
        """Forget a source; a tick already running finishes. False if unknown."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            # A queued firing of it is dropped when a worker takes it.
            entry.removed = True
            if entry.running:
                self._orphans.add(entry)
            group = entry.group
            if group is not None:
                group.removed += 1
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
            self._arm(list(self._entries.values()), mono, wall)
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
            self._ready.clear()
            self._queued = 0
            self._changes += 1
            self._heap.clear()
            for entry in self._entries.values():
                if entry.group is not None:
                    entry.group.due = None
            self._timer_cv.notify_all()
            self._work_cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            while True:
                remaining = deadline - time.monotonic()
                if not self._busy or remaining <= 0:
                    return self._running_keys()
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
            group = e.group
            if group is not None and group.due is not None:
                next_at = (
                    group.next_wall
                    if group.next_wall is not None
                    else self._wall() + (group.due - self._mono())
                )
            last_at: float | None = None
            lateness: float | None = None
            if e.last_start is not None:
                # Kept on the monotonic clock (cheaper per tick); read as "that long ago".
                last_at = self._wall() - (self._mono() - e.last_start)
                lateness = max(e.last_start - e.claimed, 0.0)
            return TimerInfo(
                next_fire_at=next_at,
                last_fire_at=last_at,
                running=e.running,
                fires=e.fires,
                skipped=e.skipped,
                last_lateness=lateness,
            )

    def keys(self) -> list[str]:
        """Registered source keys, in insertion order."""
        with self._lock:
            return list(self._entries)

    def armed(self) -> int:
        """How many sources have a pending next fire."""
        with self._lock:
            return sum(
                1 for e in self._entries.values() if e.group is not None and e.group.due is not None
            )

    def running(self) -> list[str]:
        """Keys whose tick is running right now (sorted)."""
        with self._lock:
            return self._running_keys()

    def wait_idle(self, timeout: float) -> bool:
        """Wait (real time) until no tick is queued or running; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._ready or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle_cv.wait(remaining)
            return True

    def run_pending(self, *, lead: float = 0.0) -> float | None:
        """Dispatch every tick that is due now; return seconds until the next due time.

        The timer thread calls this in a loop; tests that use ``start(run_thread=False)``
        call it after advancing their fake clocks. With ``lead`` (the timer thread
        uses 1 ms), a burst due within ``lead`` seconds is queued ahead for a worker
        to start at its due time, and the time returned for a burst is ``lead``
        before it.
        """
        hooks: list[_Hook] = []
        with self._lock:
            if not self._started or self._stopping:
                return None
            mono, wall = self._mono(), self._wall()
            self._check_jump(mono, wall)
            heap = self._heap
            # Groups sharing a cron expression (parse() returns one object per
            # expression) and a fire time share the next fire time too.
            memo: dict[tuple[Schedule, float], float] = {}
            later: list[tuple[float, int, _Group]] = []
            horizon = mono + max(lead, 0.0)
            while heap and heap[0][0] <= horizon:
                item = heapq.heappop(heap)
                due, seq, group = item
                if seq != group.seq:
                    continue
                if due > mono:
                    if not self._ahead(group, due, mono, wall):
                        later.append(item)  # not due yet, and not a burst to queue ahead
                        continue
                elif group.next_wall is not None and wall < group.next_wall - _EARLY_TOLERANCE:
                    # The monotonic due time came before the wall time it stands
                    # for (clock slew, small step back): wait the difference.
                    self._push(group, mono + (group.next_wall - wall))
                    continue
                self._fire(group, due, mono, wall, hooks, memo)
            for item in later:
                heapq.heappush(heap, item)
            nxt: float | None = None
            if heap:
                due, _seq, group = heap[0]
                nxt = due - mono
                if lead > 0 and self._ahead(group, due, due, wall + nxt):
                    nxt -= lead
            if self._ready:
                self._help(mono)
                # Look again soon: a tick stuck behind a slow one needs help.
                nxt = _HELP_AFTER if nxt is None else min(nxt, _HELP_AFTER)
        for hook in hooks:
            self._call_hook(hook)
        return nxt

    @staticmethod
    def _ahead(group: _Group, due: float, mono: float, wall: float) -> bool:
        """May ``group`` be queued ahead of its due time (lock held)?

        Only a burst none of whose members is queued or running: whether a
        firing is skipped is then already known (none is), and stays so until due.
        """
        if group.busy or group.check or len(group.entries) - group.removed < _BURST:
            return False
        # A cron group whose wall time would not have come at its monotonic due time
        # waits for it in run_pending instead.
        return group.next_wall is None or wall + (due - mono) >= group.next_wall - _EARLY_TOLERANCE

    def _enqueue(self, batch: _Batch) -> None:
        """Queue in due order (a burst queued ahead may be waiting at the tail; lock held)."""
        ready = self._ready
        self._changes += 1
        if not ready or ready[-1].due <= batch.due:
            ready.append(batch)
            return
        i = len(ready) - 1
        while i > 0 and ready[i - 1].due > batch.due:
            i -= 1
        ready.insert(i, batch)

    def _running_keys(self) -> list[str]:
        keys = [e.key for e in self._entries.values() if e.running]
        keys.extend(e.key for e in self._orphans)
        return sorted(keys)

    def _poke(self) -> None:
        self._dirty = True
        self._timer_cv.notify_all()

    def _push(self, group: _Group, due: float) -> None:
        group.seq = next(self._seq)
        group.due = due
        heapq.heappush(self._heap, (due, group.seq, group))

    def _arm(self, entries: list[_Entry], mono: float, wall: float) -> None:
        """First fire of ``entries``, one period out; those due together share a group."""
        groups: dict[tuple[object, ...], _Group] = {}
        for entry in entries:
            schedule = entry.schedule
            interval = schedule.interval_seconds
            if interval is not None:
                key: tuple[object, ...] = (interval,)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group(schedule, [])
                    self._push(group, mono + interval)
            else:
                next_wall = self._next_wall(schedule, wall)
                key = (schedule, next_wall)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group(schedule, [])
                    group.next_wall = next_wall
                    self._push(group, mono + (next_wall - wall))
            group.entries.append(entry)
            entry.group = group
            if entry.shadow is not None:
                group.check = True

    @staticmethod
    def _next_wall(schedule: Schedule, after: float) -> float:
        return schedule.next_after(datetime.fromtimestamp(after, UTC)).timestamp()

    def _check_jump(self, mono: float, wall: float) -> None:
        offset = wall - mono
        previous, self._offset = self._offset, offset
        if previous is None or abs(offset - previous) <= self.jump_threshold:
            return
        groups = {id(e.group): e.group for e in self._entries.values() if e.group is not None}
        rearmed = 0
        for group in groups.values():
            if group.interval is None and group.due is not None:
                group.next_wall = self._next_wall(group.schedule, wall)
                self._push(group, mono + (group.next_wall - wall))
                rearmed += len(group.entries) - group.removed
        log.info(
            "wall clock jumped by %+.1f s; re-armed %d cron schedule(s) from the current time",
            offset - previous,
            rearmed,
        )

    def _fire(
        self,
        group: _Group,
        due: float,
        mono: float,
        wall: float,
        hooks: list[_Hook],
        memo: dict[tuple[Schedule, float], float],
    ) -> None:
        """Re-arm a due group and queue its members' ticks (lock held)."""
        if group.removed:
            if group.removed == len(group.entries):
                group.due = None  # nobody left: drop the group
                return
            if 2 * group.removed > len(group.entries):
                group.entries = [e for e in group.entries if not e.removed]
                group.removed = 0
        interval = group.interval
        if interval is not None:
            # Fixed rate from arming; after a stall, skip to the next future slot.
            periods = int((mono - due) // interval) + 1 if mono > due else 1
            self._push(group, due + periods * interval)
        else:
            base = wall if group.next_wall is None else max(group.next_wall, wall)
            memo_key = (group.schedule, base)
            nxt = memo.get(memo_key)
            if nxt is None:
                nxt = memo[memo_key] = self._next_wall(group.schedule, base)
            group.next_wall = nxt
            self._push(group, mono + (nxt - wall))
        if not group.busy and not group.check:
            # Nothing of this group queued or running: every member fires.
            batch = group.entries
            group.last_full = due
        else:
            batch = self._coalesce(group, due, hooks)
            if not batch:
                return
        group.busy += len(batch)
        self._queued += len(batch)
        self._enqueue(_Batch(batch, due))
        self._help(mono)

    def _coalesce(self, group: _Group, due: float, hooks: list[_Hook]) -> list[_Entry]:
        """The members of a due group that may fire; count the others as skipped (lock held)."""
        batch: list[_Entry] = []
        on_skip = self.on_skip
        shadows = False
        last_full = group.last_full
        for entry in group.entries:
            if entry.removed:
                continue
            shadow = entry.shadow
            if shadow is not None and not shadow.running:
                shadow = entry.shadow = None
            queued = entry.claimed < last_full or entry.claimed < entry.included
            if entry.running or queued or shadow is not None:
                shadows = shadows or shadow is not None
                entry.skipped += 1
                log.debug("timer %s: previous tick still running, firing skipped", entry.key)
                if on_skip is not None:
                    hooks.append(functools.partial(on_skip, entry.key))
                continue
            entry.included = due
            batch.append(entry)
        group.check = shadows
        return batch

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
        if awake and self._queued > self.max_workers and mono - self._ready[0].due < _HELP_AFTER:
            return
        if self._idle_workers:
            self._wakeups += 1
            self._work_cv.notify()
        elif self._workers < self.max_workers:
            self._workers += 1
            self._wakeups += 1
            threading.Thread(target=self._work, name=f"{self._name}-worker", daemon=True).start()

    def _work(self) -> None:
        # The per-tick path: in a burst of no-op ticks this loop is the cost per
        # tick (~0.8 us), so it keeps to locals, one clock read and one lock hold
        # per tick, and acquire()/release() (half the cost of a with statement).
        lock = self._lock
        ready = self._ready
        mono = self._mono
        max_queue = self.max_workers
        entry: _Entry | None = None
        late = 0.0
        spin_until = 0.0
        changes = 0
        warm: list[list[_Entry]] = []
        with lock:
            self._wakeups -= 1  # a started worker has woken
        while True:
            # One lock hold finishes the previous tick and takes the next: in a
            # burst that halves the lock traffic per tick.
            lock.acquire()
            try:
                if entry is not None:
                    entry.running = False
                    entry.group.busy -= 1  # type: ignore[union-attr]
                    self._busy -= 1
                    if entry.removed:
                        self._orphans.discard(entry)
                    if not ready or self._stopping:
                        self._idle_cv.notify_all()
                while True:
                    if not ready:
                        if self._stopping or not self._idle():
                            self._workers -= 1
                            return
                        continue
                    batch = ready[0]
                    pos = batch.pos
                    now = mono()
                    if not pos and batch.due > now:
                        # A burst queued ahead (_LEAD): one worker spins to its due
                        # time outside the lock; any other waits.
                        if self._spinning or batch.due - now > 2 * _LEAD:
                            self._idle(batch.due - now)
                            continue
                        self._spinning = True
                        spin_until = batch.due
                        changes = self._changes
                        warm = [b.entries for b in ready if b.due <= spin_until]
                        entry = None
                        break
                    entries = batch.entries
                    entry = entries[pos]
                    pos += 1
                    if pos == len(entries):
                        ready.popleft()
                    else:
                        batch.pos = pos
                    self._queued -= 1
                    if not entry.removed:
                        due = batch.due
                        entry.running = True
                        entry.claimed = due
                        entry.fires += 1
                        entry.last_start = now
                        self._busy += 1
                        if ready and (
                            self._queued <= max_queue or now - ready[0].due >= _HELP_AFTER
                        ):
                            self._help(now)
                        late = now - due if now > due else 0.0
                        break
                    entry.group.busy -= 1  # type: ignore[union-attr]
                    if not ready:
                        self._idle_cv.notify_all()
            finally:
                lock.release()
            if entry is None:
                # Until the burst is due, or the queue changed (a tick due now
                # queued before it, stop()): then look again. The wait is spent
                # bringing the burst's entries into the CPU cache first.
                self._warm(warm, spin_until, changes)
                warm = []
                while mono() < spin_until and self._changes == changes:
                    pass
                with lock:
                    self._spinning = False
                continue
            on_fire = self.on_fire
            if on_fire is not None:
                try:
                    on_fire(entry.key, late)
                except BaseException:
                    log.exception("timer %s: on_fire hook failed", entry.key)
            try:
                entry.fn()
            except BaseException as exc:  # a tick must never kill the worker
                self._report(entry.key, exc)

    def _warm(self, batches: list[list[_Entry]], until: float, changes: int) -> None:
        """Read what taking and starting each entry will touch, until ``until``.

        A second after the last burst the entries are out of the CPU cache; the
        worker waiting for the next burst reads them beforehand (no lock: reads
        only), and the burst then drains ~0.1 us per tick faster.
        """
        mono = self._mono
        for entries in batches:
            for i in range(0, len(entries), 64):
                if mono() >= until or self._changes != changes:
                    return
                for e in entries[i : i + 64]:
                    _ = (e.removed, e.running, e.fires, e.last_start, e.claimed, e.key, e.fn)

    def _idle(self, timeout: float | None = None) -> bool:
        """Wait for work (lock held); False when idle_worker_timeout passed without any."""
        self._idle_workers += 1
        woke = self._work_cv.wait(self.idle_worker_timeout if timeout is None else timeout)
        self._idle_workers -= 1
        if woke and self._wakeups:
            self._wakeups -= 1
        return woke or timeout is not None or bool(self._ready)

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
                timeout = self.run_pending(lead=_LEAD)
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
