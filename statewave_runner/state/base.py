"""The state-backend contract every backend implements in full.

A backend holds four things: pull cursors, a dedup store (seen ids with a
TTL), the durable outbox of episodes waiting for delivery, and leases for
several replicas sharing one backend. Every method is thread-safe.

The outbox also deduplicates: an item whose ``key`` (the episode's
idempotency key) was queued within ``dedup_ttl`` seconds - whether it is still
waiting, delivered or dead-lettered - is not queued again. This check and the
insert happen in the same transaction, so a re-fetched overlapping window or a
retried webhook never produces a second delivery, and a crash can never leave
a key marked but not queued.

Two more rules every backend keeps:

* ``nack`` and ``dead_letter`` act only on a claim that is still current: if
  the item's lease expired and another worker claimed it again (its attempt
  count moved on), the stale call is ignored, so it cannot reschedule or bury
  an item somebody else is delivering. ``ack`` always removes: the episode was
  delivered, whoever delivered it.
* Outbox ids are never reused, so a late ``ack`` of a stale claim can never
  remove a different, newer item.

Times (``retry_at``, leases of claimed items) are unix seconds from the
process clock; backends accept a ``clock`` for tests. Replicas sharing a
backend are assumed to have NTP-synchronised clocks.

After :meth:`StateBackend.close` every method raises ``StateError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

DEFAULT_DEDUP_TTL = 7 * 24 * 3600.0
DEFAULT_TABLE = "statewave_runner_cursors"
"""PostgreSQL cursor table (the Node runner's name); other tables share its prefix."""
DEFAULT_KEY_PREFIX = "statewave_runner:"
"""Redis key prefix (the Node runner's)."""
DEFAULT_MAX_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """Outbox policy a backend is opened with."""

    dedup_ttl: float = DEFAULT_DEDUP_TTL
    """Seconds an idempotency key blocks a re-queue after it was first queued."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """A nack of an item that has had this many attempts dead-letters it."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """An episode to deliver: its idempotency ``key``, its JSON ``body``, its origin."""

    key: str
    body: str
    origin: str = ""
    """``"<kind>/<name>"`` of the producing source, for metrics and ``describe()``."""


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """An item leased to one delivery attempt."""

    id: str
    """Backend-specific id, opaque to callers."""
    key: str
    body: str
    origin: str
    attempts: int
    """Delivery attempts including the current one (1 on the first claim)."""
    enqueued_at: float
    """Unix time the item was first queued."""
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts for ``/metrics``, ``describe()`` and ``state outbox stats``."""

    depth: int
    """Items waiting or in flight (not acked, not dead)."""
    in_flight: int
    """Items currently leased."""
    dead: int
    """Dead-lettered items."""
    oldest_age_seconds: float | None
    """Age of the oldest waiting or in-flight item; ``None`` when empty."""


@dataclass(frozen=True, slots=True)
class Health:
    """Backend health for ``/readyz`` detail and ``describe()``."""

    ok: bool
    detail: str = ""


@runtime_checkable
class StateBackend(Protocol):
    """The contract. See the module docstring for the outbox's dedup rule."""

    kind: str

    # ---- cursors: opaque strings keyed by (kind, name)
    def get_cursor(self, kind: str, name: str) -> str | None: ...

    def set_cursor(self, kind: str, name: str, cursor: str) -> None: ...

    def delete_cursor(self, kind: str, name: str) -> bool:
        """Remove a cursor; True if one existed."""
        ...

    def list_cursors(self) -> dict[tuple[str, str], str]: ...

    # ---- dedup: seen ids with a TTL
    def mark_if_new(self, key: str, ttl_seconds: float) -> bool:
        """Atomically mark ``key``; True exactly once per key within the TTL."""
        ...

    def contains(self, key: str) -> bool:
        """True if ``key`` was marked and has not expired."""
        ...

    # ---- outbox
    def put(self, items: Sequence[OutboxItem]) -> int:
        """Queue durably; returns how many were new (not deduplicated).

        Returns only once the new items survive a crash (kill -9; for file and
        SQLite also power loss). Raises ``StateError`` if they do not.
        """
        ...

    def put_and_set_cursor(
        self, items: Sequence[OutboxItem], kind: str, name: str, cursor: str | None
    ) -> int:
        """:meth:`put` and :meth:`set_cursor` as one atomic step (both or neither).

        ``cursor=None`` leaves the cursor unchanged.
        """
        ...

    def put_and_mark(
        self, items: Sequence[OutboxItem], key: str, ttl_seconds: float
    ) -> tuple[int, bool]:
        """Queue ``items`` and mark the dedup ``key``, as one atomic step; once per key.

        If ``key`` is marked and not expired, nothing happens and the result is
        ``(0, False)``: the event was handled before. Otherwise the items are
        queued (deduplicated by idempotency key, as :meth:`put`) and ``key``
        is marked for ``ttl_seconds``, both or neither, durably before the
        call returns; the result is ``(new items, True)``. Concurrent calls
        with one key (from any replica) see ``True`` exactly once.

        This is what a push receiver needs: the event id can never be marked
        without its episodes, and a retry needs no separate lookup.
        """
        ...

    def claim(self, limit: int, lease_seconds: float) -> list[ClaimedItem]:
        """Lease up to ``limit`` due items, oldest first.

        An item is due when it is not dead, its ``retry_at`` has passed, and it
        is not leased or its lease expired (a crashed worker's items come back).
        Each claim increments the item's attempt count.
        """
        ...

    def ack(self, items: Sequence[ClaimedItem]) -> None:
        """Delivered: remove. Acking an item that is gone is a no-op."""
        ...

    def nack(self, items: Sequence[ClaimedItem], retry_at: float, error: str) -> None:
        """Not delivered: due again at unix time ``retry_at``, or dead-lettered when
        ``attempts >= max_attempts``. Ignored for a stale claim (see module docstring)."""
        ...

    def dead_letter(self, items: Sequence[ClaimedItem], error: str) -> None:
        """Give up on these items now (the sink rejected them for good).

        Ignored for a stale claim (see module docstring)."""
        ...

    def retry_dead(self, limit: int | None = None) -> int:
        """Move dead-lettered items (oldest first) back to the queue, due now, with
        attempts reset; returns how many moved."""
        ...

    def peek(self, limit: int, *, dead: bool = False) -> list[ClaimedItem]:
        """Look at up to ``limit`` live (waiting or in-flight) items, or dead ones,
        oldest first, without claiming them."""
        ...

    def stats(self) -> OutboxStats: ...

    # ---- leases, for several replicas on one backend
    def acquire(self, key: str, owner: str, ttl_seconds: float) -> bool:
        """Take the lease if it is free or expired (or already ours: then renew)."""
        ...

    def renew(self, key: str, owner: str, ttl_seconds: float) -> bool:
        """Extend our lease; False if we no longer hold it."""
        ...

    def release(self, key: str, owner: str) -> bool:
        """Drop our lease; False if we did not hold it."""
        ...

    # ---- lifecycle
    def health(self) -> Health: ...

    def describe(self) -> dict[str, str]:
        """Kind and location for banners and ``describe()``; never a password."""
        ...

    def close(self) -> None:
        """Flush and release everything. Idempotent."""
        ...
