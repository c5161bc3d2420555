"""Schedules: next-fire-time throughput and a many-sources timer soak, each against its peer.

    .venv/bin/python bench/schedule.py                 # both parts, short soak (10 s)
    .venv/bin/python bench/schedule.py --seconds 60    # the full 60 s soak of the issue
    .venv/bin/python bench/schedule.py --only next     # just the next_after throughput
    .venv/bin/python bench/schedule.py --only soak --sources 10000 --seconds 60

Part 1, ``next``: the same 50 mixed cron expressions, each asked for successive
fire times, by statewave_runner.schedule, croniter and cronsim, in UTC and in
America/New_York. Prints microseconds per fire time and the ratios
(targets: >= 5x croniter, >= 2x cronsim).

Part 2, ``soak``: N sources (a seeded mix of ``every 1s`` .. ``every 1h`` and
cron, no-op ticks) armed in our Timers and, in a separate child process each,
in APScheduler 3's BackgroundScheduler with the same jobs. Prints CPU% of the
process over the window, tick lateness p50/p99/max and RSS, plus an idle run
(nothing due) for the loop's idle CPU. Targets: lateness p99 < 5 ms, CPU and
RSS <= APScheduler's. Lateness is measured for us at tick start (after the
hand-off to a worker) and for APScheduler at job submission (before its pool
hand-off), which favours APScheduler slightly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

EXPRESSIONS = [
    "* * * * *", "*/5 * * * *", "0 * * * *", "0 0 * * *", "0 0 1 * *",
    "0 0 1 1 *", "0 0 * * 0", "15 14 1 * *", "0 22 * * 1-5", "23 0-20/2 * * *",
    "5 4 * * SUN", "0 0,12 1 */2 *", "0 9-17 * * MON-FRI", "*/15 9-17 * * 1-5", "30 2 * * *",
    "0 0 29 2 *", "0 0 L * *", "0 12 * * 5#2", "0 0 31 * *", "45 23 * * 6",
    "0 */3 * * *", "10,20,40 * * * *", "0 0 1,15 * *", "0 6 * JAN,JUL *", "0 0 * * 1#1",
    "7 7 7 7 *", "59 23 31 12 *", "0 0 13 * 5", "1-59/2 * * * *", "0 8 * * 1,3,5",
    "*/30 * * * * *", "0 * * * * *", "*/10 * * * * *", "15,45 */20 * * * *", "0 0 */6 * * *",
    "30 30 4 * * *", "0 0 0 1 * *", "*/5 * 8-18 * * MON-FRI", "0 */15 * * * *", "20 4 2 * * SUN",
    "0 0 12 * * 1-5", "5 5 5 5 5 *", "0 0 0 29 2 *", "0 30 9 L * *", "0 0 9 * * 5#3",
    "*/2 * * * * *", "0 0 0 * * 0", "10 10 10 10 10 *", "0 0 0 15 * *", "0 */5 0-6 * * *",
]  # fmt: skip


# --------------------------------------------------------------------------- part 1


def _ours(expr: str, tz: str, start: datetime, n: int) -> None:
    from statewave_runner import schedule

    # Bypass parse()'s cache: the peers build their iterator from the text each time too.
    it = schedule._parse_cached.__wrapped__(expr, tz).iter_after(start)
    for _ in range(n):
        next(it)


def _croniter(expr: str, tz: str, start: datetime, n: int) -> None:
    from croniter import croniter

    c = croniter(expr, start.astimezone(ZoneInfo(tz)), second_at_beginning=True)
    for _ in range(n):
        c.get_next(datetime)


def _cronsim(expr: str, tz: str, start: datetime, n: int) -> None:
    from cronsim import CronSim

    it = CronSim(expr, start.astimezone(ZoneInfo(tz)))
    for _ in range(n):
        next(it)


def bench_next(per_expr: int, rounds: int) -> None:
    start = datetime(2024, 1, 1, 0, 0, 7, tzinfo=UTC)
    impls = [("statewave", _ours), ("croniter", _croniter), ("cronsim", _cronsim)]
    print(
        f"next_after: {len(EXPRESSIONS)} expressions x {per_expr} successive fire times,"
        f" best of {rounds}"
    )
    for tz in ("UTC", "America/New_York"):
        results: dict[str, float] = {}
        for name, fn in impls:
            for expr in EXPRESSIONS:  # warm-up and sanity: every impl accepts every expression
                fn(expr, tz, start, 2)
            best = float("inf")
            for _ in range(rounds):
                t0 = time.perf_counter()
                for expr in EXPRESSIONS:
                    fn(expr, tz, start, per_expr)
                best = min(best, time.perf_counter() - t0)
            results[name] = best / (len(EXPRESSIONS) * per_expr) * 1e6
        ours = results["statewave"]
        print(
            f"  {tz:<17} statewave {ours:6.2f} us   croniter {results['croniter']:7.2f} us"
            f" ({results['croniter'] / ours:5.1f}x)   cronsim {results['cronsim']:6.2f} us"
            f" ({results['cronsim'] / ours:4.1f}x)"
        )


# --------------------------------------------------------------------------- part 2

PERIODS = [1, 2, 5, 10, 15, 30, 60, 300, 900, 1800, 3600]
CRONS = ["*/5 * * * * *", "*/15 * * * * *", "0 * * * * *", "0 */2 * * * *", "0 0 * * * *"]


def job_mix(n: int, idle: bool) -> list[tuple[str, str]]:
    """(kind, spec): ("every", "<seconds>") or ("cron", "<6-field expr>")."""
    rng = random.Random(4)
    jobs = []
    for _ in range(n):
        if idle:
            jobs.append(("every", "3600"))
        elif rng.random() < 0.7:
            jobs.append(("every", str(rng.choice(PERIODS))))
        else:
            jobs.append(("cron", rng.choice(CRONS)))
    return jobs


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(impl: str, sources: int, seconds: float, idle: bool) -> dict[str, Any]:
    jobs = job_mix(sources, idle)
    lateness: list[float] = []
    lock = threading.Lock()

    def record(late: float) -> None:
        with lock:
            lateness.append(late)

    def noop() -> None:
        pass

    if impl == "statewave":
        from statewave_runner.schedule import parse
        from statewave_runner.timers import Timers

        rss0 = _rss_kib()
        timers = Timers(on_fire=lambda key, late: record(late))
        for i, (kind, spec) in enumerate(jobs):
            expr = f"every {spec}s" if kind == "every" else spec
            timers.add(f"src/{i}", parse(expr), noop)
        timers.start()
        stop = lambda: timers.stop(timeout=5)  # noqa: E731
    else:
        from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        rss0 = _rss_kib()
        sched = BackgroundScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1}
        )

        def on_submit(event: JobSubmissionEvent) -> None:
            now = datetime.now(UTC)
            for t in event.scheduled_run_times:
                record((now - t).total_seconds())

        sched.add_listener(on_submit, EVENT_JOB_SUBMITTED)
        for i, (kind, spec) in enumerate(jobs):
            if kind == "every":
                trigger: Any = IntervalTrigger(seconds=int(spec), timezone="UTC")
            else:
                sec, minute, hour, day, month, dow = spec.split()
                trigger = CronTrigger(
                    second=sec, minute=minute, hour=hour, day=day, month=month,
                    day_of_week=dow, timezone="UTC",
                )  # fmt: skip
            sched.add_job(noop, trigger, id=f"src/{i}")
        sched.start()
        stop = lambda: sched.shutdown(wait=True)  # noqa: E731

    # Skip the first seconds (thread start-up, first dispatches) before measuring.
    time.sleep(1.0)
    with lock:
        lateness.clear()
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    rss1 = _rss_kib()
    with lock:
        lat = sorted(lateness)
    stop()
    out: dict[str, Any] = {
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
        "ticks": len(lat),
        "rss_mib": rss1 / 1024,
        "rss_delta_mib": (rss1 - rss0) / 1024,
    }
    if lat:
        out["p50_ms"] = 1000 * statistics.median(lat)
        out["p99_ms"] = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        out["max_ms"] = 1000 * lat[-1]
    return out


def run_child(impl: str, sources: int, seconds: float, idle: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", impl, "--sources", str(sources)]
    cmd += ["--seconds", str(seconds)] + (["--idle"] if idle else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} child failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_soak(sources: int, seconds: float, idle_seconds: float) -> None:
    print(f"\ntimer soak: {sources} sources, {seconds:g} s window, no-op ticks, one process each")
    rows = {impl: run_child(impl, sources, seconds, False) for impl in ("statewave", "apscheduler")}
    for impl, r in rows.items():
        lat = (
            f"lateness p50 {r.get('p50_ms', 0):7.2f} ms  p99 {r.get('p99_ms', 0):7.2f} ms"
            f"  max {r.get('max_ms', 0):8.2f} ms"
        )
        print(
            f"  {impl:<12} ticks {r['ticks']:7d}  CPU {r['cpu_pct']:5.1f}%  {lat}"
            f"  RSS {r['rss_mib']:6.1f} MiB (+{r['rss_delta_mib']:.1f} for the jobs)"
        )
    ours, peer = rows["statewave"], rows["apscheduler"]
    print(
        f"  ratio (apscheduler / statewave):"
        f" CPU {peer['cpu_pct'] / max(ours['cpu_pct'], 1e-9):.2f}x"
        f"  p99 {peer.get('p99_ms', 0) / max(ours.get('p99_ms', 1e-9), 1e-9):.2f}x"
        f"  RSS {peer['rss_mib'] / ours['rss_mib']:.2f}x"
        f"  job RSS {peer['rss_delta_mib'] / max(ours['rss_delta_mib'], 1e-9):.2f}x"
    )
    if idle_seconds > 0:
        print(f"\nidle: {sources} sources on 'every 1h' (nothing due), {idle_seconds:g} s window")
        for impl in ("statewave", "apscheduler"):
            r = run_child(impl, sources, idle_seconds, True)
            print(f"  {impl:<12} CPU {r['cpu_pct']:5.2f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", choices=["next", "soak"])
    p.add_argument("--per-expr", type=int, default=200, help="fire times per expression (next)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sources", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=10.0, help="soak window (the issue: 60)")
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--child", choices=["statewave", "apscheduler"], help=argparse.SUPPRESS)
    p.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sources, args.seconds, args.idle)))
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    if args.only in (None, "next"):
        bench_next(args.per_expr, args.rounds)
    if args.only in (None, "soak"):
        bench_soak(args.sources, args.seconds, args.idle_seconds)


if __name__ == "__main__":
    main()
