"""The Runner: wires config, state, delivery, schedules, HTTP and metrics together.

Lifecycle (see DESIGN.md): ``start()`` opens the state backend, builds every
connector, mounts every receiver, starts the HTTP server and the delivery
worker, arms every schedule, then flips ready. ``stop()`` flips ``/readyz`` to
503, stops the schedules (in-flight ticks finish, bounded), stops the HTTP
server (drains in-flight requests, bounded), lets the delivery worker flush
what it can, and closes the state backend. Both are idempotent and safe from
any thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from . import __version__
from .config import Config, SourceEntry
from .connectors.base import Episode, PullConfig, PullConnector, PushReceiver, SyncRequest
from .errors import (
    ConnectorError,
    EmitError,
    RunnerError,
    ScheduleError,
    StateError,
    StatewaveRunnerError,
)
from .httpclient import HttpClient
from .httptypes import Request, Response
from .ingest import FALLBACK_BATCH, Sink, as_sink, make_sink
from .log import ContextAdapter, bind
from .metrics import Registry
from .metrics_http import metrics_handler
from .outbox import DeliveryObserver, DeliveryWorker, outbox_item
from .redact import Redactor, redact_url
from .schedule import Schedule, next_fire_times
from .schedule import parse as parse_schedule
from .series import PullSeries, PushSeries, RunnerSeries
from .server import Limits, Server
from .state import ClaimedItem, OutboxItem, OutboxSettings, StateBackend, open_state
from .timers import Timers

IngestCallable = Callable[[Sequence[Episode]], None]

# Leases make "one tick per schedule slot" hold across replicas sharing a state
# backend. The lease key is per source; a tick takes it until the end of the
# schedule slot it belongs to (cron: the next fire time; interval: the next
# wall-clock multiple of the period). Another replica firing in the same slot
# finds it held and skips; the holder's own next fire renews it. A crashed
# holder's lease simply ends with its slot. While a tick runs, a heartbeat keeps
# the lease at least _LEASE_RUNNING seconds ahead (renewed every
# _LEASE_HEARTBEAT seconds), so no second replica starts the same source
# meanwhile, yet a process killed mid-tick frees the source within
# _LEASE_RUNNING seconds; when the tick ends, the lease is cut back to the end
# of its slot, so a process killed after a tick does not hold the source beyond
# the slot (its own restart is a new replica id).
_LEASE_RUNNING = 30.0
_LEASE_HEARTBEAT = 10.0


def _origin(mode: str, key: str) -> str:
    return f"{mode}:{key}"


@dataclass
class _PullSource:
    entry: SourceEntry
    schedule: Schedule
    series: PullSeries
    connector: PullConnector | None = None
    load_error: str | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    last_success_at: float | None = None
    last_episodes: int = 0
    lease_lost: bool = False


def _for_queue(episode: Episode, connector: str, subject: str | None) -> Episode:
    """``episode`` with the producing source's key (and configured subject) set."""
    if type(episode) is not Episode:  # a subclass may add fields: let replace() copy them
        if subject:
            return dataclasses.replace(episode, connector=connector, subject=subject)
        return dataclasses.replace(episode, connector=connector)
    # The constructor directly: dataclasses.replace() costs twice as much per episode.
    return Episode(
        subject or episode.subject,
        episode.kind,
        episode.text,
        episode.occurred_at,
        episode.source,
        episode.idempotency_key,
        episode.metadata,
        connector,
    )


@dataclass
class _PushSource:
    entry: SourceEntry
    receiver: PushReceiver
    series: PushSeries


@dataclass
class _Ctx:
    """The PushContext a receiver gets."""

    runner: Runner
    entry: SourceEntry
    kind: str
    name: str
    subject: str | None
    dedup: Any
    http: Any
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    clock: Callable[[], float] = field(default=time.time)

    def emit(self, episodes: Sequence[Episode]) -> int:
        return self.runner._queue(self.entry, episodes)

    def emit_once(self, event_key: str, episodes: Sequence[Episode], ttl_seconds: float) -> bool:
        return self.runner._queue_once(self.entry, event_key, episodes, ttl_seconds)

    def get_cursor(self) -> str | None:
        return self.runner.state.get_cursor(self.kind, self.name)

    def set_cursor(self, cursor: str) -> None:
        self.runner.state.set_cursor(self.kind, self.name, cursor)

    def now(self) -> float:
        return self.clock()


# The worker's outcome words -> the delivery_attempts_total{outcome} label values.
_OUTCOME_LABEL = {
    "success": "success",
    "retryable": "retry",
    "permanent": "rejected",
    "auth": "auth_failed",
}


class _DeliveryObserver(DeliveryObserver):
    """Connects the delivery worker's hooks to the metric families and the log."""

    def __init__(self, runner: Runner):
        self._runner = runner

    def attempt(self, outcome: str, batch_size: int, seconds: float) -> None:
        series = self._runner.series
        series.delivery_attempts.labels(_OUTCOME_LABEL.get(outcome, "retry")).inc()
        series.delivery_batch_size.observe(batch_size)
        series.delivery_duration.observe(max(seconds, 0.0))

    def delivered(self, items: Sequence[ClaimedItem]) -> None:
        counts: dict[str, int] = {}
        for item in items:
            counts[item.origin] = counts.get(item.origin, 0) + 1
        for origin, n in counts.items():
            mode, _, key = origin.partition(":")
            if mode == "pull":
                self._runner.series.count_ingested(key, n)

    def dead_lettered(self, items: Sequence[ClaimedItem], error: str) -> None:
        origins = sorted({item.origin for item in items})
        self._runner.log.error(
            "dead-lettered %d episode(s) from %s: %s",
            len(items),
            ", ".join(origins) or "?",
            self._runner.redactor.scrub(error),
        )


def open_configured_state(config: Config) -> StateBackend:
    """The state backend ``[runner.state]`` describes, with the outbox policy of ``[statewave]``."""
    sc = config.runner.state
    return open_state(
        sc.kind,
        path=sc.path,
        url=sc.url,
        table=sc.table,
        schema=sc.schema,
        key_prefix=sc.key_prefix,
        state_dir=config.runner.state_dir,
        settings=OutboxSettings(
            dedup_ttl=config.statewave.dedup_ttl, max_attempts=config.statewave.max_attempts
        ),
    )


def default_replica_id() -> str:
    """``<hostname>:<pid>``: unique per process, readable in lease tables."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Runner:
    """Runs every pull source and push receiver of one config.

    ``ingest`` replaces the HTTP sink (a :class:`~statewave_runner.ingest.Sink`
    or a callable taking a list of episodes that raises
    :class:`~statewave_runner.errors.RetryableError` /
    :class:`~statewave_runner.errors.PermanentError`); ``state`` replaces the
    backend ``[runner.state]`` would open (the runner then does not close it).

    ``logger`` is the parent of every logger the runner writes to (``.pull``,
    ``.push``, ``.delivery``, ``.server``, ``.ingest``); default
    ``statewave_runner``. Use as ``with Runner(config) as r: ...`` or
    ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        config: Config,
        *,
        ingest: Sink | IngestCallable | None = None,
        state: StateBackend | None = None,
        logger: logging.Logger | None = None,
        http_client: HttpClient | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.log = logger or logging.getLogger("statewave_runner")
        self.redactor = Redactor(config.secrets)
        self._clock = clock
        self._given_state = state
        self._state: StateBackend | None = state
        self._ingest = ingest
        self.http = http_client or HttpClient(redactor=self.redactor)
        self.replica_id = config.runner.replica_id or default_replica_id()
        self.metrics = Registry()
        self.series = RunnerSeries(
            self.metrics,
            version=__version__,
            hostname=socket.gethostname(),
            default_metrics=config.runner.metrics.default_metrics,
        )
        self._lock = threading.RLock()
        self._started = False
        self._stopped = False
        self._stopping = threading.Event()
        self._pull: dict[str, _PullSource] = {}
        self._push: dict[str, _PushSource] = {}
        self._ticking: dict[str, _PullSource] = {}  # ticks holding a lease right now
        self._ticking_lock = threading.Lock()
        self.lease_heartbeat = _LEASE_HEARTBEAT
        """Seconds between renewals of running ticks' leases (tests shorten it)."""
        self._heartbeat_thread: threading.Thread | None = None
        self._timers: Timers | None = None
        self._server: Server | None = None
        self._worker: DeliveryWorker | None = None
        self._sink: Sink | None = None

        for entry in config.pull:
            tz = config.timezone_for(entry)
            try:
                sched = parse_schedule(entry.schedule, tz)
            except ScheduleError as exc:  # config validation already rejects these
                raise RunnerError(f"{entry.where}.schedule: {exc}") from None
            self._pull[entry.key] = _PullSource(
                entry, sched, self.series.register_pull(entry.kind, entry.name)
            )
        self._push_series = {e.key: self.series.register_push(e.kind, e.name) for e in config.push}

    # ------------------------------------------------------------------ properties
    @property
    def state(self) -> StateBackend:
        """The open state backend (between ``start()`` and ``stop()``)."""
        if self._state is None:
            raise RunnerError("the runner is not running (no state backend is open)")
        return self._state

    @property
    def ready(self) -> bool:
        """True between a completed ``start()`` and ``stop()``."""
        return self._server is not None and self._server.ready

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) after ``start()``."""
        if self._server is None:
            raise RunnerError("the runner is not started")
        return self._server.address

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Runner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Open state, mount receivers, listen, start delivery, arm schedules, become ready.

        Returns once the server listens and every schedule is armed. Raises
        :class:`RunnerError` / :class:`StateError` (nothing is left running).
        """
        with self._lock:
            if self._stopped:
                raise RunnerError("a stopped Runner cannot be started again; create a new one")
            if self._started:
                return
            self._started = True
            try:
                self._start_locked()
            except BaseException:
                self._teardown(self.config.runner.stop_timeout)
                self._stopped = True
                raise

    def _start_locked(self) -> None:
        self._open_core()
        self._open_serving()

    def _open_core(self) -> None:
        """State, connectors, sink and the delivery worker: everything but HTTP and timers."""
        cfg = self.config
        self.series.set_ready(False)
        if self._state is None:
            self._state = open_configured_state(cfg)
        state = self._state

        for source in self._pull.values():
            self._load_pull(source)
        for entry in cfg.push:
            try:
                receiver = entry.spec.factory(entry.config)
            except ConnectorError as exc:
                raise RunnerError(
                    f"{entry.where}: receiver failed to load: {self.redactor.scrub(str(exc))}"
                ) from None
            if not isinstance(receiver, PushReceiver):
                raise RunnerError(f"{entry.where}: {entry.kind} is not a push receiver")
            self._push[entry.key] = _PushSource(entry, receiver, self._push_series[entry.key])

        sw = cfg.statewave
        if self._ingest is None:
            self._sink = make_sink(
                sw.url,
                api_key=sw.api_key,
                tenant_id=sw.tenant_id,
                timeout=sw.timeout,
                log=self.log.getChild("ingest"),
            )
        else:
            self._sink = as_sink(self._ingest)
        self._worker = DeliveryWorker(
            state,
            self._sink,
            batch_size=sw.batch_size,
            concurrency=sw.concurrency,
            # One-request-per-episode fallback batches must finish inside the
            # lease: FALLBACK_BATCH requests of at most `timeout` each, 3x over.
            # No fixed floor: the lease is also how long a batch in flight at a
            # crash waits before the next process sends it again (300 s with
            # the default 10 s timeout).
            lease_seconds=3 * sw.timeout * FALLBACK_BATCH,
            backoff_initial=sw.backoff_initial,
            backoff_max=sw.backoff_max,
            log=self.log.getChild("delivery"),
            observer=_DeliveryObserver(self),
        )
        self.series.watch_outbox(state.stats)
        self._worker.start()

    def _open_serving(self) -> None:
        """The HTTP server with every route, then the armed schedules."""
        rc = self.config.runner
        server = Server(
            rc.host,
            rc.port,
            limits=Limits(
                max_body_bytes=rc.max_body_bytes,
                max_header_bytes=rc.max_header_bytes,
                header_timeout=rc.header_timeout,
                body_timeout=rc.body_timeout,
                keepalive_timeout=rc.keepalive_timeout,
                max_connections=rc.max_connections,
                drain_timeout=rc.stop_timeout,
            ),
            log=self.log.getChild("server"),
        )
        mc = rc.metrics
        if mc.enabled:
            server.route(
                mc.path,
                metrics_handler(
                    self.metrics,
                    auth_kind=mc.auth.kind,
                    token=mc.auth.token,
                    username=mc.auth.username,
                    password=mc.auth.password,
                ),
                methods=("GET",),
            )
        for push in self._push.values():
            server.route(push.entry.mount_path, self._push_handler(push), methods=("POST",))
        self._server = server
        server.start()
        self.series.push_receivers_mounted.set(len(self._push))

        timers = Timers(max_workers=rc.max_concurrent_ticks)
        timers.on_skip = self._on_skip
        timers.on_error = self._on_timer_error
        for key, source in self._pull.items():
            timers.add(key, source.schedule, self._tick_fn(source))
        timers.start()
        self._timers = timers
        if self._pull:
            self._heartbeat_thread = threading.Thread(
                target=self._heartbeat, name="statewave-lease-heartbeat", daemon=True
            )
            self._heartbeat_thread.start()
        self.series.schedules_armed.set(timers.armed())
        for key, source in self._pull.items():
            source.series.next_fire.set_function(self._next_fire_fn(key))

        server.ready = True
        self.series.set_ready(True)
        self.log.info(
            "runner started: %d pull source(s), %d push receiver(s), listening on %s:%d",
            len(self._pull),
            len(self._push),
            *server.address,
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop everything in order, each step bounded; idempotent, any thread."""
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        self._teardown(self.config.runner.stop_timeout if timeout is None else timeout)

    def _teardown(self, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        self._stopping.set()
        if self._server is not None:
            self._server.ready = False
        self.series.set_ready(False)
        if self._timers is not None:
            stuck = self._timers.stop(remaining())
            if stuck:
                self.log.warning(
                    "stop: %d tick(s) still running after the timeout: %s",
                    len(stuck),
                    ", ".join(stuck),
                )
            self.series.schedules_armed.set(0)
        if self._server is not None:
            self._server.stop(remaining())
        if self._worker is not None:
            self._worker.stop(remaining())
        if self._state is not None and self._timers is not None:
            # Hand our sources to another replica now rather than at slot end.
            for key in self._pull:
                try:
                    self._state.release(f"tick/{key}", self.replica_id)
                except StatewaveRunnerError:
                    break
        close_http = getattr(self.http, "close", None)
        if callable(close_http):
            close_http()
        if self._state is not None and self._given_state is None:
            try:
                self._state.close()
            except StatewaveRunnerError as exc:
                self.log.error("closing state failed: %s", self.redactor.scrub(str(exc)))
            self._state = None
        self.log.info("runner stopped")

    def sync_once(
        self,
        key: str,
        *,
        dry_run: bool | None = None,
        max_items: int | None = None,
        from_scratch: bool = False,
        on_episodes: Callable[[Sequence[Episode]], None] | None = None,
        flush_timeout: float = 30.0,
    ) -> TickResult:
        """Run one tick of ``key`` now without HTTP or schedules, then flush delivery.

        For ``python -m statewave_runner sync KIND/NAME``. What could not be
        delivered within ``flush_timeout`` stays queued in the state backend.
        """
        if key not in self._pull:
            known = ", ".join(sorted(self._pull)) or "none configured"
            raise RunnerError(f"no pull source {key!r} (pull sources: {known})")
        with self._lock:
            if self._started:
                raise RunnerError("sync_once() needs a Runner that has not been started")
            self._started = True
            try:
                self._open_core()
            except BaseException:
                self._stopped = True
                self._teardown(0.0)
                raise
        try:
            # A manual sync is the operator's explicit wish: it does not wait
            # for (or take) the slot lease of the scheduled ticks.
            return self.run_tick(
                key,
                dry_run=dry_run,
                max_items=max_items,
                from_scratch=from_scratch,
                on_episodes=on_episodes,
                use_lease=False,
            )
        finally:
            self.stop(flush_timeout)

    def serve_forever(
        self,
        on_ready: Callable[[Runner], None] | None = None,
        *,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_interval: float = 10.0,
    ) -> int:
        """Start, then block until SIGTERM/SIGINT; stop and return the exit code.

        ``on_ready`` runs once the runner is ready (the CLI prints its banner).
        ``housekeeping`` then runs on the main thread every
        ``housekeeping_interval`` seconds until a stop is requested (the CLI
        hands freed heap back to the OS); an exception it raises is logged.
        A second signal while stopping exits the process at once (code 2).
        Must be called from the main thread (signal handlers).
        """
        stop_requested = threading.Event()
        signals_seen = 0

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                self.log.info(
                    "received %s: stopping (send it again to exit at once)",
                    signal.Signals(signum).name,
                )
                stop_requested.set()
            else:
                self.log.warning(
                    "received %s again while stopping: exiting now", signal.Signals(signum).name
                )
                logging.shutdown()
                os._exit(2)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            if on_ready is not None:
                on_ready(self)
            interval = 3600.0 if housekeeping is None else housekeeping_interval
            while not stop_requested.wait(interval):
                if housekeeping is not None:
                    try:
                        housekeeping()
                    except Exception:
                        self.log.exception("housekeeping raised")
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    # ------------------------------------------------------------------ pull
    def _load_pull(self, source: _PullSource) -> PullConnector | None:
        """Build the source's connector; on failure remember why and return None."""
        entry = source.entry
        try:
            connector = entry.spec.factory(entry.config)
        except (ConnectorError, ValueError, OSError) as exc:
            source.connector = None
            source.load_error = self.redactor.scrub(str(exc))
            return None
        if not isinstance(connector, PullConnector):
            source.load_error = f"{entry.kind} is not a pull connector"
            return None
        source.connector = connector
        source.load_error = None
        return connector

    def _tick_fn(self, source: _PullSource) -> Callable[[], None]:
        key = source.entry.key

        def tick() -> None:
            self.run_tick(key)

        return tick

    def _next_fire_fn(self, key: str) -> Callable[[], float]:
        def value() -> float:
            timers = self._timers
            if timers is None:
                return 0.0
            info = timers.info(key)
            return info.next_fire_at or 0.0

        return value

    def _on_skip(self, key: str) -> None:
        source = self._pull.get(key)
        if source is not None:
            source.series.ticks_skipped.inc()

    def _on_timer_error(self, key: str, exc: BaseException) -> None:
        self.log.error(
            "tick %s raised %s: %s", key, type(exc).__name__, self.redactor.scrub(str(exc))
        )

    def _slot_end(self, source: _PullSource, now: float) -> float:
        """Unix time the schedule slot containing ``now`` ends (see _LEASE_RUNNING)."""
        sched = source.schedule
        if sched.interval_seconds is not None:
            period = sched.interval_seconds
            return (now // period + 1) * period
        return sched.next_after(datetime.fromtimestamp(now, UTC)).timestamp()

    def _hold_lease(self, source: _PullSource, *, running: bool) -> bool:
        now = self._clock()
        until = self._slot_end(source, now)
        if running:
            until = max(until, now + _LEASE_RUNNING)
        return self.state.acquire(
            f"tick/{source.entry.key}", self.replica_id, max(until - now, 0.001)
        )

    def _release_to_slot_end(self, source: _PullSource, log: ContextAdapter) -> None:
        """Cut a tick's lease back to the end of its slot (it runs out by itself if this fails)."""
        try:
            self._hold_lease(source, running=False)
        except StatewaveRunnerError as exc:
            log.debug("could not shorten the lease: %s", self.redactor.scrub(str(exc)))

    def _heartbeat(self) -> None:
        """Keep the leases of running ticks _LEASE_RUNNING seconds ahead (own thread)."""
        while not self._stopping.wait(self.lease_heartbeat):
            with self._ticking_lock:
                ticking = list(self._ticking.values())
            for source in ticking:
                try:
                    held = self._hold_lease(source, running=True)
                except StatewaveRunnerError as exc:
                    # Unreachable backend: keep going; the lease may run out, and
                    # then another replica may start this source too (dedup absorbs it).
                    self.log.warning(
                        "lease heartbeat for %s failed: %s",
                        source.entry.key,
                        self.redactor.scrub(str(exc)),
                    )
                    continue
                if not held:
                    source.lease_lost = True

    def run_tick(
        self,
        key: str,
        *,
        dry_run: bool | None = None,
        max_items: int | None = None,
        from_scratch: bool = False,
        on_episodes: Callable[[Sequence[Episode]], None] | None = None,
        use_lease: bool = True,
    ) -> TickResult:
        """Run one pull tick of source ``key`` (``kind/name``) now.

        The scheduler calls this; so does ``python -m statewave_runner sync``
        (with ``dry_run``/``max_items`` overrides, ``from_scratch`` ignoring the
        stored cursor, ``on_episodes`` seeing every checkpoint's episodes,
        ``use_lease=False`` running it even if a replica ran this slot).
        Never raises for a connector or state failure: the result says what
        happened, metrics and the log line count it.
        """
        source = self._pull[key]
        entry = source.entry
        cfg = entry.config
        if not isinstance(cfg, PullConfig):
            raise RunnerError(f"{entry.where} is not a pull source")
        kind, name = entry.kind, entry.name
        metrics = source.series
        tick_id = secrets.token_hex(6)
        log = bind(self.log.getChild("pull"), kind=kind, name=name, tick_id=tick_id)
        metrics.ticks.inc()
        dry = cfg.dry_run if dry_run is None else dry_run
        cap = max_items if max_items is not None else cfg.max_items
        started = time.monotonic()
        result = TickResult(key=key, tick_id=tick_id, dry_run=dry)

        try:
            if use_lease and not self._hold_lease(source, running=True):
                result.outcome = "leased_elsewhere"
                log.debug("another replica holds the lease for %s; skipping this tick", key)
                return self._finish_tick(source, result, started, log)
            cursor = None if from_scratch else self.state.get_cursor(kind, name)
        except StatewaveRunnerError as exc:  # state backend unreachable: counted as "load"
            metrics.errors["load"].inc()
            result.outcome = "state_error"
            result.error = self.redactor.scrub(str(exc))
            return self._finish_tick(source, result, started, log)

        connector = source.connector or self._load_pull(source)
        if connector is None:
            metrics.errors["load"].inc()
            result.outcome = "load_error"
            result.error = source.load_error
            if use_lease:
                self._release_to_slot_end(source, log)
            return self._finish_tick(source, result, started, log)

        request = SyncRequest(
            kind=kind,
            name=name,
            cursor=cursor,
            subject=cfg.subject,
            max_items=cap,
            dry_run=dry,
            stop=self._stopping,
            http=self.http,
            log=log,
        )
        origin = _origin("pull", key)
        if use_lease:
            source.lease_lost = False
            with self._ticking_lock:
                self._ticking[key] = source
        try:
            checkpoints: Iterator[Any] = iter(connector.sync(request))
            try:
                for checkpoint in checkpoints:
                    episodes = [_for_queue(e, key, None) for e in checkpoint.episodes]
                    result.emitted += len(episodes)
                    metrics.episodes_emitted.inc(len(episodes))
                    if on_episodes is not None:
                        on_episodes(episodes)
                    if not dry:
                        items = [outbox_item(e, origin) for e in episodes]
                        try:
                            result.queued += self.state.put_and_set_cursor(
                                items, kind, name, checkpoint.cursor
                            )
                        except StateError as exc:
                            metrics.errors["ingest"].inc()
                            result.outcome = "queue_error"
                            result.error = self.redactor.scrub(str(exc))
                            break
                        if items and self._worker is not None:
                            self._worker.wake()
                    if self._stopping.is_set():
                        result.interrupted = True
                        break
                    if source.lease_lost:
                        # Another replica took over (our heartbeat could not renew): let it.
                        log.warning("lost the lease for %s; ending this tick", key)
                        result.interrupted = True
                        break
            finally:
                close = getattr(checkpoints, "close", None)
                if callable(close):
                    close()
        except Exception as exc:  # a connector bug must not kill the worker thread
            metrics.errors["sync"].inc()
            result.error = self.redactor.scrub(f"{type(exc).__name__}: {exc}")
            if isinstance(exc, ConnectorError) and exc.reason == "rate_limited":
                # Expected back-pressure, not a fault: the connector checkpointed
                # and the first tick after the limit lifts resumes.
                result.outcome = "rate_limited"
                retry_at = getattr(exc, "retry_at", None)
                if isinstance(retry_at, int | float):
                    result.error += f" (until {_iso(retry_at)})"
            else:
                result.outcome = "sync_error"
            if not isinstance(exc, ConnectorError):
                log.debug("sync raised", exc_info=True)
        if use_lease:
            with self._ticking_lock:
                self._ticking.pop(key, None)
            if not source.lease_lost:
                self._release_to_slot_end(source, log)
        if result.outcome == "ok":
            source.last_success_at = self._clock()
            metrics.last_sync.set(source.last_success_at)
        return self._finish_tick(source, result, started, log)

    def _finish_tick(
        self,
        source: _PullSource,
        result: TickResult,
        started: float,
        log: ContextAdapter,
    ) -> TickResult:
        result.duration = time.monotonic() - started
        if result.outcome != "leased_elsewhere":
            source.series.sync_duration.observe(result.duration)
        source.last_outcome = result.outcome
        source.last_error = result.error
        source.last_episodes = result.emitted
        fields = {
            "episodes": result.emitted,
            "queued": result.queued,
            "duration_ms": round(result.duration * 1000, 1),
            "outcome": result.outcome,
        }
        if result.dry_run:
            fields["dry_run"] = True
        if result.outcome == "leased_elsewhere":
            log.debug("tick skipped: another replica holds this source's lease", extra=fields)
        elif result.outcome == "ok":
            note = " (interrupted by stop)" if result.interrupted else ""
            log.info("tick complete%s", note, extra=fields)
        elif result.outcome == "rate_limited":
            log.warning("tick ended early: %s", result.error, extra=fields)
        else:
            log.error("tick failed: %s", result.error, extra=fields)
        return result

    # ------------------------------------------------------------------ push
    def _push_items(self, entry: SourceEntry, episodes: Sequence[Episode]) -> list[OutboxItem]:
        subject, key = entry.config.subject, entry.key
        origin = _origin(entry.mode, key)
        return [outbox_item(_for_queue(e, key, subject), origin) for e in episodes]

    def _queue(self, entry: SourceEntry, episodes: Sequence[Episode]) -> int:
        items = self._push_items(entry, episodes)
        try:
            added = self.state.put(items)
        except StateError as exc:
            raise EmitError(f"could not queue episodes: {self.redactor.scrub(str(exc))}") from None
        if items and self._worker is not None:
            self._worker.wake()
        return added

    def _queue_once(
        self, entry: SourceEntry, event_key: str, episodes: Sequence[Episode], ttl_seconds: float
    ) -> bool:
        items = self._push_items(entry, episodes)
        try:
            added, new = self.state.put_and_mark(items, event_key, ttl_seconds)
        except StateError as exc:
            raise EmitError(f"could not queue episodes: {self.redactor.scrub(str(exc))}") from None
        if added and self._worker is not None:
            self._worker.wake()
        return new

    def _push_handler(self, push: _PushSource) -> Callable[[Request], Response]:
        entry = push.entry
        kind, name = entry.kind, entry.name
        deliveries = push.series.deliveries
        errors = push.series.handler_errors
        duration = push.series.delivery_duration
        responses = push.series.responses
        receiver = push.receiver
        base_log = self.log.getChild("push")
        state = self.state

        def handle(request: Request) -> Response:
            started = time.monotonic()
            deliveries.inc()
            log = bind(base_log, kind=kind, name=name, request_id=request.request_id)
            ctx = _Ctx(
                runner=self,
                entry=entry,
                kind=kind,
                name=name,
                subject=entry.config.subject,
                dedup=state,
                http=self.http,
                log=log,
                clock=self._clock,
            )
            try:
                response = receiver.handle(request, ctx)
            except Exception as exc:
                errors.inc()
                log.error(
                    "receiver raised %s: %s",
                    type(exc).__name__,
                    self.redactor.scrub(str(exc)),
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                response = Response.json(
                    500, {"error": "handler_threw", "request_id": request.request_id}
                )
            responses(response.status).inc()
            duration.observe(time.monotonic() - started)
            return response

        return handle

    # ------------------------------------------------------------------ describe
    def describe(self) -> dict[str, Any]:
        """What runs and how it is doing; secrets redacted. Safe to print or serve."""
        out = describe_config(self.config)
        out["ready"] = self.ready
        out["replica_id"] = self.replica_id
        if self._server is not None and self._started and not self._stopped:
            host, port = self._server.address
            out["listening"] = f"http://{host}:{port}"
        timers = self._timers
        for item in out["pull"]:
            source = self._pull[item["key"]]
            if timers is not None:
                info = timers.info(item["key"])
                item["next_fire_at"] = _iso(info.next_fire_at)
                item["last_fire_at"] = _iso(info.last_fire_at)
                item["running"] = info.running
                item["skipped"] = info.skipped
            item["last_outcome"] = source.last_outcome
            item["last_error"] = source.last_error
            item["last_success_at"] = _iso(source.last_success_at)
            if source.load_error:
                item["load_error"] = source.load_error
        if self._state is not None and not self._stopped:
            try:
                stats = self._state.stats()
                out["outbox"] = dataclasses.asdict(stats)
                health = self._state.health()
                out["state"]["health"] = {"ok": health.ok, "detail": health.detail}
            except StatewaveRunnerError as exc:
                out["state"]["health"] = {"ok": False, "detail": self.redactor.scrub(str(exc))}
        if self._worker is not None:
            status = self._worker.status()
            out["delivery"] = {
                k: (self.redactor.scrub(v) if isinstance(v, str) else v)
                for k, v in dataclasses.asdict(status).items()
            }
        return json.loads(self.redactor.scrub(json.dumps(out)))  # type: ignore[no-any-return]


@dataclass
class TickResult:
    """What one pull tick did."""

    key: str
    tick_id: str
    dry_run: bool = False
    outcome: str = "ok"
    """ok | load_error | state_error | sync_error | rate_limited | queue_error | leased_elsewhere"""
    emitted: int = 0
    queued: int = 0
    duration: float = 0.0
    error: str | None = None
    interrupted: bool = False


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def describe_config(config: Config, *, now: datetime | None = None) -> dict[str, Any]:
    """What a config would run: schedules with their next 3 fire times, mounts, state, sink.

    Pure (no I/O); secrets redacted. ``Runner.describe()`` adds live status.
    """
    now = now or datetime.now(UTC)
    rc = config.runner
    sw = config.statewave
    if sw.is_file_sink:
        sink = {"kind": "file", "path": sw.file_path}
    else:
        sink = {"kind": "http", "url": redact_url(sw.url)}
        if sw.tenant_id:
            sink["tenant_id"] = sw.tenant_id
    state: dict[str, Any] = {"kind": rc.state.kind}
    if rc.state.kind in ("file", "sqlite"):
        default = "cursors.json" if rc.state.kind == "file" else "state.db"
        state["path"] = rc.state.path or os.path.join(rc.state_dir, default)
    elif rc.state.url:
        state["url"] = redact_url(rc.state.url)
    pull = []
    for entry in config.pull:
        tz = config.timezone_for(entry)
        item: dict[str, Any] = {
            "key": entry.key,
            "kind": entry.kind,
            "name": entry.name,
            "schedule": entry.schedule,
            "timezone": tz or "UTC",
        }
        try:
            sched = parse_schedule(entry.schedule, tz)
            if sched.interval_seconds is not None:
                item["next_fires"] = [f"every {sched.interval_seconds:g}s from start"]
            else:
                item["next_fires"] = [
                    t.isoformat() for t in next_fire_times(entry.schedule, tz, 3, now)
                ]
        except ScheduleError as exc:
            item["next_fires"] = []
            item["schedule_error"] = exc.reason
        if getattr(entry.config, "dry_run", False):
            item["dry_run"] = True
        pull.append(item)
    push = [
        {"key": e.key, "kind": e.kind, "name": e.name, "path": e.mount_path} for e in config.push
    ]
    mounted = ["/healthz", "/readyz"]
    if rc.metrics.enabled:
        mounted.append(rc.metrics.path)
    mounted.extend(e.mount_path for e in config.push)
    return {
        "version": __version__,
        "config": {"path": config.path, "source": config.source},
        "listen": {"host": rc.host, "port": rc.port},
        "state": state,
        "sink": sink,
        "metrics": {
            "enabled": rc.metrics.enabled,
            "path": rc.metrics.path,
            "auth": rc.metrics.auth.kind,
        },
        "mounted": mounted,
        "pull": pull,
        "push": push,
    }
