"""Metrics speed: our registry against prometheus_client, in one run, as ratios.

    .venv/bin/python bench/metrics.py            # quick (about 15 s)
    .venv/bin/python bench/metrics.py --full     # longer measurements, steadier numbers

1. Render: the same families, children and values in both libraries; ours
   ``Registry.expose_text()`` against ``prometheus_client.generate_latest``
   (and the OpenMetrics renderers). Two layouts: "flat" (200 sources x 10
   counter/gauge samples = 2,000 samples) and "runner" (the runner's real
   families for 100 pull sources and 100 push receivers, histograms included).
   prometheus_client's ``_created`` series are switched off so both bodies
   hold the same samples; the bench checks that they parse to the same set.
   Goal: ours >= 3x faster.
2. Hot path: ns per ``child.inc()``, per ``family.labels(k, n).inc()`` and per
   histogram ``observe()``. Goal: ours <= 1x prometheus_client's cost.

Timings are the best of several batches (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import timeit
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PCounter
from prometheus_client import Gauge as PGauge
from prometheus_client import Histogram as PHistogram
from prometheus_client.openmetrics.exposition import generate_latest as p_generate_om
from prometheus_client.parser import text_string_to_metric_families

from statewave_runner.metrics import Registry
from statewave_runner.series import (
    PULL_ERROR_REASONS,
    PULL_SYNC_BUCKETS,
    PUSH_DELIVERY_BUCKETS,
    RunnerSeries,
)

prometheus_client.disable_created_metrics()


# --------------------------------------------------------------------------- layouts


def build_flat(sources: int, seed: int = 1) -> tuple[Registry, CollectorRegistry]:
    """``sources`` x (8 counters + 2 gauges), labelled kind/name, same values in both."""
    rnd = random.Random(seed)
    ours, theirs = Registry(), CollectorRegistry()
    kn = ("kind", "name")
    pairs = []
    for i in range(8):
        pairs.append(
            (
                ours.counter(f"bench_c{i}_total", f"Counter {i}.", kn),
                PCounter(f"bench_c{i}_total", f"Counter {i}.", kn, registry=theirs),
            )
        )
    for i in range(2):
        pairs.append(
            (
                ours.gauge(f"bench_g{i}", f"Gauge {i}.", kn),
                PGauge(f"bench_g{i}", f"Gauge {i}.", kn, registry=theirs),
            )
        )
    for s in range(sources):
        labels = (("github", "slack", "gmail", "notion")[s % 4], f"source-{s}")
        for a, b in pairs:
            value = float(rnd.randrange(0, 100_000))
            if isinstance(b, PGauge):
                a.labels(*labels).set(value)  # type: ignore[union-attr]
                b.labels(*labels).set(value)
            else:
                a.labels(*labels).inc(value)  # type: ignore[union-attr]
                b.labels(*labels).inc(value)
    return ours, theirs


def build_runner(sources: int, seed: int = 2) -> tuple[Registry, CollectorRegistry]:
    """The runner's own families: half the sources pull, half push; random activity."""
    rnd = random.Random(seed)
    ours_series = RunnerSeries(Registry(), version="0.1.0", hostname="bench", default_metrics=False)
    ours = ours_series.registry
    t = CollectorRegistry()
    kn = ("kind", "name")
    # prometheus_client mirror of series.py (same names, labels, buckets).
    p_ticks = PCounter("statewave_runner_pull_ticks_total", "x", kn, registry=t)
    p_ingested = PCounter("statewave_runner_pull_episodes_ingested_total", "x", kn, registry=t)
    p_emitted = PCounter("statewave_runner_pull_episodes_emitted_total", "x", kn, registry=t)
    p_errors = PCounter("statewave_runner_pull_errors_total", "x", (*kn, "reason"), registry=t)
    p_last = PGauge("statewave_runner_pull_last_sync_timestamp_seconds", "x", kn, registry=t)
    p_sync = PHistogram(
        "statewave_runner_pull_sync_duration_seconds",
        "x",
        kn,
        buckets=PULL_SYNC_BUCKETS,
        registry=t,
    )
    p_skipped = PCounter("statewave_runner_pull_ticks_skipped_total", "x", kn, registry=t)
    p_next = PGauge("statewave_runner_pull_next_fire_timestamp_seconds", "x", kn, registry=t)
    p_deliv = PCounter("statewave_runner_push_deliveries_total", "x", kn, registry=t)
    p_resp = PCounter("statewave_runner_push_responses_total", "x", (*kn, "status"), registry=t)
    p_herr = PCounter("statewave_runner_push_handler_errors_total", "x", kn, registry=t)
    p_dur = PHistogram(
        "statewave_runner_push_delivery_duration_seconds",
        "x",
        kn,
        buckets=PUSH_DELIVERY_BUCKETS,
        registry=t,
    )
    for s in range(sources):
        kind = ("github", "gmail", "notion")[s % 3] if s % 2 == 0 else ("slack", "zendesk")[s % 2]
        name = f"source-{s}"
        if s % 2 == 0:
            h = ours_series.register_pull(kind, name)
            n = rnd.randrange(1, 500)
            for a, b in ((h.ticks, p_ticks), (h.episodes_emitted, p_emitted)):
                a.inc(n)
                b.labels(kind, name).inc(n)
            h.episodes_ingested.inc(n - 1)
            p_ingested.labels(kind, name).inc(n - 1)
            for reason in PULL_ERROR_REASONS:
                e = rnd.randrange(0, 3)
                h.errors[reason].inc(e)
                p_errors.labels(kind, name, reason).inc(e)
            ts = 1.8e9 + rnd.random() * 1000
            h.last_sync.set(ts)
            p_last.labels(kind, name).set(ts)
            h.next_fire.set(ts + 60)
            p_next.labels(kind, name).set(ts + 60)
            p_skipped.labels(kind, name)
            for _ in range(20):
                v = rnd.expovariate(0.2)
                h.sync_duration.observe(v)
                p_sync.labels(kind, name).observe(v)
        else:
            ph = ours_series.register_push(kind, name)
            n = rnd.randrange(1, 500)
            ph.deliveries.inc(n)
            p_deliv.labels(kind, name).inc(n)
            ph.responses(200).inc(n)
            p_resp.labels(kind, name, "200").inc(n)
            p_herr.labels(kind, name)
            for _ in range(20):
                v = rnd.expovariate(30)
                ph.delivery_duration.observe(v)
                p_dur.labels(kind, name).observe(v)
    return ours, _only_shared_families(t, ours)


def _only_shared_families(theirs: CollectorRegistry, ours: Registry) -> CollectorRegistry:
    """Add to ``theirs`` the runner-level families ours has (info, gauges, delivery series)."""
    wanted = {f.name for f in ours.collect()}
    have = {m.name for m in theirs.collect()}
    for family in ours.collect():
        if family.name in have or family.name not in wanted:
            continue
        labels = sorted({k for s in family.samples for k in s.labels} - {"le"})
        if family.type == "counter":
            c = PCounter(family.name, family.help, labels, registry=theirs)
            for s in family.samples:
                (c.labels(**s.labels) if labels else c).inc(s.value)
        elif family.type == "gauge":
            g = PGauge(family.name, family.help, labels, registry=theirs)
            for s in family.samples:
                (g.labels(**s.labels) if labels else g).set(s.value)
        else:
            bounds = sorted(
                {float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")}
            )
            PHistogram(family.name, family.help, labels, buckets=bounds, registry=theirs)
    return theirs


# --------------------------------------------------------------------------- checks and timing


def _samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    out = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            if "le" in labels:
                labels["le"] = repr(float(labels["le"]))
            out.add((s.name, tuple(sorted(labels.items())), round(s.value, 6)))
    return out


def best_per_call(fn: Callable[[], object], seconds: float, batches: int = 5) -> float:
    """Seconds per call: the fastest of ``batches`` batches lasting ~seconds/batches each."""
    fn()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < 0.05:
        fn()
        n += 1
    per = (time.perf_counter() - start) / n
    number = max(1, int(seconds / batches / per))
    return min(timeit.repeat(fn, number=number, repeat=batches)) / number


def bench_render(label: str, ours: Registry, theirs: CollectorRegistry, seconds: float) -> float:
    ours_text = ours.expose_text().decode()
    theirs_text = prometheus_client.generate_latest(theirs).decode()
    a, b = _samples(ours_text), _samples(theirs_text)
    if a != b:
        print(f"  !! {label}: outputs differ: {len(a ^ b)} samples", file=sys.stderr)
        sys.exit(1)
    n = len(a)
    ours_t = best_per_call(ours.expose_text, seconds)
    theirs_t = best_per_call(lambda: prometheus_client.generate_latest(theirs), seconds)
    ours_om = best_per_call(ours.expose_openmetrics, seconds)
    theirs_om = best_per_call(lambda: p_generate_om(theirs), seconds)
    print(f"render [{label}] {n} samples, same samples in both bodies: yes")
    print(
        f"  text 0.0.4   ours {ours_t * 1e3:8.3f} ms   prometheus_client {theirs_t * 1e3:8.3f} ms"
        f"   ours is {theirs_t / ours_t:5.2f}x faster (goal >= 3x)"
    )
    print(
        f"  OpenMetrics  ours {ours_om * 1e3:8.3f} ms   prometheus_client {theirs_om * 1e3:8.3f} ms"
        f"   ours is {theirs_om / ours_om:5.2f}x faster"
    )
    return theirs_t / ours_t


def bench_hot_path(seconds: float) -> list[float]:
    ours, theirs = Registry(), CollectorRegistry()
    oc = ours.counter("hot_ops_total", "x", ["kind", "name"])
    tc = PCounter("hot_ops_total", "x", ["kind", "name"], registry=theirs)
    oh = ours.histogram("hot_seconds", "x", ["kind", "name"], buckets=PUSH_DELIVERY_BUCKETS)
    th = PHistogram(
        "hot_seconds", "x", ["kind", "name"], buckets=PUSH_DELIVERY_BUCKETS, registry=theirs
    )
    o_child, t_child = oc.labels("github", "main"), tc.labels("github", "main")
    o_hchild, t_hchild = oh.labels("github", "main"), th.labels("github", "main")

    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("child.inc()", o_child.inc, t_child.inc),
        (
            "labels(k, n).inc()",
            lambda: oc.labels("github", "main").inc(),
            lambda: tc.labels("github", "main").inc(),
        ),
        ("child.observe(0.07)", lambda: o_hchild.observe(0.07), lambda: t_hchild.observe(0.07)),
    ]
    ratios = []
    print("hot path (ns per operation, single thread)")
    for name, ours_fn, theirs_fn in cases:
        o = best_per_call(ours_fn, seconds)
        t = best_per_call(theirs_fn, seconds)
        ratios.append(o / t)
        print(
            f"  {name:<22} ours {o * 1e9:7.1f} ns   prometheus_client {t * 1e9:7.1f} ns"
            f"   cost ratio ours/theirs {o / t:4.2f}x (goal <= 1x)"
        )
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    ap.add_argument("--full", action="store_true", help="5 s per measurement")
    ap.add_argument("--sources", type=int, default=200, help="sources per layout (default 200)")
    args = ap.parse_args()
    seconds = 5.0 if args.full else args.seconds
    print(
        f"python {sys.version.split()[0]}, prometheus_client {version('prometheus_client')},"
        f" {seconds:g} s per measurement"
    )
    bench_render("flat", *build_flat(args.sources), seconds)
    bench_render("runner", *build_runner(args.sources), seconds)
    bench_hot_path(seconds)


if __name__ == "__main__":
    main()
