"""The registry and its exposition, checked against exact text and three oracles."""

from __future__ import annotations

import gzip
import math
import os
import resource
import threading

import pytest
from prometheus_client import CollectorRegistry, gc_collector, platform_collector, process_collector

from statewave_runner.metrics import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    MetricError,
    ProcessCollector,
    PythonCollector,
    Registry,
    _fmt_canonical,
    _fmt_text,
    accepts_gzip,
    negotiate,
    register_default_collectors,
)
from tests._metrics_oracle import check_openmetrics, check_registry, check_text

# --------------------------------------------------------------------------- exact text


def test_counter_exact_text_both_formats() -> None:
    r = Registry()
    c = r.counter("app_ticks_total", "Ticks fired.", ["kind", "name"])
    c.labels("github", "main").inc()
    c.labels(kind="slack", name="team").inc(2.5)
    plain = r.counter("app_restarts", "Restarts.")
    plain.inc()
    assert r.expose_text().decode() == (
        "# HELP app_ticks_total Ticks fired.\n"
        "# TYPE app_ticks_total counter\n"
        'app_ticks_total{kind="github",name="main"} 1\n'
        'app_ticks_total{kind="slack",name="team"} 2.5\n'
        "# HELP app_restarts_total Restarts.\n"
        "# TYPE app_restarts_total counter\n"
        "app_restarts_total 1\n"
    )
    assert r.expose_openmetrics().decode() == (
        "# TYPE app_ticks counter\n"
        "# HELP app_ticks Ticks fired.\n"
        'app_ticks_total{kind="github",name="main"} 1.0\n'
        'app_ticks_total{kind="slack",name="team"} 2.5\n'
        "# TYPE app_restarts counter\n"
        "# HELP app_restarts Restarts.\n"
        "app_restarts_total 1.0\n"
        "# EOF\n"
    )
    check_registry(r)


def test_gauge_exact_text_with_unit_and_specials() -> None:
    r = Registry()
    g = r.gauge("app_age_seconds", "Age.", unit="seconds")
    g.set(1732545600.25)
    s = r.gauge("app_state", "State.", ["which"])
    s.labels("inf").set(math.inf)
    s.labels("neginf").set(-math.inf)
    s.labels("nan").set(math.nan)
    s.labels("neg").dec(3)
    s.labels("big").set(1e22)
    assert r.expose_text().decode() == (
        "# HELP app_age_seconds Age.\n"
        "# TYPE app_age_seconds gauge\n"
        "app_age_seconds 1732545600.25\n"
        "# HELP app_state State.\n"
        "# TYPE app_state gauge\n"
        'app_state{which="inf"} +Inf\n'
        'app_state{which="neginf"} -Inf\n'
        'app_state{which="nan"} NaN\n'
        'app_state{which="neg"} -3\n'
        'app_state{which="big"} 1e+22\n'
    )
    assert r.expose_openmetrics().decode() == (
        "# TYPE app_age_seconds gauge\n"
        "# UNIT app_age_seconds seconds\n"
        "# HELP app_age_seconds Age.\n"
        "app_age_seconds 1732545600.25\n"
        "# TYPE app_state gauge\n"
        "# HELP app_state State.\n"
        'app_state{which="inf"} +Inf\n'
        'app_state{which="neginf"} -Inf\n'
        'app_state{which="nan"} NaN\n'
        'app_state{which="neg"} -3.0\n'
        'app_state{which="big"} 1e+22\n'
        "# EOF\n"
    )
    samples = check_registry(r)
    assert samples[("app_state", (("which", "inf"),))] == math.inf
    assert math.isnan(samples[("app_state", (("which", "nan"),))])


def test_histogram_exact_text() -> None:
    r = Registry()
    h = r.histogram(
        "app_sync_seconds", "Sync time.", ["kind"], buckets=[0.5, 1, 2.5], unit="seconds"
    )
    child = h.labels("github")
    for v in (0.1, 0.5, 0.7, 2.0, 7.0):
        child.observe(v)
    assert r.expose_text().decode() == (
        "# HELP app_sync_seconds Sync time.\n"
        "# TYPE app_sync_seconds histogram\n"
        'app_sync_seconds_bucket{kind="github",le="0.5"} 2\n'
        'app_sync_seconds_bucket{kind="github",le="1"} 3\n'
        'app_sync_seconds_bucket{kind="github",le="2.5"} 4\n'
        'app_sync_seconds_bucket{kind="github",le="+Inf"} 5\n'
        'app_sync_seconds_sum{kind="github"} 10.3\n'
        'app_sync_seconds_count{kind="github"} 5\n'
    )
    assert r.expose_openmetrics().decode() == (
        "# TYPE app_sync_seconds histogram\n"
        "# UNIT app_sync_seconds seconds\n"
        "# HELP app_sync_seconds Sync time.\n"
        'app_sync_seconds_bucket{kind="github",le="0.5"} 2\n'
        'app_sync_seconds_bucket{kind="github",le="1.0"} 3\n'
        'app_sync_seconds_bucket{kind="github",le="2.5"} 4\n'
        'app_sync_seconds_bucket{kind="github",le="+Inf"} 5\n'
        'app_sync_seconds_count{kind="github"} 5\n'
        'app_sync_seconds_sum{kind="github"} 10.3\n'
        "# EOF\n"
    )
    check_registry(r)


def test_empty_histograms() -> None:
    r = Registry()
    r.histogram("app_empty_seconds", "Nothing yet.", buckets=[1, 5])
    r.histogram("app_unused_seconds", "No children yet.", ["kind"])
    assert r.expose_text().decode() == (
        "# HELP app_empty_seconds Nothing yet.\n"
        "# TYPE app_empty_seconds histogram\n"
        'app_empty_seconds_bucket{le="1"} 0\n'
        'app_empty_seconds_bucket{le="5"} 0\n'
        'app_empty_seconds_bucket{le="+Inf"} 0\n'
        "app_empty_seconds_sum 0\n"
        "app_empty_seconds_count 0\n"
        "# HELP app_unused_seconds No children yet.\n"
        "# TYPE app_unused_seconds histogram\n"
    )
    assert r.expose_openmetrics().decode() == (
        "# TYPE app_empty_seconds histogram\n"
        "# HELP app_empty_seconds Nothing yet.\n"
        'app_empty_seconds_bucket{le="1.0"} 0\n'
        'app_empty_seconds_bucket{le="5.0"} 0\n'
        'app_empty_seconds_bucket{le="+Inf"} 0\n'
        "app_empty_seconds_count 0\n"
        "app_empty_seconds_sum 0.0\n"
        "# TYPE app_unused_seconds histogram\n"
        "# HELP app_unused_seconds No children yet.\n"
        "# EOF\n"
    )
    check_registry(r)


def test_escaping_of_label_values_and_help() -> None:
    r = Registry()
    c = r.counter("app_events_total", 'Help with \\ backslash,\nnewline and "quotes".', ["v"])
    c.labels('a\\b"c\nd').inc()
    c.labels("ünïcödé ✓").inc()
    c.labels("\udcff lone surrogate").inc()
    assert r.expose_text().decode() == (
        '# HELP app_events_total Help with \\\\ backslash,\\nnewline and "quotes".\n'
        "# TYPE app_events_total counter\n"
        'app_events_total{v="a\\\\b\\"c\\nd"} 1\n'
        'app_events_total{v="ünïcödé ✓"} 1\n'
        'app_events_total{v="? lone surrogate"} 1\n'
    )
    om = r.expose_openmetrics().decode()
    assert '# HELP app_events Help with \\\\ backslash,\\nnewline and \\"quotes\\".\n' in om
    samples = check_registry(r)
    assert samples[("app_events_total", (("v", 'a\\b"c\nd'),))] == 1
    # The parsers give the HELP text back unescaped.
    from prometheus_client.parser import text_string_to_metric_families

    (family,) = text_string_to_metric_families(r.expose_text().decode())
    assert family.documentation == 'Help with \\ backslash,\nnewline and "quotes".'


def test_number_formats() -> None:
    # 0.0.4 prints numbers as prom-client does; OpenMetrics le values are canonical.
    assert [_fmt_text(v) for v in (1.0, 0.5, 300.0, 0.005, 1e21, math.inf)] == [
        "1",
        "0.5",
        "300",
        "0.005",
        "1e+21",
        "+Inf",
    ]
    canonical = {
        0.0: "0.0",
        0.001: "0.001",
        0.95: "0.95",
        1.0: "1.0",
        10.0: "10.0",
        1e-10: "1e-10",
        1e-05: "1e-05",
        0.0001: "0.0001",
        100000.0: "100000.0",
        1e6: "1e+06",
        1234567.0: "1.234567e+06",
        1e10: "1e+10",
        1.1e23: "1.1e+23",
        math.inf: "+Inf",
    }
    assert {v: _fmt_canonical(v) for v in canonical} == canonical
    from prometheus_client.utils import floatToGoString

    for v in (*canonical, 2.5e7, 123456789.0, 0.25, 60.0):
        assert _fmt_canonical(v) == floatToGoString(v), v


# --------------------------------------------------------------------------- API rules


def test_names_and_labels_are_validated() -> None:
    r = Registry()
    with pytest.raises(MetricError):
        r.counter("bad-name", "x")
    with pytest.raises(MetricError):
        r.gauge("ok", "x", ["bad-label"])
    with pytest.raises(MetricError):
        r.gauge("ok2", "x", ["__reserved"])
    with pytest.raises(MetricError):
        r.gauge("ok3", "x", ["a", "a"])
    with pytest.raises(MetricError):
        r.gauge("ok4", "x", "kind")  # a string, not a list of names
    with pytest.raises(MetricError):
        r.histogram("h", "x", ["le"])
    with pytest.raises(MetricError):
        r.histogram("h2", "x", buckets=[2, 1])
    with pytest.raises(MetricError):
        r.histogram("h3", "x", buckets=[math.inf])
    with pytest.raises(MetricError):
        r.gauge("app_age", "x", unit="seconds")  # unit must be the name's suffix


def test_name_clashes_are_refused() -> None:
    r = Registry()
    r.counter("app_requests_total", "x")
    with pytest.raises(MetricError, match="clash"):
        r.counter("app_requests", "x")  # same sample app_requests_total
    with pytest.raises(MetricError, match="clash"):
        r.gauge("app_requests_total", "x")
    r.histogram("app_latency", "x")
    with pytest.raises(MetricError, match="clash"):
        r.gauge("app_latency_count", "x")


def test_label_usage_errors() -> None:
    r = Registry()
    c = r.counter("app_x_total", "x", ["kind", "name"])
    with pytest.raises(MetricError):
        c.inc()  # labelled family used directly
    with pytest.raises(MetricError):
        c.labels("only-one")
    with pytest.raises(MetricError):
        c.labels(kind="a")
    with pytest.raises(MetricError):
        c.labels("a", name="b")
    with pytest.raises(MetricError):
        c.labels("a", "b").inc(-1)
    with pytest.raises(MetricError):
        c.labels("a", "b").inc(math.nan)
    plain = r.counter("app_y_total", "y")
    with pytest.raises(MetricError):
        plain.labels("a")
    h = r.histogram("app_hist", "h")
    with pytest.raises(MetricError):
        h.observe(math.nan)


def test_label_values_are_strings_and_children_are_shared() -> None:
    r = Registry()
    c = r.counter("app_responses_total", "x", ["kind", "status"])
    c.labels("slack", 200).inc()
    c.labels("slack", "200").inc()
    c.labels(kind="slack", status=200).inc()
    assert c.labels("slack", "200") is c.labels("slack", 200)
    assert r.get_sample_value("app_responses_total", {"kind": "slack", "status": "200"}) == 3


def test_gauge_operations_and_functions() -> None:
    r = Registry()
    g = r.gauge("app_queue", "q")
    g.set(5)
    g.inc()
    g.dec(2)
    assert g.get() == 4
    g.set_function(lambda: 42)
    assert r.get_sample_value("app_queue") == 42
    g.set_function(lambda: 1 / 0)
    assert math.isnan(r.get_sample_value("app_queue") or 0)
    check_registry(r)  # NaN is a valid gauge value in both formats
    g.set_function(None)
    assert g.get() == 4
    t = r.gauge("app_t_seconds", "t", unit="seconds")
    t.set_to_current_time()
    assert t.get() > 1.7e9


def test_counter_function_failure_drops_only_that_sample() -> None:
    r = Registry()
    c = r.counter("app_cpu_seconds_total", "cpu", ["part"])
    c.labels("ok").set_function(lambda: 2.0)
    c.labels("broken").set_function(lambda: 1 / 0)
    samples = check_registry(r)
    assert samples == {("app_cpu_seconds_total", (("part", "ok"),)): 2.0}


def test_histogram_bucket_boundaries_are_inclusive() -> None:
    r = Registry()
    h = r.histogram("app_hist", "h", buckets=[1, 2])
    for v in (0.0, 1.0, 2.0, 2.0000001):
        h.observe(v)
    with h.time():
        pass
    s = check_registry(r)
    assert s[("app_hist_bucket", (("le", "1.0"),))] == 3  # 0.0, 1.0 and the timed block
    assert s[("app_hist_bucket", (("le", "2.0"),))] == 4
    assert s[("app_hist_bucket", (("le", "inf"),))] == 5
    assert s[("app_hist_count", ())] == 5
    with pytest.raises(MetricError):
        h.observe(-0.001)  # a negative _sum is invalid OpenMetrics
    assert check_registry(r)[("app_hist_count", ())] == 5


def test_remove_and_clear() -> None:
    r = Registry()
    c = r.counter("app_x_total", "x", ["kind"])
    c.labels("a").inc()
    c.labels("b").inc()
    c.remove("a")
    c.remove("never-there")
    assert [dict(ch.labels) for ch in c.children()] == [{"kind": "b"}]
    c.clear()
    assert c.children() == ()
    assert check_registry(r) == {}
    plain = r.gauge("app_plain", "p")
    with pytest.raises(MetricError):
        plain.remove()
    with pytest.raises(MetricError):
        plain.clear()


def test_collect_hooks_run_per_scrape_and_failures_do_not_break_it() -> None:
    r = Registry()
    g = r.gauge("app_depth", "d")
    calls = []

    def hook() -> None:
        calls.append(1)
        g.set(len(calls))

    r.add_collect_hook(hook)
    r.add_collect_hook(lambda: 1 / 0 and None)
    check_text(r.expose_text())
    check_openmetrics(r.expose_openmetrics())
    assert len(calls) == 2
    assert r.get_sample_value("app_depth") == 3


def test_two_registries_do_not_mix() -> None:
    a, b = Registry(), Registry()
    a.counter("app_x_total", "x").inc()
    b.counter("app_x_total", "x")
    assert a.get_sample_value("app_x_total") == 1
    assert b.get_sample_value("app_x_total") == 0


# --------------------------------------------------------------------------- negotiation


PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text"),
        ("", "text"),
        ("*/*", "text"),
        ("text/plain", "text"),
        ("text/plain;version=0.0.4", "text"),
        (PROMETHEUS_2_ACCEPT, "openmetrics"),
        (PROMETHEUS_3_ACCEPT, "openmetrics"),
        ("application/openmetrics-text", "openmetrics"),
        ("application/openmetrics-text; version=0.0.1", "openmetrics"),
        ("application/openmetrics-text;version=2.0.0", "text"),
        ("application/openmetrics-text;q=0, text/plain", "text"),
        ("text/plain;q=0.9, application/openmetrics-text;q=0.5", "text"),
        ("text/plain;q=0.5, application/openmetrics-text;q=0.9", "openmetrics"),
        ("application/json", "text"),
        ("application/openmetrics-text;q=bogus", "text"),
        ("APPLICATION/OpenMetrics-Text; Version=1.0.0", "openmetrics"),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("deflate", False),
        ("gzip;q=0", False),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),
        ("identity, x-gzip", True),
    ],
)
def test_accepts_gzip(accept_encoding: str | None, expected: bool) -> None:
    assert accepts_gzip(accept_encoding) is expected


def test_render_negotiates_and_gzips() -> None:
    r = Registry()
    r.counter("app_x_total", "x").inc()
    body, headers = r.render()
    assert headers["Content-Type"] == CONTENT_TYPE_TEXT
    assert "Content-Encoding" not in headers
    check_text(body)
    body, headers = r.render(PROMETHEUS_2_ACCEPT, "gzip")
    assert headers["Content-Type"] == CONTENT_TYPE_OPENMETRICS
    assert headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in headers["Vary"]
    om = gzip.decompress(body)
    assert om == r.expose_openmetrics()
    check_openmetrics(om)


# --------------------------------------------------------------------------- concurrency


def test_eight_threads_incrementing_while_scraping_get_exact_totals() -> None:
    r = Registry()
    c = r.counter("app_ops_total", "ops", ["who"])
    g = r.gauge("app_level", "level", ["who"])
    h = r.histogram("app_size", "size", ["who"], buckets=[1, 10, 100])
    threads_n, per_thread = 8, 5_000
    shared_c, shared_g, shared_h = c.labels("shared"), g.labels("shared"), h.labels("shared")
    start = threading.Barrier(threads_n + 1)
    done = threading.Event()
    scraped = threading.Event()
    scrapes = []
    problems: list[str] = []

    def worker(i: int) -> None:
        start.wait()
        own_c = c.labels(f"t{i}")
        for n in range(per_thread):
            if n == per_thread // 2:  # make sure scrapes overlap the increments
                scraped.wait(30)
            shared_c.inc()
            own_c.inc(2)
            shared_g.inc()
            shared_g.dec(0.5)
            shared_h.observe(n % 200)
            # New series appear while the scraper iterates.
            c.labels(f"t{i}-{n % 50}").inc()

    def scraper() -> None:
        start.wait()
        last_total = 0.0
        while not done.is_set():
            samples = check_text(r.expose_text(), promtool=False)
            check_openmetrics(r.expose_openmetrics())
            total = samples.get(("app_ops_total", (("who", "shared"),)), 0.0)
            if total < last_total:
                problems.append(f"counter went back: {last_total} -> {total}")
            last_total = total
            buckets = [
                samples.get(("app_size_bucket", (("le", le), ("who", "shared"))), 0.0)
                for le in ("1.0", "10.0", "100.0", "inf")
            ]
            count = samples.get(("app_size_count", (("who", "shared"),)), 0.0)
            if buckets != sorted(buckets) or buckets[-1] != count:
                problems.append(f"inconsistent histogram {buckets} count={count}")
            scrapes.append(total)
            scraped.set()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    scrape_thread = threading.Thread(target=scraper)
    for t in [*workers, scrape_thread]:
        t.start()
    for t in workers:
        t.join()
    done.set()
    scrape_thread.join()

    assert problems == []
    total = threads_n * per_thread
    assert scrapes and scrapes[0] < total  # at least one scrape ran mid-way
    s = check_registry(r, promtool=True)
    assert s[("app_ops_total", (("who", "shared"),))] == total
    for i in range(threads_n):
        assert s[("app_ops_total", (("who", f"t{i}"),))] == 2 * per_thread
        assert sum(s[("app_ops_total", (("who", f"t{i}-{k}"),))] for k in range(50)) == per_thread
    assert s[("app_level", (("who", "shared"),))] == total * 0.5
    assert s[("app_size_count", (("who", "shared"),))] == total
    assert s[("app_size_sum", (("who", "shared"),))] == threads_n * sum(
        n % 200 for n in range(per_thread)
    )
    assert s[("app_size_bucket", (("le", "1.0"), ("who", "shared")))] == threads_n * 50


# --------------------------------------------------------------------------- process metrics


def _client_values(collector: object) -> dict[str, float]:
    return {
        s.name: s.value
        for fam in collector.collect()  # type: ignore[attr-defined]
        for s in fam.samples
        if not s.name.endswith("_created")
    }


def test_process_metrics_agree_with_prometheus_client() -> None:
    ours = {s.name: s.value for fam in ProcessCollector().collect() for s in fam.samples}
    theirs = _client_values(process_collector.ProcessCollector(registry=None))
    assert set(ours) == {
        "process_cpu_seconds_total",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    }
    assert set(ours) == set(theirs)
    assert ours["process_max_fds"] == theirs["process_max_fds"]
    assert ours["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert abs(ours["process_start_time_seconds"] - theirs["process_start_time_seconds"]) < 0.02
    assert abs(ours["process_cpu_seconds_total"] - theirs["process_cpu_seconds_total"]) < 0.5
    assert abs(ours["process_open_fds"] - theirs["process_open_fds"]) <= 2
    assert abs(ours["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 2
    for key in ("process_virtual_memory_bytes", "process_resident_memory_bytes"):
        assert abs(ours[key] - theirs[key]) <= 0.1 * theirs[key], key


def test_python_metrics_match_prometheus_client_names_and_labels() -> None:
    ours = list(PythonCollector().collect())
    theirs = list(platform_collector.PlatformCollector(registry=None).collect()) + list(
        gc_collector.GCCollector(registry=CollectorRegistry()).collect()
    )
    assert {(f.name, f.type, f.documentation) for f in theirs} == {
        (f.name, f.type, f.help) for f in ours
    }
    info_ours = next(f for f in ours if f.name == "python_info").samples[0]
    info_theirs = next(f for f in theirs if f.name == "python_info").samples[0]
    assert dict(info_ours.labels) == info_theirs.labels
    gen_labels = {
        (s.name, s.labels["generation"])
        for f in theirs
        if f.name.startswith("python_gc")
        for s in f.samples
    }
    assert gen_labels == {
        (s.name, s.labels["generation"])
        for f in ours
        if f.name.startswith("python_gc")
        for s in f.samples
    }


def test_process_collector_reads_a_proc_tree(tmp_path: os.PathLike[str]) -> None:
    proc = os.path.join(str(tmp_path), "proc")
    os.makedirs(os.path.join(proc, "4242", "fd"))
    for fd in ("0", "1", "2", "7"):
        open(os.path.join(proc, "4242", "fd", fd), "w").close()
    with open(os.path.join(proc, "stat"), "w") as f:
        f.write("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    ticks = os.sysconf("SC_CLK_TCK")
    fields = ["S"] + ["0"] * 49
    # Fields are numbered from 1 (pid); fields[k - 3] holds field k.
    fields[14 - 3] = str(3 * ticks)  # utime
    fields[15 - 3] = str(ticks)  # stime
    fields[22 - 3] = str(50 * ticks)  # starttime, ticks after boot
    fields[23 - 3] = "123456789"  # vsize, bytes
    fields[24 - 3] = "1000"  # rss, pages
    with open(os.path.join(proc, "4242", "stat"), "w") as f:
        f.write("4242 (my (odd) cmd) " + " ".join(fields) + "\n")
    values = {
        s.name: s.value for fam in ProcessCollector(proc, "4242").collect() for s in fam.samples
    }
    assert values["process_cpu_seconds_total"] == 4.0
    assert values["process_start_time_seconds"] == 1700000050.0
    assert values["process_virtual_memory_bytes"] == 123456789
    assert values["process_resident_memory_bytes"] == 1000 * resource.getpagesize()
    assert values["process_open_fds"] == 4


def test_process_collector_without_proc_leaves_out_what_it_cannot_read(
    tmp_path: os.PathLike[str],
) -> None:
    families = {f.name: f for f in ProcessCollector(str(tmp_path), "self").collect()}
    assert families["process_resident_memory_bytes"].samples == ()
    assert families["process_start_time_seconds"].samples == ()
    assert families["process_cpu_seconds"].samples[0].value > 0  # from resource.getrusage
    r = Registry()
    r.register_collector(ProcessCollector(str(tmp_path), "self"))
    check_registry(r, stable=False)


def test_default_collectors_scrape_cleanly() -> None:
    r = Registry()
    r.counter("app_x_total", "x").inc()
    register_default_collectors(r)
    samples = check_registry(r, stable=False)
    assert ("process_cpu_seconds_total", ()) in samples
    assert ("python_gc_collections_total", (("generation", "0"),)) in samples
    with pytest.raises(MetricError, match="clash"):
        register_default_collectors(r)
