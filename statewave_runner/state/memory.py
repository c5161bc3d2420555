"""In-process state: the full contract, nothing survives a restart.

The default, as in the Node runner. Useful for trying things out and for
tests; the banner says plainly that a restart forgets cursors and the queue.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import StateError
from .base import (
    ClaimedItem,
    Health,
    OutboxItem,
    OutboxSettings,
    OutboxStats,
)


@dataclass(slots=True)
class _Row:
    id: str
    key: str
    body: str
    origin: str
    enqueued_at: float
    attempts: int = 0
    retry_at: float = 0.0
    lease_until: float = 0.0
    dead: bool = False
    last_error: str | None = None

    def view(self) -> ClaimedItem:
        return ClaimedItem(
            id=self.id,
            key=self.key,
            body=self.body,
            origin=self.origin,
            attempts=self.attempts,
            enqueued_at=self.enqueued_at,
            last_error=self.last_error,
        )


class MemoryState:
    """Every part of the state contract in memory, guarded by one lock."""

    kind = "memory"

    def __init__(
        self,
        settings: OutboxSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings or OutboxSettings()
        self._clock = clock
        self._lock = threading.Lock()
        self._cursors: dict[tuple[str, str], str] = {}
        self._seen: dict[str, float] = {}  # dedup key -> expiry
        self._seen_expiry: list[tuple[float, str]] = []  # min-heap for incremental purge
        self._queued_keys: dict[str, float] = {}  # outbox dedup key -> expiry
        self._queued_expiry: list[tuple[float, str]] = []
        self._rows: dict[str, _Row] = {}
        self._ids = itertools.count(1)
        self._leases: dict[str, tuple[str, float]] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("memory state is closed")

    # ------------------------------------------------------------------ cursors
    def get_cursor(self, kind: str, name: str) -> str | None:
        self._check_open()
        with self._lock:
            return self._cursors.get((kind, name))

    def set_cursor(self, kind: str, name: str, cursor: str) -> None:
        self._check_open()
        with self._lock:
            self._write_cursors(self._cursors, [(kind, name, cursor)])

    def delete_cursor(self, kind: str, name: str) -> bool:
        self._check_open()
        with self._lock:
            return self._cursors.pop((kind, name), None) is not None

    def list_cursors(self) -> dict[tuple[str, str], str]:
        self._check_open()
        with self._lock:
            return dict(self._cursors)

    def _write_cursors(
        self, target: dict[tuple[str, str], str], rows: Sequence[tuple[str, str, str]]
    ) -> None:
        # The cursor half of put_and_set_cursor; tests replace it to inject a
        # failure between the two halves.
        for kind, name, cursor in rows:
            target[(kind, name)] = cursor

    # ------------------------------------------------------------------ dedup
    @staticmethod
    def _purge(table: dict[str, float], heap: list[tuple[float, str]], now: float) -> None:
        # Pops only what has expired: amortized O(log n) per key, no sweep.
        while heap and heap[0][0] <= now:
            expiry, key = heapq.heappop(heap)
            if table.get(key) == expiry:
                del table[key]

    def mark_if_new(self, key: str, ttl_seconds: float) -> bool:
        self._check_open()
        now = self._clock()
        with self._lock:
            self._purge(self._seen, self._seen_expiry, now)
            expiry = self._seen.get(key)
            if expiry is not None and expiry > now:
                return False
            expiry = now + ttl_seconds
            self._seen[key] = expiry
            heapq.heappush(self._seen_expiry, (expiry, key))
            return True

    def contains(self, key: str) -> bool:
        self._check_open()
        now = self._clock()
        with self._lock:
            expiry = self._seen.get(key)
            return expiry is not None and expiry > now

    # ------------------------------------------------------------------ outbox
    def _new_rows(self, items: Sequence[OutboxItem], now: float) -> list[_Row]:
        # Decides what a put adds without changing anything yet, so that
        # put_and_set_cursor can apply both halves or neither.
        self._purge(self._queued_keys, self._queued_expiry, now)
        fresh: dict[str, _Row] = {}
        for item in items:
            if item.key in fresh:
                continue
            expiry = self._queued_keys.get(item.key)
            if expiry is not None and expiry > now:
                continue
            fresh[item.key] = _Row("", item.key, item.body, item.origin, now)
        return list(fresh.values())

    def _apply_rows(self, rows: list[_Row], now: float) -> int:
        expiry = now + self.settings.dedup_ttl
        for row in rows:
            self._queued_keys[row.key] = expiry
            heapq.heappush(self._queued_expiry, (expiry, row.key))
            row.id = str(next(self._ids))
            self._rows[row.id] = row
        return len(rows)

    def put(self, items: Sequence[OutboxItem]) -> int:
        self._check_open()
        now = self._clock()
        with self._lock:
            return self._apply_rows(self._new_rows(items, now), now)

    def put_and_set_cursor(
        self, items: Sequence[OutboxItem], kind: str, name: str, cursor: str | None
    ) -> int:
        self._check_open()
        now = self._clock()
        with self._lock:
            rows = self._new_rows(items, now)
            if cursor is not None:
                staged = dict(self._cursors)
                self._write_cursors(staged, [(kind, name, cursor)])
                self._cursors = staged
            return self._apply_rows(rows, now)

    def put_and_mark(
        self, items: Sequence[OutboxItem], key: str, ttl_seconds: float
    ) -> tuple[int, bool]:
        self._check_open()
        now = self._clock()
        with self._lock:
            self._purge(self._seen, self._seen_expiry, now)
            expiry = self._seen.get(key)
            if expiry is not None and expiry > now:
                return 0, False
            rows = self._new_rows(items, now)
            self._write_mark(self._seen, key, now + ttl_seconds)
            heapq.heappush(self._seen_expiry, (now + ttl_seconds, key))
            return self._apply_rows(rows, now), True

    def _write_mark(self, target: dict[str, float], key: str, expiry: float) -> None:
        # The mark half of put_and_mark, after its items are decided but before
        # they are applied; tests replace it to inject a failure between the halves.
        target[key] = expiry

    def claim(self, limit: int, lease_seconds: float) -> list[ClaimedItem]:
        self._check_open()
        now = self._clock()
        out: list[ClaimedItem] = []
        with self._lock:
            # Rows are in insertion order (dict order), which is enqueue order.
            for row in self._rows.values():
                if len(out) >= limit:
                    break
                if row.dead or row.retry_at > now or row.lease_until > now:
                    continue
                row.attempts += 1
                row.lease_until = now + lease_seconds
                out.append(row.view())
        return out

    def ack(self, items: Sequence[ClaimedItem]) -> None:
        self._check_open()
        with self._lock:
            for item in items:
                self._rows.pop(item.id, None)

    def nack(self, items: Sequence[ClaimedItem], retry_at: float, error: str) -> None:
        self._check_open()
        with self._lock:
            for item in items:
                row = self._rows.get(item.id)
                if row is None or row.dead or row.attempts != item.attempts:
                    continue
                row.lease_until = 0.0
                row.retry_at = retry_at
                row.last_error = error
                if row.attempts >= self.settings.max_attempts:
                    row.dead = True

    def dead_letter(self, items: Sequence[ClaimedItem], error: str) -> None:
        self._check_open()
        with self._lock:
            for item in items:
                row = self._rows.get(item.id)
                if row is not None and not row.dead and row.attempts == item.attempts:
                    row.dead = True
                    row.lease_until = 0.0
                    row.last_error = error

    def retry_dead(self, limit: int | None = None) -> int:
        self._check_open()
        moved = 0
        with self._lock:
            for row in self._rows.values():
                if limit is not None and moved >= limit:
                    break
                if row.dead:
                    row.dead = False
                    row.attempts = 0
                    row.retry_at = 0.0
                    row.lease_until = 0.0
                    moved += 1
        return moved

    def peek(self, limit: int, *, dead: bool = False) -> list[ClaimedItem]:
        self._check_open()
        with self._lock:
            return [r.view() for r in self._rows.values() if r.dead == dead][:limit]

    def stats(self) -> OutboxStats:
        self._check_open()
        now = self._clock()
        with self._lock:
            live = [r for r in self._rows.values() if not r.dead]
            return OutboxStats(
                depth=len(live),
                in_flight=sum(1 for r in live if r.lease_until > now),
                dead=len(self._rows) - len(live),
                oldest_age_seconds=(now - min(r.enqueued_at for r in live)) if live else None,
            )

    # ------------------------------------------------------------------ leases
    def acquire(self, key: str, owner: str, ttl_seconds: float) -> bool:
        self._check_open()
        now = self._clock()
        with self._lock:
            held = self._leases.get(key)
            if held is not None and held[1] > now and held[0] != owner:
                return False
            self._leases[key] = (owner, now + ttl_seconds)
            return True

    def renew(self, key: str, owner: str, ttl_seconds: float) -> bool:
        self._check_open()
        now = self._clock()
        with self._lock:
            held = self._leases.get(key)
            if held is None or held[0] != owner or held[1] <= now:
                return False
            self._leases[key] = (owner, now + ttl_seconds)
            return True

    def release(self, key: str, owner: str) -> bool:
        self._check_open()
        now = self._clock()
        with self._lock:
            held = self._leases.get(key)
            if held is None or held[0] != owner or held[1] <= now:
                return False
            del self._leases[key]
            return True

    # ------------------------------------------------------------------ lifecycle
    def health(self) -> Health:
        return Health(ok=not self._closed, detail="closed" if self._closed else "in memory")

    def describe(self) -> dict[str, str]:
        return {"kind": "memory", "location": "in process (nothing survives a restart)"}

    def close(self) -> None:
        self._closed = True
