"""The runner's own metric families.

Names, types, HELP texts, labels and buckets of the families the Node runner
(``@statewavedev/connectors-runner``) exports are kept exactly, so dashboards
and the alert rules its README ships keep working. The families marked
*addition* below are ours; ``docs/metrics.md`` documents every one.

The runner creates one :class:`RunnerSeries` over its :class:`Registry`,
calls :meth:`RunnerSeries.register_pull` / :meth:`RunnerSeries.register_push`
for every configured source and receiver (so each appears with zeroes from the
first scrape), and keeps the returned handles for the hot path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import AuthError, PermanentError
from .metrics import (
    CounterChild,
    GaugeChild,
    HistogramChild,
    Registry,
    register_default_collectors,
)
from .state.base import OutboxStats

__all__ = [
    "DELIVERY_BATCH_BUCKETS",
    "DELIVERY_DURATION_BUCKETS",
    "DELIVERY_OUTCOMES",
    "PULL_ERROR_REASONS",
    "PULL_SYNC_BUCKETS",
    "PUSH_DELIVERY_BUCKETS",
    "PullSeries",
    "PushSeries",
    "RunnerSeries",
    "delivery_outcome",
]

log = logging.getLogger(__name__)

PULL_ERROR_REASONS: tuple[str, ...] = ("load", "sync", "ingest")
"""``reason`` values of ``statewave_runner_pull_errors_total``, as in the Node runner."""

PULL_SYNC_BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PUSH_DELIVERY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DELIVERY_BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100)
# Push buckets plus 30 s and 60 s: a request that hits the (default 10 s)
# timeout or a slow Statewave must not vanish into +Inf.
DELIVERY_DURATION_BUCKETS: tuple[float, ...] = (*PUSH_DELIVERY_BUCKETS, 30, 60)

DELIVERY_OUTCOMES: tuple[str, ...] = ("success", "retry", "rejected", "auth_failed")
"""``outcome`` values of ``statewave_runner_delivery_attempts_total``:

- ``success``: the sink accepted the request (2xx);
- ``retry``: a transient failure (connection error, timeout, 408/429/5xx); retried later;
- ``rejected``: the sink refused it for good (400/404/422); the item(s) dead-lettered;
- ``auth_failed``: 401/403; delivery pauses until the API key works.
"""


def delivery_outcome(error: BaseException | None) -> str:
    """The ``outcome`` label for one delivery attempt that ended with ``error`` (None = success)."""
    if error is None:
        return "success"
    if isinstance(error, AuthError):
        return "auth_failed"
    if isinstance(error, PermanentError):
        return "rejected"
    return "retry"


@dataclass(frozen=True, slots=True)
class PullSeries:
    """The pre-created series of one pull source (hold it; no lookups on the hot path)."""

    ticks: CounterChild
    episodes_emitted: CounterChild
    episodes_ingested: CounterChild
    errors: dict[str, CounterChild]
    """By reason: ``load``, ``sync``, ``ingest``."""
    last_sync: GaugeChild
    sync_duration: HistogramChild
    ticks_skipped: CounterChild
    next_fire: GaugeChild


@dataclass(frozen=True, slots=True)
class PushSeries:
    """The pre-created series of one push receiver, plus per-status responses on demand."""

    kind: str
    name: str
    deliveries: CounterChild
    handler_errors: CounterChild
    delivery_duration: HistogramChild
    _series: RunnerSeries

    def responses(self, status: int | str) -> CounterChild:
        """The ``statewave_runner_push_responses_total`` child for an HTTP status."""
        return self._series.push_responses.labels(self.kind, self.name, str(status))


class RunnerSeries:
    """Every family the runner exports, one attribute each, on ``registry``.

    ``version`` and ``hostname`` fill ``statewave_runner_info``;
    ``default_metrics`` adds the ``process_*`` and ``python_*`` families
    (``[runner.metrics] default_metrics``).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        version: str,
        hostname: str,
        default_metrics: bool = True,
    ):
        self.registry = registry
        r = registry
        kn = ("kind", "name")

        # ---- pull (Node runner)
        self.pull_ticks = r.counter(
            "statewave_runner_pull_ticks_total",
            "Total pull-source schedule ticks fired (success + failure).",
            kn,
        )
        self.pull_episodes_ingested = r.counter(
            "statewave_runner_pull_episodes_ingested_total",
            "Episodes successfully posted to the Statewave server (excludes dry-run ticks).",
            kn,
        )
        self.pull_episodes_emitted = r.counter(
            "statewave_runner_pull_episodes_emitted_total",
            "Episodes returned by `connector.sync()` (whether or not they made it to ingest).",
            kn,
        )
        self.pull_errors = r.counter(
            "statewave_runner_pull_errors_total",
            "Pull-source errors, partitioned by failure reason (load / sync / ingest).",
            (*kn, "reason"),
        )
        self.pull_last_sync = r.gauge(
            "statewave_runner_pull_last_sync_timestamp_seconds",
            "Unix timestamp of the most recent successful sync per source.",
            kn,
            unit="seconds",
        )
        self.pull_sync_duration = r.histogram(
            "statewave_runner_pull_sync_duration_seconds",
            "Duration of `connector.sync()` per pull source.",
            kn,
            buckets=PULL_SYNC_BUCKETS,
            unit="seconds",
        )
        # ---- pull (additions)
        self.pull_ticks_skipped = r.counter(
            "statewave_runner_pull_ticks_skipped_total",
            "Pull-source ticks skipped because the previous tick of the same source was still"
            " running.",
            kn,
        )
        self.pull_next_fire = r.gauge(
            "statewave_runner_pull_next_fire_timestamp_seconds",
            "Unix timestamp at which the next tick of each pull source is due.",
            kn,
            unit="seconds",
        )

        # ---- push (Node runner)
        self.push_deliveries = r.counter(
            "statewave_runner_push_deliveries_total",
            "Total HTTP requests received by each push receiver.",
            kn,
        )
        self.push_responses = r.counter(
            "statewave_runner_push_responses_total",
            "Push receiver responses, partitioned by HTTP status code.",
            (*kn, "status"),
        )
        self.push_handler_errors = r.counter(
            "statewave_runner_push_handler_errors_total",
            "Times a push receiver's handler threw an exception.",
            kn,
        )
        self.push_delivery_duration = r.histogram(
            "statewave_runner_push_delivery_duration_seconds",
            "Wall-clock time the push receiver spent handling each delivery.",
            kn,
            buckets=PUSH_DELIVERY_BUCKETS,
            unit="seconds",
        )

        # ---- runner (Node runner)
        self.info = r.gauge(
            "statewave_runner_info",
            "Static metadata about this runner instance (always 1).",
            ("version", "hostname"),
        )
        self.schedules_armed = r.gauge(
            "statewave_runner_schedules_armed",
            "Number of pull-source schedules currently armed.",
        )
        self.push_receivers_mounted = r.gauge(
            "statewave_runner_push_receivers_mounted",
            "Number of push receivers mounted on the HTTP multiplex.",
        )
        self.ready = r.gauge(
            "statewave_runner_ready",
            "1 when /readyz returns 200, 0 otherwise.",
        )

        # ---- delivery pipeline (additions)
        self.outbox_depth = r.gauge(
            "statewave_runner_outbox_depth",
            "Episodes queued for delivery to Statewave (waiting or in flight, not dead-lettered).",
        )
        self.outbox_in_flight = r.gauge(
            "statewave_runner_outbox_in_flight",
            "Queued episodes currently claimed by a delivery attempt.",
        )
        self.outbox_oldest_age = r.gauge(
            "statewave_runner_outbox_oldest_age_seconds",
            "Age of the oldest episode queued for delivery; 0 when the outbox is empty.",
            unit="seconds",
        )
        self.outbox_dead_letter = r.gauge(
            "statewave_runner_outbox_dead_letter",
            "Episodes dead-lettered (rejected by Statewave or out of attempts), kept for"
            " inspection and retry.",
        )
        self.delivery_attempts = r.counter(
            "statewave_runner_delivery_attempts_total",
            "Delivery requests to Statewave, by outcome (success / retry / rejected /"
            " auth_failed).",
            ("outcome",),
        )
        self.delivery_batch_size = r.histogram(
            "statewave_runner_delivery_batch_size",
            "Episodes per delivery request to Statewave.",
            buckets=DELIVERY_BATCH_BUCKETS,
        )
        self.delivery_duration = r.histogram(
            "statewave_runner_delivery_duration_seconds",
            "Wall-clock time of each delivery request to Statewave.",
            buckets=DELIVERY_DURATION_BUCKETS,
            unit="seconds",
        )

        for outcome in DELIVERY_OUTCOMES:
            self.delivery_attempts.labels(outcome)
        self.info.labels(version, hostname).set(1)
        self._pull: dict[tuple[str, str], PullSeries] = {}
        self._push: dict[tuple[str, str], PushSeries] = {}
        if default_metrics:
            register_default_collectors(registry)

    # ---- sources
    def register_pull(self, kind: str, name: str, *, last_sync: float | None = None) -> PullSeries:
        """Create every series of a pull source; idempotent.

        Counters and histograms start at zero. ``pull_last_sync_timestamp_seconds``
        starts at ``last_sync`` (default: now, the time the source was
        registered) rather than 0: a 0 would make the Node README's
        ``time() - last_sync > 1800`` alert fire for every source on every
        restart before its first tick. ``pull_next_fire_timestamp_seconds``
        stays 0 until the schedule is armed.
        """
        key = (kind, name)
        existing = self._pull.get(key)
        if existing is not None:
            return existing
        handle = PullSeries(
            ticks=self.pull_ticks.labels(kind, name),
            episodes_emitted=self.pull_episodes_emitted.labels(kind, name),
            episodes_ingested=self.pull_episodes_ingested.labels(kind, name),
            errors={r: self.pull_errors.labels(kind, name, r) for r in PULL_ERROR_REASONS},
            last_sync=self.pull_last_sync.labels(kind, name),
            sync_duration=self.pull_sync_duration.labels(kind, name),
            ticks_skipped=self.pull_ticks_skipped.labels(kind, name),
            next_fire=self.pull_next_fire.labels(kind, name),
        )
        handle.last_sync.set(time.time() if last_sync is None else last_sync)
        self._pull[key] = handle
        return handle

    def register_push(self, kind: str, name: str) -> PushSeries:
        """Create every series of a push receiver at zero; idempotent.

        ``push_responses_total`` children appear with the first response of
        each status, as in the Node runner.
        """
        key = (kind, name)
        existing = self._push.get(key)
        if existing is not None:
            return existing
        handle = PushSeries(
            kind=kind,
            name=name,
            deliveries=self.push_deliveries.labels(kind, name),
            handler_errors=self.push_handler_errors.labels(kind, name),
            delivery_duration=self.push_delivery_duration.labels(kind, name),
            _series=self,
        )
        self._push[key] = handle
        return handle

    def unregister_pull(self, kind: str, name: str) -> None:
        """Remove a pull source's series (it left the config)."""
        self._pull.pop((kind, name), None)
        for fam in (
            self.pull_ticks,
            self.pull_episodes_emitted,
            self.pull_episodes_ingested,
            self.pull_last_sync,
            self.pull_sync_duration,
            self.pull_ticks_skipped,
            self.pull_next_fire,
        ):
            fam.remove(kind, name)
        for reason in PULL_ERROR_REASONS:
            self.pull_errors.remove(kind, name, reason)

    def unregister_push(self, kind: str, name: str) -> None:
        """Remove a push receiver's series (it left the config)."""
        self._push.pop((kind, name), None)
        for fam in (self.push_deliveries, self.push_handler_errors, self.push_delivery_duration):
            fam.remove(kind, name)
        for child in self.push_responses.children():
            labels = dict(child.labels)
            if labels["kind"] == kind and labels["name"] == name:
                self.push_responses.remove(kind, name, labels["status"])

    def pull(self, kind: str, name: str) -> PullSeries | None:
        """The handle of a registered pull source."""
        return self._pull.get((kind, name))

    def push(self, kind: str, name: str) -> PushSeries | None:
        """The handle of a registered push receiver."""
        return self._push.get((kind, name))

    # ---- delivery
    def count_ingested(self, origin: str, n: int = 1) -> None:
        """Count ``n`` episodes from ``origin`` (``"kind/name"``) accepted by Statewave.

        Only registered pull sources have this counter; episodes of push
        receivers, or of a source no longer in the config, are not counted.
        """
        kind, _, name = origin.partition("/")
        handle = self._pull.get((kind, name))
        if handle is not None and n > 0:
            handle.episodes_ingested.inc(n)

    def watch_outbox(self, stats: Callable[[], OutboxStats]) -> None:
        """Compute the outbox gauges from ``stats()`` once per scrape.

        If ``stats()`` raises (state backend unreachable), the four gauges show
        ``NaN`` for that scrape and a warning is logged.
        """

        def refresh() -> None:
            try:
                s = stats()
            except Exception:
                log.warning("metrics: reading outbox stats failed", exc_info=True)
                for g in (
                    self.outbox_depth,
                    self.outbox_in_flight,
                    self.outbox_oldest_age,
                    self.outbox_dead_letter,
                ):
                    g.set(math.nan)
                return
            self.outbox_depth.set(s.depth)
            self.outbox_in_flight.set(s.in_flight)
            self.outbox_dead_letter.set(s.dead)
            self.outbox_oldest_age.set(s.oldest_age_seconds or 0.0)

        self.registry.add_collect_hook(refresh)

    def observe_delivery(
        self,
        *,
        batch_size: int,
        seconds: float,
        error: BaseException | None = None,
    ) -> None:
        """Record one delivery request: its outcome, batch size and duration."""
        self.delivery_attempts.labels(delivery_outcome(error)).inc()
        self.delivery_batch_size.observe(batch_size)
        self.delivery_duration.observe(seconds)

    # ---- runner state
    def set_ready(self, ready: bool) -> None:
        """``statewave_runner_ready``: 1 between start and stop."""
        self.ready.set(1 if ready else 0)

    def mark_synced(self, kind: str, name: str, when: float | None = None) -> None:
        """Set ``pull_last_sync_timestamp_seconds`` (now, unless ``when`` is given)."""
        handle = self.register_pull(kind, name)
        handle.last_sync.set(time.time() if when is None else when)
