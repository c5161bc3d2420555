"""The runner's families: exactly the Node runner's, our additions, and their wiring helpers."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from statewave_runner.errors import AuthError, PermanentError, RetryableError
from statewave_runner.metrics import Registry
from statewave_runner.series import DELIVERY_OUTCOMES, RunnerSeries, delivery_outcome
from statewave_runner.state.base import OutboxItem, OutboxStats
from statewave_runner.state.memory import MemoryState
from tests._metrics_oracle import check_openmetrics, check_registry, check_text

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"

# The Node runner's families (packages/runner/src/metrics/registry.ts):
# name -> (type, help, label names, bucket upper bounds).
NODE_FAMILIES: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "statewave_runner_pull_ticks_total": (
        "counter",
        "Total pull-source schedule ticks fired (success + failure).",
        ("kind", "name"),
        (),
    ),
    "statewave_runner_pull_episodes_ingested_total": (
        "counter",
        "Episodes successfully posted to the Statewave server (excludes dry-run ticks).",
        ("kind", "name"),
        (),
    ),
    "statewave_runner_pull_episodes_emitted_total": (
        "counter",
        "Episodes returned by `connector.sync()` (whether or not they made it to ingest).",
        ("kind", "name"),
        (),
    ),
    "statewave_runner_pull_errors_total": (
        "counter",
        "Pull-source errors, partitioned by failure reason (load / sync / ingest).",
        ("kind", "name", "reason"),
        (),
    ),
    "statewave_runner_pull_last_sync_timestamp_seconds": (
        "gauge",
        "Unix timestamp of the most recent successful sync per source.",
        ("kind", "name"),
        (),
    ),
    "statewave_runner_pull_sync_duration_seconds": (
        "histogram",
        "Duration of `connector.sync()` per pull source.",
        ("kind", "name"),
        (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    ),
    "statewave_runner_push_deliveries_total": (
        "counter",
        "Total HTTP requests received by each push receiver.",
        ("kind", "name"),
        (),
    ),
    "statewave_runner_push_responses_total": (
        "counter",
        "Push receiver responses, partitioned by HTTP status code.",
        ("kind", "name", "status"),
        (),
    ),
    "statewave_runner_push_handler_errors_total": (
        "counter",
        "Times a push receiver's handler threw an exception.",
        ("kind", "name"),
        (),
    ),
    "statewave_runner_push_delivery_duration_seconds": (
        "histogram",
        "Wall-clock time the push receiver spent handling each delivery.",
        ("kind", "name"),
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    ),
    "statewave_runner_info": (
        "gauge",
        "Static metadata about this runner instance (always 1).",
        ("version", "hostname"),
        (),
    ),
    "statewave_runner_schedules_armed": (
        "gauge",
        "Number of pull-source schedules currently armed.",
        (),
        (),
    ),
    "statewave_runner_push_receivers_mounted": (
        "gauge",
        "Number of push receivers mounted on the HTTP multiplex.",
        (),
        (),
    ),
    "statewave_runner_ready": ("gauge", "1 when /readyz returns 200, 0 otherwise.", (), ()),
}

# Ours (the metrics issue and the delivery issue): name -> (type, label names).
ADDITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "statewave_runner_pull_ticks_skipped_total": ("counter", ("kind", "name")),
    "statewave_runner_pull_next_fire_timestamp_seconds": ("gauge", ("kind", "name")),
    "statewave_runner_outbox_depth": ("gauge", ()),
    "statewave_runner_outbox_in_flight": ("gauge", ()),
    "statewave_runner_outbox_oldest_age_seconds": ("gauge", ()),
    "statewave_runner_outbox_dead_letter": ("gauge", ()),
    "statewave_runner_delivery_attempts_total": ("counter", ("outcome",)),
    "statewave_runner_delivery_batch_size": ("histogram", ()),
    "statewave_runner_delivery_duration_seconds": ("histogram", ()),
}

# The "Recommended alerts" of the Node runner's README, verbatim.
NODE_ALERT_EXPRESSIONS = [
    "time() - statewave_runner_pull_last_sync_timestamp_seconds > 1800",
    "rate(statewave_runner_pull_errors_total[15m]) > 0.1",
    "rate(statewave_runner_push_deliveries_total[6h]) == 0",
    "statewave_runner_ready == 0",
]

PROCESS_FAMILIES = {
    "process_cpu_seconds_total",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
    "python_info",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
}


def _series(default_metrics: bool = False) -> RunnerSeries:
    s = RunnerSeries(
        Registry(), version="0.1.0", hostname="host-1", default_metrics=default_metrics
    )
    s.register_pull("github", "main-repo")
    s.register_push("slack", "team")
    return s


def _text_families(registry: Registry) -> dict[str, tuple[str, str, set[str], list[float]]]:
    """0.0.4 scrape -> {exposed family name: (type, help, label names, finite buckets)}."""
    body = registry.expose_text()
    check_text(body)
    out = {}
    lines = body.decode().splitlines()
    for family in text_string_to_metric_families(body.decode()):
        exposed = next(
            line.split()[2]
            for line in lines
            if line.startswith("# TYPE ")
            and line.split()[2] in (family.name, family.name + "_total")
        )
        labels: set[str] = set()
        buckets: list[float] = []
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
            if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf":
                le = float(sample.labels["le"])
                if le not in buckets:
                    buckets.append(le)
        out[exposed] = (family.type, family.documentation, labels, buckets)
    return out


def test_node_families_match_exactly() -> None:
    s = _series()
    s.push("slack", "team").responses(200).inc()  # type: ignore[union-attr]
    families = _text_families(s.registry)
    for name, (type_, help, labels, buckets) in NODE_FAMILIES.items():
        assert name in families, name
        got_type, got_help, got_labels, got_buckets = families[name]
        assert (got_type, got_help, got_labels) == (type_, help, set(labels)), name
        assert got_buckets == [float(b) for b in buckets], name
    for name, (type_, labels) in ADDITIONS.items():
        assert name in families, name
        assert (families[name][0], families[name][2]) == (type_, set(labels)), name
    assert set(families) == set(NODE_FAMILIES) | set(ADDITIONS)


def test_label_order_and_le_rendering_follow_prom_client() -> None:
    body = _series().registry.expose_text().decode()
    assert (
        'statewave_runner_pull_errors_total{kind="github",name="main-repo",reason="load"} 0\n'
        in body
    )
    assert (
        "statewave_runner_pull_sync_duration_seconds_bucket"
        '{kind="github",name="main-repo",le="1"} 0\n' in body
    )
    assert (
        "statewave_runner_push_delivery_duration_seconds_bucket"
        '{kind="slack",name="team",le="0.005"} 0\n' in body
    )
    assert 'statewave_runner_info{version="0.1.0",hostname="host-1"} 1\n' in body


def test_every_configured_source_appears_with_zeroes_from_the_first_scrape() -> None:
    before = time.time()
    s = _series()
    after = time.time()
    samples = check_registry(s.registry)
    gh = (("kind", "github"), ("name", "main-repo"))
    sl = (("kind", "slack"), ("name", "team"))
    for name in (
        "statewave_runner_pull_ticks_total",
        "statewave_runner_pull_episodes_emitted_total",
        "statewave_runner_pull_episodes_ingested_total",
        "statewave_runner_pull_ticks_skipped_total",
        "statewave_runner_pull_next_fire_timestamp_seconds",
        "statewave_runner_pull_sync_duration_seconds_count",
    ):
        assert samples[(name, gh)] == 0, name
    # Not 0: the Node README's stale alert would fire on every restart.
    assert before <= samples[("statewave_runner_pull_last_sync_timestamp_seconds", gh)] <= after
    for reason in ("load", "sync", "ingest"):
        key = ("statewave_runner_pull_errors_total", (*gh, ("reason", reason)))
        assert samples[key] == 0
    for name in (
        "statewave_runner_push_deliveries_total",
        "statewave_runner_push_handler_errors_total",
        "statewave_runner_push_delivery_duration_seconds_count",
    ):
        assert samples[(name, sl)] == 0, name
    for outcome in DELIVERY_OUTCOMES:
        key = ("statewave_runner_delivery_attempts_total", (("outcome", outcome),))
        assert samples[key] == 0
    assert samples[("statewave_runner_ready", ())] == 0
    assert samples[("statewave_runner_info", (("hostname", "host-1"), ("version", "0.1.0")))] == 1


def test_handles_drive_the_series() -> None:
    s = _series()
    pull = s.register_pull("github", "main-repo")
    assert s.register_pull("github", "main-repo") is pull  # idempotent
    pull.ticks.inc()
    pull.episodes_emitted.inc(5)
    pull.errors["sync"].inc()
    pull.sync_duration.observe(0.7)
    pull.ticks_skipped.inc()
    pull.next_fire.set(1_900_000_000)
    s.mark_synced("github", "main-repo", when=1_800_000_000)
    push = s.register_push("slack", "team")
    push.deliveries.inc()
    push.responses(401).inc()
    push.responses("401").inc()
    push.delivery_duration.observe(0.003)
    s.schedules_armed.set(1)
    s.push_receivers_mounted.set(1)
    s.set_ready(True)
    s.count_ingested("github/main-repo", 4)
    s.count_ingested("slack/team", 9)  # push origin: no pull counter to bump
    s.count_ingested("github/gone", 9)  # not configured any more
    s.observe_delivery(batch_size=4, seconds=0.12)
    s.observe_delivery(batch_size=4, seconds=10.5, error=RetryableError("503"))

    v = check_registry(s.registry)
    gh = (("kind", "github"), ("name", "main-repo"))
    sl = (("kind", "slack"), ("name", "team"))
    assert v[("statewave_runner_pull_ticks_total", gh)] == 1
    assert v[("statewave_runner_pull_episodes_emitted_total", gh)] == 5
    assert v[("statewave_runner_pull_episodes_ingested_total", gh)] == 4
    assert v[("statewave_runner_pull_errors_total", (*gh, ("reason", "sync")))] == 1
    assert v[("statewave_runner_pull_ticks_skipped_total", gh)] == 1
    assert v[("statewave_runner_pull_next_fire_timestamp_seconds", gh)] == 1_900_000_000
    assert v[("statewave_runner_pull_last_sync_timestamp_seconds", gh)] == 1_800_000_000
    bucket_1s = tuple(sorted((*gh, ("le", "1.0"))))
    assert v[("statewave_runner_pull_sync_duration_seconds_bucket", bucket_1s)] == 1
    assert v[("statewave_runner_push_responses_total", (*sl, ("status", "401")))] == 2
    assert v[("statewave_runner_push_delivery_duration_seconds_sum", sl)] == 0.003
    assert v[("statewave_runner_ready", ())] == 1
    assert v[("statewave_runner_delivery_attempts_total", (("outcome", "success"),))] == 1
    assert v[("statewave_runner_delivery_attempts_total", (("outcome", "retry"),))] == 1
    assert v[("statewave_runner_delivery_batch_size_count", ())] == 2
    assert v[("statewave_runner_delivery_duration_seconds_bucket", (("le", "30.0"),))] == 2
    assert v[("statewave_runner_delivery_duration_seconds_bucket", (("le", "10.0"),))] == 1
    assert not any(k[1] and ("name", "gone") in k[1] for k in v)


def test_delivery_outcomes() -> None:
    assert delivery_outcome(None) == "success"
    assert delivery_outcome(RetryableError("x")) == "retry"
    assert delivery_outcome(TimeoutError()) == "retry"
    assert delivery_outcome(PermanentError("x", index=3)) == "rejected"
    assert delivery_outcome(AuthError("x", status=401)) == "auth_failed"
    assert set(DELIVERY_OUTCOMES) == {"success", "retry", "rejected", "auth_failed"}


def test_unregister_removes_every_series_of_a_source() -> None:
    s = _series()
    s.push("slack", "team").responses(200).inc()  # type: ignore[union-attr]
    s.unregister_pull("github", "main-repo")
    s.unregister_push("slack", "team")
    assert s.pull("github", "main-repo") is None
    samples = check_registry(s.registry)
    assert not any(("kind", "github") in k[1] or ("kind", "slack") in k[1] for k in samples)


def test_outbox_gauges_come_from_the_state_backend_at_scrape_time() -> None:
    now = [1_000.0]
    state = MemoryState(clock=lambda: now[0])
    s = _series()
    s.watch_outbox(state.stats)
    v = check_registry(s.registry)
    assert v[("statewave_runner_outbox_depth", ())] == 0
    assert v[("statewave_runner_outbox_oldest_age_seconds", ())] == 0

    state.put([OutboxItem(f"k{i}", "{}", "github/main-repo") for i in range(5)])
    now[0] += 30
    claimed = state.claim(2, lease_seconds=60)
    state.dead_letter(claimed[:1], "422: too long")
    v = check_registry(s.registry)
    assert v[("statewave_runner_outbox_depth", ())] == 4
    assert v[("statewave_runner_outbox_in_flight", ())] == 1
    assert v[("statewave_runner_outbox_dead_letter", ())] == 1
    assert v[("statewave_runner_outbox_oldest_age_seconds", ())] == 30
    state.close()


def test_outbox_stats_failure_shows_nan_and_scrape_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = _series()
    calls = []

    def stats() -> OutboxStats:
        calls.append(1)
        if len(calls) > 2:  # check_registry scrapes twice per call
            raise ConnectionError("postgres down")
        return OutboxStats(depth=3, in_flight=0, dead=0, oldest_age_seconds=2.0)

    s.watch_outbox(stats)
    assert check_registry(s.registry)[("statewave_runner_outbox_depth", ())] == 3
    v = check_text(s.registry.expose_text())
    check_openmetrics(s.registry.expose_openmetrics())
    assert math.isnan(v[("statewave_runner_outbox_depth", ())])
    assert "reading outbox stats failed" in caplog.text


def test_default_metrics_switch() -> None:
    with_defaults = _text_families(_series(default_metrics=True).registry)
    assert set(with_defaults) >= PROCESS_FAMILIES
    without = _text_families(_series(default_metrics=False).registry)
    assert not PROCESS_FAMILIES & set(without)


def test_two_runners_in_one_process_keep_separate_series() -> None:
    a, b = _series(), _series()
    a.register_pull("github", "main-repo").ticks.inc()
    assert (
        a.registry.get_sample_value(
            "statewave_runner_pull_ticks_total", {"kind": "github", "name": "main-repo"}
        )
        == 1
    )
    assert (
        b.registry.get_sample_value(
            "statewave_runner_pull_ticks_total", {"kind": "github", "name": "main-repo"}
        )
        == 0
    )


# --------------------------------------------------------------------------- alerts and docs

_CLAUSE_RE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


def referenced_series(expr: str) -> dict[str, set[str]]:
    """Series names an expression selects, with the label names its matchers use."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\boffset\s+\w+", "", s)
    s = _CLAUSE_RE.sub("", s)
    found: dict[str, set[str]] = {}
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", s):
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # the exponent of a number such as 1e3
        word, matchers = m.group(1), m.group(2) or ""
        if word in _KEYWORDS or s[m.end(1) :].lstrip().startswith("("):
            continue
        found.setdefault(word, set()).update(re.findall(r"([a-zA-Z_]\w*)\s*[=!]", matchers))
    return found


def _exported() -> dict[str, set[str]]:
    s = _series(default_metrics=True)
    s.push("slack", "team").responses(500).inc()  # type: ignore[union-attr]
    samples = check_text(s.registry.expose_text())
    out: dict[str, set[str]] = {}
    for name, labels in samples:
        out.setdefault(name, set()).update(k for k, _ in labels)
    return out


def _doc_alert_expressions() -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```ya?ml\n(.*?)```", text, flags=re.S)
    exprs = []
    for block in blocks:
        exprs += [e.strip().strip("'\"") for e in re.findall(r"^\s*expr:\s*(.+)$", block, re.M)]
    return exprs


def test_referenced_series_parser() -> None:
    assert referenced_series(
        'sum by (kind) (rate(foo_total{status=~"5..",kind!="x"}[5m])) / 1e3 > bar offset 5m'
    ) == {"foo_total": {"status", "kind"}, "bar": set()}


def test_node_stale_alert_does_not_fire_right_after_start() -> None:
    s = _series()
    last = s.registry.get_sample_value(
        "statewave_runner_pull_last_sync_timestamp_seconds", {"kind": "github", "name": "main-repo"}
    )
    assert last is not None and not time.time() - last > 1800
    s.register_pull("gmail", "inbox", last_sync=1_700_000_000)  # e.g. known from elsewhere
    assert (
        s.registry.get_sample_value(
            "statewave_runner_pull_last_sync_timestamp_seconds", {"kind": "gmail", "name": "inbox"}
        )
        == 1_700_000_000
    )


def test_node_readme_alerts_reference_only_exported_series() -> None:
    exported = _exported()
    for expr in NODE_ALERT_EXPRESSIONS:
        for name, labels in referenced_series(expr).items():
            assert name in exported, (expr, name)
            assert labels <= exported[name], (expr, name, labels)


def test_documented_alerts_are_the_node_ones_plus_ours_and_reference_exported_series() -> None:
    exprs = _doc_alert_expressions()
    assert set(NODE_ALERT_EXPRESSIONS) <= set(exprs)
    assert len(exprs) > len(NODE_ALERT_EXPRESSIONS)
    exported = _exported()
    for expr in exprs:
        refs = referenced_series(expr)
        assert refs, expr
        for name, labels in refs.items():
            assert name in exported, (expr, name)
            assert labels <= exported[name], (expr, name, labels)


def test_docs_describe_every_exported_family() -> None:
    text = DOCS.read_text(encoding="utf-8")
    families = _text_families(_series(default_metrics=True).registry)
    for name in families:
        assert f"`{name}`" in text, f"docs/metrics.md does not document {name}"
    for name in ADDITIONS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}`"))
        assert "addition" in row.lower(), f"{name} is not marked as our addition"
