"""Group commit: many threads' writes, one transaction and one fsync.

A thread that submits an operation while no batch is running becomes the
leader: it takes everything queued so far (its own operation included), hands
the batch to the backend, which runs it in one transaction and records each
operation's result or error, then wakes exactly the callers of that batch and,
if more operations queued up meanwhile, hands leadership to the oldest of
them. Operations that arrive while a batch is committing form the next batch,
so the batch size grows with the load, and an idle system pays no added
latency (no timer, no writer thread). Each waiter sleeps on its own lock: a
batch wakes its own callers, not every waiting thread.

The callers of a batch are woken one after the other, each by the one before
it, not all at once by the leader: only one thread runs Python at a time (the
GIL), so thirty threads woken together would queue for it, each paying extra
context switches on the way, and the leader, which needs the GIL back after
every SQLite step or network wait, would queue behind them. When another
batch follows, its leader wakes the previous batch's callers just before its
own durable wait (the ``COMMIT``'s fsync, the server's answer) by calling
:meth:`GroupCommitter.wake_previous`: they run while it waits instead of
competing with it for the GIL before. A backend that never calls it gets
them woken at the end of the batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import StateError

MAX_BATCH = 512
"""Upper bound on operations per transaction, to bound its size and latency."""


class Op:
    """One submitted operation: a backend-specific ``payload`` and its outcome."""

    __slots__ = ("_next", "_wake", "done", "error", "payload", "result", "touches_cursors")

    def __init__(self, payload: Any, touches_cursors: bool) -> None:
        self.payload = payload
        self.touches_cursors = touches_cursors
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self._next: Op | None = None
        """The next caller of the same batch to wake, once this one is awake."""
        self._wake = threading.Lock()
        self._wake.acquire()  # released once: "done" or "you lead now"

    def succeed(self, result: Any) -> None:
        self.result = result
        self.error = None
        self.done = True

    def fail(self, error: BaseException) -> None:
        self.result = None
        self.error = error
        self.done = True


class GroupCommitter:
    """Serializes writes into batches run by ``run_batch`` (see module docstring).

    ``run_batch(ops)`` must settle every op (``succeed``/``fail``) only once
    the batch is durable; an op it leaves unsettled fails.
    """

    def __init__(self, run_batch: Callable[[list[Op]], None], what: str) -> None:
        self._run_batch = run_batch
        self._what = what
        self._lock = threading.Lock()
        self._queue: list[Op] = []
        self._busy = False
        self._closed = False
        self._previous: Op | None = None
        """First caller of the batch before, not woken yet (only the leader touches it)."""
        self.batches = 0
        """Batches run so far (for tests and the benchmark)."""
        self.ops = 0
        """Operations run so far."""

    def submit(self, payload: Any, *, touches_cursors: bool = False) -> Any:
        """Run ``payload`` in the next batch; return its result or raise its error."""
        op = Op(payload, touches_cursors)
        with self._lock:
            if self._closed:
                raise StateError(f"{self._what} is closed")
            self._queue.append(op)
            lead = not self._busy
            self._busy = True
        if not lead:
            op._wake.acquire()  # until our batch is done, or we are handed the lead
            if op.done:
                nxt = op._next
                if nxt is not None:
                    nxt._wake.release()  # pass the wake-up on along the batch
        if not op.done:
            self._lead(op)
        if op.error is not None:
            raise op.error
        return op.result

    def _lead(self, mine: Op) -> None:
        with self._lock:
            batch = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
        try:
            self._run_batch(batch)
        except BaseException as exc:
            for op in batch:
                if not op.done:
                    op.fail(_copy_error(exc, self._what))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.wake_previous()
            for op in batch:
                if not op.done:  # run_batch returned without settling: a bug, not a success
                    op.fail(StateError(f"{self._what}: operation was not run"))
            # The batch's callers, in a chain: each woken caller wakes the next.
            first: Op | None = None
            for op in reversed(batch):
                if op is not mine:
                    op._next = first
                    first = op
            with self._lock:
                self.batches += 1
                self.ops += len(batch)
                successor = self._queue[0] if self._queue else None
                self._busy = successor is not None
            if successor is not None:
                # The successor wakes them just before its own durable wait.
                self._previous = first
                successor._wake.release()
            elif first is not None:
                first._wake.release()

    def wake_previous(self) -> None:
        """Wake the callers of the batch before this one (on the leader, from ``run_batch``).

        Call it just before the batch's durable wait; idempotent.
        """
        first = self._previous
        if first is not None:
            self._previous = None
            first._wake.release()

    def close(self) -> None:
        """Refuse new operations; wait until everything queued has run."""
        with self._lock:
            self._closed = True
        while True:
            with self._lock:
                if not self._busy and not self._queue:
                    return
            time.sleep(0.001)


def _copy_error(exc: BaseException, what: str) -> BaseException:
    # Each waiter raises its own exception object: several threads raising one
    # object would interleave their tracebacks on it.
    if isinstance(exc, StateError):
        copy = StateError(str(exc))
    else:
        copy = StateError(f"{what}: {type(exc).__name__}: {exc}")
    copy.__cause__ = exc
    return copy
