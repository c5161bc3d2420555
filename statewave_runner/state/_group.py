"""Group commit: many threads' writes, one transaction and one fsync.

A thread that submits an operation while no batch is running becomes the
leader: it takes everything queued so far (its own operation included), hands
the batch to the backend, which runs it in one transaction and records each
operation's result or error, and then wakes every waiter. Operations that
arrive while a batch is committing queue up and form the next batch, so the
batch size grows with the load and an idle system pays no added latency
(no timer, no writer thread, no hand-off).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import StateError

MAX_BATCH = 512
"""Upper bound on operations per transaction, to bound its size and latency."""


class Op:
    """One submitted operation: a backend-specific ``payload`` and its outcome."""

    __slots__ = ("done", "error", "payload", "result", "touches_cursors")

    def __init__(self, payload: Any, touches_cursors: bool) -> None:
        self.payload = payload
        self.touches_cursors = touches_cursors
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False

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

    ``run_batch(ops)`` must settle every op (``succeed``/``fail``) only after
    the batch is durable; an op it leaves unsettled fails with the exception
    ``run_batch`` raised.
    """

    def __init__(self, run_batch: Callable[[list[Op]], None], what: str) -> None:
        self._run_batch = run_batch
        self._what = what
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[Op] = []
        self._busy = False
        self._closed = False
        self.batches = 0
        """Batches committed so far (for tests and the benchmark)."""
        self.ops = 0
        """Operations run so far."""

    def submit(self, payload: Any, *, touches_cursors: bool = False) -> Any:
        """Run ``payload`` in the next batch; return its result or raise its error."""
        op = Op(payload, touches_cursors)
        batch: list[Op] | None = None
        with self._cond:
            if self._closed:
                raise StateError(f"{self._what} is closed")
            self._queue.append(op)
            while not op.done:
                if not self._busy:
                    self._busy = True
                    batch = self._queue[:MAX_BATCH]
                    del self._queue[:MAX_BATCH]
                    break
                self._cond.wait()
        if batch is not None:
            self._lead(batch)
        if op.error is not None:
            raise op.error
        return op.result

    def _lead(self, batch: list[Op]) -> None:
        try:
            self._run_batch(batch)
        except BaseException as exc:
            for op in batch:
                if not op.done:
                    op.fail(_copy_error(exc, self._what))
            if not isinstance(exc, Exception):
                raise
        finally:
            for op in batch:
                if not op.done:  # run_batch returned without settling: a bug, not a success
                    op.fail(StateError(f"{self._what}: operation was not run"))
            with self._cond:
                self.batches += 1
                self.ops += len(batch)
                self._busy = False
                self._cond.notify_all()

    def close(self) -> None:
        """Refuse new operations; wait for the running batch and the queue to drain."""
        with self._cond:
            self._closed = True
            while self._busy or self._queue:
                self._cond.wait()


def _copy_error(exc: BaseException, what: str) -> BaseException:
    # Each waiter raises its own exception object: several threads raising one
    # object would interleave their tracebacks on it.
    if isinstance(exc, StateError):
        copy = StateError(str(exc))
    else:
        copy = StateError(f"{what}: {type(exc).__name__}: {exc}")
    copy.__cause__ = exc
    return copy
