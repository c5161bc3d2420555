"""Durable put() throughput: our group-committed backends vs one transaction per put.

    python bench/state.py                      # 2 s per run, all four backends
    python bench/state.py --duration 10        # the full run
    python bench/state.py --backends sqlite,postgres --threads 32

32 threads each put() single episodes for ``--duration`` seconds, against our
backend and, in the same run, a naive implementation with the same durability
and the same in-transaction dedup, on our schema (created by our backend, so the
same tables and indexes): SQLite: WAL + synchronous=FULL, one BEGIN IMMEDIATE
... COMMIT per put on a shared connection; PostgreSQL: a pool, one transaction
per put (dedup upsert, insert); Redis: one Lua script per put on our key layout
(the dedup mark and the queue writes together). Prints durable puts/s, p50 and
p99 put latency, and the ratio.

PostgreSQL and Redis come from STATEWAVE_TEST_POSTGRES_URL / STATEWAVE_TEST_REDIS_URL
(default: the local test servers); a backend whose server is unreachable is
skipped with a note. Each run uses its own schema / key prefix and drops it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from statewave_runner.state import (
    FileState,
    OutboxItem,
    PostgresState,
    RedisState,
    SqliteState,
)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEDUP_TTL = 7 * 24 * 3600.0

Put = Callable[[str], Any]


@dataclass
class Result:
    name: str
    puts: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.puts / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def drive(name: str, put: Put, threads: int, duration: float) -> Result:
    """``threads`` threads calling ``put(key)`` until ``duration`` is over."""
    barrier = threading.Barrier(threads + 1)
    lat: list[list[float]] = [[] for _ in range(threads)]
    stop_at = [0.0]
    ended: list[float] = []

    def worker(t: int) -> None:
        mine = lat[t]
        n = 0
        barrier.wait()
        deadline = stop_at[0]
        while True:
            start = time.perf_counter()
            if start >= deadline:
                break
            put(f"{name}-{t}-{n}")
            mine.append(time.perf_counter() - start)
            n += 1
        ended.append(time.perf_counter())

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    began = time.perf_counter()
    stop_at[0] = began + duration
    barrier.wait()
    for th in pool:
        th.join()
    all_lat = [x for per in lat for x in per]
    return Result(name, len(all_lat), max(ended) - began, all_lat)


def item(key: str) -> list[OutboxItem]:
    return [OutboxItem(key, '{"subject":"bench","kind":"bench","text":"x"}', "bench/one")]


# --------------------------------------------------------------------------- naive peers


def naive_sqlite(path: str) -> tuple[Put, Callable[[], None]]:
    # Our schema, created by our backend (same tables, keys and indexes: the
    # same B-trees to update per put), then used without it.
    SqliteState(path).close()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    lock = threading.Lock()

    def put(key: str) -> None:
        (it,) = item(key)
        now = time.time()
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            fresh = conn.execute(
                "INSERT INTO outbox_keys (key, expires_at) VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE outbox_keys.expires_at <= ? RETURNING 1",
                (it.key, now + DEDUP_TTL, now),
            ).fetchall()
            if fresh:
                conn.execute(
                    "INSERT INTO outbox (key, body, origin, enqueued_at) VALUES (?, ?, ?, ?)",
                    (it.key, it.body, it.origin, now),
                )
            conn.execute("COMMIT")

    return put, conn.close


def naive_postgres(url: str, schema: str, pool_size: int) -> tuple[Put, Callable[[], None]]:
    import psycopg_pool

    # Our schema, created by our backend, then used without it.
    PostgresState(url, schema=schema).close()
    pool = psycopg_pool.ConnectionPool(url, min_size=pool_size, max_size=pool_size, open=True)
    upsert = (
        f'INSERT INTO "{schema}".statewave_runner_outbox_keys AS k VALUES (%s, %s) '  # noqa: S608
        "ON CONFLICT (key) DO UPDATE "
        "SET expires_at = EXCLUDED.expires_at WHERE k.expires_at <= %s RETURNING 1"
    )
    insert = (
        f'INSERT INTO "{schema}".statewave_runner_outbox '  # noqa: S608
        "(key, body, origin, enqueued_at) VALUES (%s, %s, %s, %s)"
    )

    def put(key: str) -> None:
        (it,) = item(key)
        now = time.time()
        with pool.connection() as conn, conn.transaction():
            if conn.execute(upsert, (it.key, now + DEDUP_TTL, now)).fetchone():
                conn.execute(insert, (it.key, it.body, it.origin, now))

    return put, pool.close


def naive_redis(url: str, prefix: str) -> tuple[Put, Callable[[], None]]:
    import redis

    from statewave_runner.state.redis import _PUT

    # One put, atomically: our own single-put script (the dedup mark and the
    # queue writes in one script, on our key layout), one round trip per put.
    # (SET NX and then a MULTI would be two round trips, and a crash between
    # them would leave a key marked whose item was never queued.)
    client = redis.Redis.from_url(url)
    script = client.register_script(_PUT)
    ttl_ms = int(DEDUP_TTL * 1000)

    def put(key: str) -> None:
        (it,) = item(key)
        script(args=[prefix, repr(time.time()), ttl_ms, it.key, it.body, it.origin])

    return put, client.close


# --------------------------------------------------------------------------- environments


@contextmanager
def postgres_env(url: str) -> Iterator[str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for s in (schema, schema + "_naive"):
                conn.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')


@contextmanager
def redis_env(url: str) -> Iterator[str]:
    import redis

    prefix = f"bench_{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        for pattern in (f"{prefix}*", f"naive_{prefix}*"):
            keys = list(client.scan_iter(match=pattern, count=5000))
            for i in range(0, len(keys), 5000):
                client.delete(*keys[i : i + 5000])
        client.close()


def fsync_ms(directory: str, n: int = 50) -> float:
    """Median cost of write+fsync here: what one transaction per put pays at least."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            os.write(fd, b"x" * 128)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    return sorted(times)[n // 2] * 1000


def reachable(kind: str, url: str) -> str | None:
    try:
        if kind == "postgres":
            import psycopg

            psycopg.connect(url, connect_timeout=3).close()
        else:
            import redis

            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def bench_backend(kind: str, args: argparse.Namespace, tmp: str) -> list[tuple[Result, Result]]:
    threads, duration = args.threads, args.duration
    if kind in ("sqlite", "file"):
        path = os.path.join(tmp, kind)
        os.makedirs(path, exist_ok=True)
        ours = (
            SqliteState(os.path.join(path, "state.db"))
            if kind == "sqlite"
            else FileState(os.path.join(path, "cursors.json"))
        )
        try:
            mine = drive(kind, lambda k: ours.put(item(k)), threads, duration)
            batches = ours.batches
        finally:
            ours.close()
        put, close = naive_sqlite(os.path.join(path, "naive.db"))
        try:
            naive = drive(f"{kind}-naive", put, threads, duration)
        finally:
            close()
        mine.name += f" ({mine.puts / max(1, batches):.1f} puts/commit)"
        return [(mine, naive)]
    if kind == "postgres":
        with postgres_env(args.postgres_url) as schema:
            pg = PostgresState(args.postgres_url, schema=schema, pool_size=args.pg_pool)
            try:
                mine = drive(kind, lambda k: pg.put(item(k)), threads, duration)
                batches = pg.batches
            finally:
                pg.close()
            put, close = naive_postgres(args.postgres_url, schema + "_naive", args.naive_pg_pool)
            try:
                naive = drive("postgres-naive", put, threads, duration)
            finally:
                close()
        mine.name += f" ({mine.puts / max(1, batches):.1f} puts/commit)"
        return [(mine, naive)]
    with redis_env(args.redis_url) as prefix:
        rs = RedisState(args.redis_url, key_prefix=prefix)
        try:
            mine = drive(kind, lambda k: rs.put(item(k)), threads, duration)
            batches = rs.batches
        finally:
            rs.close()
        put, close = naive_redis(args.redis_url, "naive_" + prefix)
        try:
            naive = drive("redis-naive", put, threads, duration)
        finally:
            close()
    mine.name += f" ({mine.puts / max(1, batches):.1f} puts/script)"
    return [(mine, naive)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run (10 = full)")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,file,postgres,redis")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("STATEWAVE_TEST_POSTGRES_URL", DEFAULT_PG)
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("STATEWAVE_TEST_REDIS_URL", DEFAULT_REDIS)
    )
    parser.add_argument("--pg-pool", type=int, default=4, help="our pool size (default as shipped)")
    parser.add_argument("--naive-pg-pool", type=int, default=16, help="the naive peer's pool size")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        print(
            f"# {args.threads} threads x {args.duration:g} s of single-episode put(); "
            f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
            f"fsync {fsync_ms(tmp):.2f} ms (the naive peers pay one per put)"
        )
        header = f"{'implementation':44} {'puts/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        print(header)
        print("-" * len(header))
        for kind in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if kind in ("postgres", "redis"):
                url = args.postgres_url if kind == "postgres" else args.redis_url
                problem = reachable(kind, url)
                if problem:
                    print(f"{kind:44} skipped: server unreachable ({problem})")
                    continue
            for mine, naive in bench_backend(kind, args, tmp):
                for r in (mine, naive):
                    print(f"{r.name:44} {r.rate:9.0f} {r.pct(0.5):8.2f} {r.pct(0.99):8.2f}")
                ratio = mine.rate / naive.rate if naive.rate else float("inf")
                p99 = naive.pct(0.99) / mine.pct(0.99) if mine.latencies else float("nan")
                print(f"{'  -> ours/naive':44} {ratio:8.1f}x  (p99 naive/ours {p99:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
