"""The delivery worker: from the durable outbox to the sink, with retries.

Producers (pull ticks, push receivers) only ``put()`` into the state backend's
outbox and call :meth:`DeliveryWorker.wake`. The worker claims batches, hands
them to the sink, and acks, nacks or dead-letters each item according to the
sink's answer (see ``ingest.py`` for the error contract):

* success: ack; counted per origin through the observer.
* ``PermanentError(index=i)``: dead-letter item ``i`` with the server's
  message, send the rest again at once. Without an index, the batch is sent
  one item at a time to find the bad one(s).
* ``RetryableError`` (5xx, 429, timeouts, connection errors): nack with
  ``retry_at`` = Retry-After or exponential backoff with full jitter, and
  *stall*: no thread claims anything until that moment; then the sink is
  probed (when it can be) and one item is tried; batches grow back 2, 4, 8 ...
  as they succeed. A stalled sink therefore costs no attempts but the trial
  item's (a failed trial item is parked so the next trial takes another one),
  and does not hammer the server.
* ``AuthError`` (401/403, missing tenant, wrong URL): nack without backoff,
  *pause*: one error log line, nothing dead-lettered; the sink is probed every
  ``probe_interval`` and delivery resumes by itself once it is accepted.

The worker only uses the ``StateBackend`` contract and never imports metrics:
the runner connects a :class:`DeliveryObserver` to its metric families.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from .connectors.base import Episode
from .errors import AuthError, DeliveryError, PermanentError, RetryableError, StateError
from .ingest import (
    MAX_RETRY_AFTER,
    ProbingSink,
    Sink,
    clean_json,
    encode_json,
    sink_max_batch,
)
from .state.base import ClaimedItem, OutboxItem, StateBackend

__all__ = [
    "DeliveryObserver",
    "DeliveryStatus",
    "DeliveryWorker",
    "full_jitter_backoff",
    "outbox_item",
]

log_default = logging.getLogger("statewave_runner.delivery")

DeliveryState = Literal["running", "stalled", "paused_auth", "stopped"]
ERROR_MAX = 1000
# Longest a failed trial item is parked behind the others (see _park_seconds).
MAX_PARK = 3600.0


def outbox_item(episode: Episode, origin: str = "") -> OutboxItem:
    """The outbox row for ``episode``: what producers ``put()`` and the worker decodes.

    ``origin`` is ``"<kind>/<name>"`` of the producing source; it also becomes
    ``episode.connector`` when that is not set yet.
    """
    if origin and not episode.connector:
        episode = dataclasses.replace(episode, connector=origin)
    # Cleaned first: NUL, lone surrogates and NaN cannot be stored by every
    # backend (PostgreSQL text/jsonb, SQLite's UTF-8 encoder).
    body = encode_json(clean_json(episode.to_dict())).decode()
    return OutboxItem(key=episode.idempotency_key, body=body, origin=origin or episode.connector)


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """What ``describe()`` and the health log say about delivery."""

    state: DeliveryState
    """``running``, ``stalled`` (sink failing, retrying with backoff),
    ``paused_auth`` (sink refuses our credentials/URL; probing) or ``stopped``."""
    reason: str = ""
    """Why the worker is stalled or paused (the sink's error); empty when running."""
    since: float | None = None
    """Unix time the current state began."""
    last_error: str | None = None
    """The most recent delivery error, kept after recovery."""
    last_success_at: float | None = None
    """Unix time of the most recent accepted batch."""
    next_attempt_at: float | None = None
    """When stalled or paused: unix time of the next probe/attempt."""
    consecutive_failures: int = 0


class DeliveryObserver:
    """Hooks the runner connects to metrics. Subclass and override what you need.

    Called from worker threads; exceptions raised here are logged and ignored.
    """

    def attempt(self, outcome: str, batch_size: int, seconds: float) -> None:
        """One call to the sink: ``outcome`` is ``success``, ``retryable``,
        ``permanent`` or ``auth``; ``seconds`` is its wall time."""

    def delivered(self, items: Sequence[ClaimedItem]) -> None:
        """The sink accepted these items (count them per ``item.origin``)."""

    def dead_lettered(self, items: Sequence[ClaimedItem], error: str) -> None:
        """These items were given up on (rejected for good, or not decodable)."""

    def status_changed(self, status: DeliveryStatus) -> None:
        """The worker moved between running, stalled, paused_auth and stopped."""


def full_jitter_backoff(
    failures: int, initial: float, maximum: float, rng: Callable[[], float]
) -> float:
    """``uniform(0, min(maximum, initial * 2**(failures-1)))`` (AWS "full jitter")."""
    exponent = min(max(failures, 1) - 1, 62)
    return rng() * min(maximum, initial * (2.0**exponent))


def _limit(text: str) -> str:
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 3] + "..."


class DeliveryWorker:
    """Moves episodes from ``state``'s outbox to ``sink``.

    ``start()`` runs ``concurrency`` threads; each loops over :meth:`step`.
    Tests (and embedders who bring their own loop) can call :meth:`step`
    directly: it does one unit of work and returns how long to wait before the
    next one. ``clock`` (unix seconds) and ``rng`` (uniform [0, 1)) are
    injectable; pass the same clock to the state backend for fake-time tests.
    """

    def __init__(
        self,
        state: StateBackend,
        sink: Sink,
        *,
        batch_size: int = 100,
        concurrency: int = 2,
        lease_seconds: float = 300.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        poll_interval: float = 1.0,
        probe_interval: float = 30.0,
        stall_log_interval: float = 300.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        observer: DeliveryObserver | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be > 0")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if not poll_interval > 0 or not probe_interval > 0:
            raise ValueError("poll_interval and probe_interval must be > 0")
        self.state = state
        self.sink = sink
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self.stall_log_interval = stall_log_interval
        self._clock = clock
        self._rng = rng
        self._log = log or log_default
        self._observer = observer or DeliveryObserver()

        # Reentrant: observers called under it may read status().
        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        # wake() without a lock: it raises _pending, and takes the lock to
        # notify only when a thread sleeps (_sleeping, changed under _lock).
        # A thread raises _sleeping before it looks at _pending, so a wake()
        # that saw no sleeper is seen by the thread about to sleep.
        self._pending = False
        self._sleeping = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._drain_until: float | None = None
        self._generation = 0
        # Delivery state, guarded by _lock.
        self._state: DeliveryState = "stopped"
        self._reason = ""
        self._since: float | None = None
        self._last_error: str | None = None
        self._last_success_at: float | None = None
        self._gate = 0.0  # no claims before this unix time
        self._failures = 0  # consecutive retryable failures
        self._window = batch_size  # slow start after a stall
        self._trial_busy = False  # one thread probes/tries while stalled or paused
        self._last_stall_log = 0.0
        self._state_error_logged = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the delivery threads. Idempotent; may follow :meth:`stop`."""
        with self._lock:
            if self._threads and not self._stopping:
                return
            self._stopping = False
            self._drain_until = None
            self._generation += 1
            generation = self._generation
            # A (re)start tries at once: a restart is how a fixed config arrives.
            self._gate = 0.0
            self._failures = 0
            self._window = self.batch_size
            self._set_state_locked("running", "")
            threads = [
                threading.Thread(
                    target=self._run,
                    args=(generation,),
                    name=f"statewave-delivery-{i}",
                    daemon=True,
                )
                for i in range(self.concurrency)
            ]
            self._threads = threads
        for thread in threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush for at most ``timeout`` seconds, then stop. Idempotent.

        While running, the threads keep delivering what is due until the queue
        is empty or the time is up; a stalled or paused worker stops at once.
        What is left stays queued for the next start. A batch still in flight
        at the deadline finishes in the background (its lease protects it).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            threads = self._threads
            if not threads:
                self._set_state_locked("stopped", "")
                return
            self._stopping = True
            self._drain_until = deadline
            self._wakeup.notify_all()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._threads = []
            self._set_state_locked("stopped", "")

    def wake(self) -> None:
        """New items were queued: deliver now instead of at the next poll.

        Cheap when no delivery thread sleeps (every put of a busy runner calls
        it): a flag the threads look at before they sleep; no lock, no notify.
        """
        self._pending = True
        if self._sleeping:
            with self._lock:
                if self._sleeping:
                    self._wakeup.notify_all()

    def status(self) -> DeliveryStatus:
        """A snapshot for ``describe()``."""
        with self._lock:
            return self._status_locked()

    # ------------------------------------------------------------------ loop
    def _run(self, generation: int) -> None:
        while True:
            with self._lock:
                if self._generation != generation:
                    return
                if self._stopping and (
                    self._drain_until is None
                    or time.monotonic() >= self._drain_until
                    or self._state != "running"
                ):
                    return
            try:
                delay = self.step()
            except Exception:  # a bug must not kill delivery for good
                self._log.exception("delivery worker step failed; retrying")
                delay = self.poll_interval
            with self._lock:
                if self._stopping:
                    if delay > 0:
                        return  # draining: nothing due right now
                    continue
                if delay > 0:
                    self._sleeping += 1
                    try:
                        if not self._pending:  # items queued since we looked: look again
                            self._wakeup.wait(delay)
                    finally:
                        self._sleeping -= 1
                    self._pending = False  # the next step() claims whatever that was for

    def step(self) -> float:
        """Do one unit of work; return seconds to wait before the next (0: go on).

        Claims one batch (or, when stalled/paused, probes and tries one item),
        delivers it and records the outcome.
        """
        now = self._clock()
        trial = False
        with self._lock:
            if self._state == "stopped" and not self._stopping:
                self._set_state_locked("running", "")  # stepped without start()
            if now < self._gate:
                return min(self._gate - now, self.poll_interval * 5)
            if self._state in ("stalled", "paused_auth"):
                if self._trial_busy:
                    return self.poll_interval
                self._trial_busy = True
                trial = True
            limit = min(self._window, self.batch_size, sink_max_batch(self.sink))
        try:
            if trial:
                if not self._probe():
                    return self._wait_for_gate()
                limit = 1
            try:
                items = self.state.claim(limit, self.lease_seconds)
            except StateError as exc:
                self._state_failed(exc)
                return self.poll_interval
            if self._state_error_logged:
                self._state_error_logged = False
                self._log.info("state backend answers again: delivery continues")
            if not items:
                if trial:
                    self._nothing_due_on_trial()
                return self.poll_interval
            self._deliver(items, trial=trial)
            with self._lock:
                return 0.0 if self._state == "running" else self._gate_delay_locked()
        finally:
            if trial:
                with self._lock:
                    self._trial_busy = False

    def _nothing_due_on_trial(self) -> None:
        """The sink answered the probe but no item is due for a trial."""
        with self._lock:
            paused = self._state == "paused_auth"
        if paused or self._queue_empty():
            self._recovered()  # the sink takes requests and nothing waits
            return
        # Failed trial items are parked for a while: look again shortly.
        with self._lock:
            self._gate = self._clock() + self.poll_interval * 5

    def _queue_empty(self) -> bool:
        try:
            return self.state.stats().depth == 0
        except StateError:
            return False

    def _wait_for_gate(self) -> float:
        with self._lock:
            return self._gate_delay_locked()

    def _gate_delay_locked(self) -> float:
        return max(0.0, min(self._gate - self._clock(), self.poll_interval * 5))

    # ------------------------------------------------------------------ delivery
    def _decode(self, items: Sequence[ClaimedItem]) -> list[tuple[ClaimedItem, Episode]]:
        good: list[tuple[ClaimedItem, Episode]] = []
        for item in items:
            try:
                doc = json.loads(item.body)
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
                episode = Episode.from_dict(doc)
            except ValueError as exc:
                self._dead_letter([item], f"outbox body is not an episode: {exc}")
                continue
            if not episode.connector and item.origin:
                episode = dataclasses.replace(episode, connector=item.origin)
            good.append((item, episode))
        return good

    def _call_sink(self, pending: Sequence[tuple[ClaimedItem, Episode]]) -> DeliveryError | None:
        started = time.monotonic()
        try:
            self.sink.ingest([episode for _, episode in pending])
        except DeliveryError as exc:
            outcome = (
                "auth"
                if isinstance(exc, AuthError)
                else "permanent"
                if isinstance(exc, PermanentError)
                else "retryable"
            )
            self._notify("attempt", outcome, len(pending), time.monotonic() - started)
            return exc
        except Exception as exc:
            # A sink bug or an unexpected error: keep the items, back off.
            self._log.exception("sink raised an unexpected error; treating it as retryable")
            self._notify("attempt", "retryable", len(pending), time.monotonic() - started)
            return RetryableError(f"sink raised {type(exc).__name__}: {exc}")
        self._notify("attempt", "success", len(pending), time.monotonic() - started)
        return None

    def _deliver(self, items: Sequence[ClaimedItem], *, trial: bool = False) -> None:
        pending = self._decode(items)
        isolate = False
        while pending:
            # After a PermanentError that named no index, send one item per
            # call so only the bad one(s) get dead-lettered.
            batch = pending[:1] if isolate else pending
            after = pending[len(batch) :]
            error = self._call_sink(batch)
            if error is None:
                self._ack(batch)
                pending = after
                continue
            done = max(0, min(error.delivered, len(batch)))
            self._ack(batch[:done])
            failed = batch[done:]
            message = _limit(str(error))
            if isinstance(error, AuthError):
                self._nack(failed + after, self._clock(), message)
                self._paused(message)
                return
            if isinstance(error, PermanentError):
                index = None if error.index is None else error.index - done
                if index is not None and 0 <= index < len(failed):
                    self._dead_letter([failed[index][0]], message)
                    pending = failed[:index] + failed[index + 1 :] + after
                elif len(failed) <= 1:
                    self._dead_letter([item for item, _ in failed], message)
                    pending = after
                else:
                    isolate = True
                    pending = failed + after
                continue
            retry_at = self._stalled(message, error.retry_after)
            if trial and failed:
                retry_at += self._park_seconds(failed[0][0].attempts)
            self._nack(failed + after, retry_at, message)
            return

    def _park_seconds(self, attempts: int) -> float:
        """How long a failed trial item waits behind the others.

        An outage that only inserts notice (the probe passes, e.g. Statewave's
        database is down) costs each trial one attempt. Parking the trial item
        for ``backoff_max * 2**(attempts-1)`` (at most :data:`MAX_PARK`) makes
        the next trial take another item and keeps every item's attempts
        growing only logarithmically with the outage's length.
        """
        exponent = min(max(attempts, 1) - 1, 32)
        return float(min(MAX_PARK, self.backoff_max * 2.0**exponent))

    # ------------------------------------------------------------------ outcomes
    def _ack(self, pairs: Sequence[tuple[ClaimedItem, Episode]]) -> None:
        items = [item for item, _ in pairs]
        if not items:
            return
        try:
            self.state.ack(items)
        except StateError as exc:
            # Delivered but not acked: the lease expires and they are sent again
            # (a duplicate, never a loss).
            self._state_failed(exc)
            return
        self._notify("delivered", items)
        self._note_success_if(len(items))

    def _nack(
        self, pairs: Sequence[tuple[ClaimedItem, Episode]], retry_at: float, error: str
    ) -> None:
        items = [item for item, _ in pairs]
        if not items:
            return
        try:
            self.state.nack(items, retry_at, error)
        except StateError as exc:
            self._state_failed(exc)

    def _dead_letter(self, items: Sequence[ClaimedItem], error: str) -> None:
        if not items:
            return
        try:
            self.state.dead_letter(items, error)
        except StateError as exc:
            self._state_failed(exc)
            return
        for item in items:
            self._log.warning(
                "episode %s from %s dead-lettered: %s "
                "(`python -m statewave_runner state outbox stats` counts dead letters; "
                "`state outbox retry-dead` queues them again)",
                item.key,
                item.origin or "?",
                error,
            )
        self._notify("dead_lettered", list(items), error)

    def _note_success_if(self, count: int) -> None:
        if count <= 0:
            return
        now = self._clock()
        with self._lock:
            self._last_success_at = now
            if self._state == "running":
                self._failures = 0
                if self._window < self.batch_size:
                    self._window = min(self.batch_size, self._window * 2)
                return
        self._recovered()

    def _recovered(self) -> None:
        now = self._clock()
        with self._lock:
            if self._state not in ("stalled", "paused_auth"):
                return
            was, since = self._state, self._since or now
            self._failures = 0
            self._gate = 0.0
            # Slow start after a stall: 2, 4, 8 ... items per batch.
            self._window = min(2, self.batch_size) if was == "stalled" else self.batch_size
            self._set_state_locked("running", "")
        if was == "paused_auth":
            self._log.info(
                "Statewave accepts the credentials again: delivery resumed after %.0fs paused",
                now - since,
            )
        else:
            self._log.info("Statewave delivery recovered after %.1fs stalled", now - since)

    def _stalled(self, message: str, retry_after: float | None) -> float:
        now = self._clock()
        with self._lock:
            self._failures += 1
            delay = (
                min(max(retry_after, 0.0), MAX_RETRY_AFTER)
                if retry_after is not None
                else full_jitter_backoff(
                    self._failures, self.backoff_initial, self.backoff_max, self._rng
                )
            )
            retry_at = now + delay
            self._gate = max(self._gate, retry_at)
            self._last_error = message
            self._window = 1
            first = self._state == "running"
            if first:
                self._set_state_locked("stalled", message)
                self._last_stall_log = now
            else:
                self._reason = message
            remind = not first and now - self._last_stall_log >= self.stall_log_interval
            if remind:
                self._last_stall_log = now
            since = self._since or now
        if first:
            self._log.warning(
                "Statewave delivery stalled: %s. Episodes stay queued and are retried "
                "with backoff (next try in %.1fs); pulls and webhooks keep being accepted",
                message,
                delay,
            )
        elif remind:
            self._log.warning(
                "Statewave delivery still stalled after %.0fs: %s; %s",
                now - since,
                message,
                self._depth_text(),
            )
        else:
            self._log.debug("delivery retry failed: %s (next try in %.1fs)", message, delay)
        return retry_at

    def _paused(self, message: str) -> None:
        now = self._clock()
        with self._lock:
            self._gate = now + self.probe_interval
            self._last_error = message
            first = self._state != "paused_auth"
            if first:
                self._set_state_locked("paused_auth", message)
            else:
                self._reason = message
        if first:
            self._log.error(
                "Statewave delivery paused: %s. Nothing is dropped or dead-lettered; "
                "checking again every %.0fs and resuming by itself once it is accepted",
                message,
                self.probe_interval,
            )

    def _probe(self) -> bool:
        """While stalled/paused: may we try a real item? Spends no attempts."""
        if not isinstance(self.sink, ProbingSink):
            return True
        started = time.monotonic()
        try:
            self.sink.probe()
        except AuthError as exc:
            self._paused(_limit(str(exc)))
            return False
        except PermanentError:
            return True  # the probe is inconclusive; a real item will tell
        except DeliveryError as exc:
            self._stalled(_limit(str(exc)), exc.retry_after)
            return False
        except Exception as exc:
            self._log.debug("sink probe raised %s", exc)
            self._stalled(f"sink probe raised {type(exc).__name__}: {exc}", None)
            return False
        self._log.debug("sink probe ok after %.3fs", time.monotonic() - started)
        return True

    def _state_failed(self, exc: StateError) -> None:
        if not self._state_error_logged:
            self._state_error_logged = True
            self._log.error("state backend failed during delivery: %s; retrying", exc)

    def _depth_text(self) -> str:
        try:
            stats = self.state.stats()
        except StateError:
            return "queue depth unknown"
        return f"{stats.depth} episodes queued"

    # ------------------------------------------------------------------ bookkeeping
    def _set_state_locked(self, state: DeliveryState, reason: str) -> None:
        if state == self._state and reason == self._reason:
            return
        changed = state != self._state
        self._state = state
        self._reason = reason
        if changed:
            self._since = self._clock()
            status = self._status_locked()
            # Observers run outside our lock in spirit; they must not call back in.
            try:
                self._observer.status_changed(status)
            except Exception:
                self._log.exception("delivery observer failed in status_changed")

    def _status_locked(self) -> DeliveryStatus:
        paused = self._state in ("stalled", "paused_auth")
        return DeliveryStatus(
            state=self._state,
            reason=self._reason,
            since=self._since,
            last_error=self._last_error,
            last_success_at=self._last_success_at,
            next_attempt_at=self._gate if paused and self._gate else None,
            consecutive_failures=self._failures,
        )

    def _notify(self, hook: str, *args: object) -> None:
        try:
            getattr(self._observer, hook)(*args)
        except Exception:
            self._log.exception("delivery observer failed in %s", hook)
