"""PostgreSQL-specific behaviour: Node table shape, reconnects, replicas, redaction, pools."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool
import pytest

from statewave_runner.errors import StateError
from statewave_runner.state import PostgresState, open_state

from .state_helpers import drop_postgres_schema, drop_postgres_tables, items


def with_params(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join([*filter(None, [parts.query]), *(f"{k}={v}" for k, v in params.items())])
    return urlunsplit(parts._replace(query=query))


def with_password(url: str, password: str, port: int | None = None) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = f"{parts.hostname}:{port or parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@pytest.fixture
def schema(postgres_url: str, unique_name: str) -> Iterator[str]:
    yield unique_name
    drop_postgres_schema(postgres_url, unique_name)


def terminate(url: str, application_name: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


def test_cursor_table_has_the_node_shape(postgres_url: str, unique_name: str) -> None:
    table = f"{unique_name}_cursors"
    s = PostgresState(postgres_url, table=table)
    try:
        s.set_cursor("github", "main", "c1")
        with psycopg.connect(postgres_url) as conn:
            cols = conn.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            pk = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY a.attnum",
                (table,),
            ).fetchall()
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
                    (f"{unique_name}%",),
                )
            }
        assert cols == [
            ("kind", "text", "NO"),
            ("name", "text", "NO"),
            ("cursor", "text", "NO"),
            ("updated_at", "timestamp with time zone", "NO"),
        ]
        assert [r[0] for r in pk] == ["kind", "name"]
        assert tables == {
            f"{unique_name}_{suffix}"
            for suffix in ("cursors", "outbox", "outbox_keys", "seen", "leases")
        }
    finally:
        s.close()
        drop_postgres_tables(postgres_url, unique_name)


def test_uses_a_table_the_node_runner_created(postgres_url: str, unique_name: str) -> None:
    table = f"{unique_name}_cursors"
    # The Node adapter's DDL and upsert, verbatim (unquoted, mixed-case name folds).
    node_table = table.upper()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {node_table} (
               kind        text NOT NULL,
               name        text NOT NULL,
               cursor      text NOT NULL,
               updated_at  timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (kind, name)
             )"""
        )
        # The Node adapter's upsert, with psycopg's placeholders for pg's $1..$3.
        node_upsert = (
            f"INSERT INTO {node_table} (kind, name, cursor) VALUES (%s, %s, %s) "  # noqa: S608
            "ON CONFLICT (kind, name) DO UPDATE SET cursor = EXCLUDED.cursor, updated_at = now()"
        )
        conn.execute(node_upsert, ("github", "main", "from-node"))
    s = PostgresState(postgres_url, table=node_table)
    try:
        assert s.get_cursor("github", "main") == "from-node"
        s.set_cursor("github", "main", "from-python")
    finally:
        s.close()
        with psycopg.connect(postgres_url) as conn:
            row = conn.execute(f"SELECT cursor FROM {node_table}").fetchone()  # noqa: S608
        drop_postgres_tables(postgres_url, unique_name)
    assert row == ("from-python",)


def test_operations_succeed_after_connections_are_killed(postgres_url: str, schema: str) -> None:
    app = f"swr-{schema}"
    url = with_params(postgres_url, application_name=app)
    s = PostgresState(url, schema=schema, pool_size=3)
    try:
        s.set_cursor("github", "main", "c1")
        s.put(items("a"))
        assert terminate(postgres_url, app) >= 1
        # Every pooled connection is dead now; the next operations reconnect.
        assert s.get_cursor("github", "main") == "c1"
        assert s.put(items("b")) == 1
        assert s.mark_if_new("evt", 60)
        assert [i.key for i in s.claim(10, 30)] == ["a", "b"]
        assert s.health().ok
    finally:
        s.close()


def test_killed_connections_mid_run_lose_no_acknowledged_put(
    postgres_url: str, schema: str
) -> None:
    app = f"swr-{schema}"
    url = with_params(postgres_url, application_name=app)
    s = PostgresState(url, schema=schema, pool_size=3)
    acknowledged: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"w{w}-{n}"
            n += 1
            try:
                s.put_and_set_cursor(items(key), "github", f"w{w}", key)
            except StateError as exc:  # allowed: not acknowledged
                failures.append(str(exc))
                continue
            acknowledged.append(key)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        killed = 0
        for _ in range(5):
            time.sleep(0.15)
            killed += terminate(postgres_url, app)
        time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    try:
        assert killed >= 5
        assert len(acknowledged) > 20
        stored = {i.key for i in s.peek(100_000)}
        assert set(acknowledged) <= stored
        # Cursors moved with their items: each writer's cursor names a stored item.
        for (_, name), cursor in s.list_cursors().items():
            assert cursor in stored and cursor.startswith(name)
        # And the backend works normally afterwards.
        assert s.put(items("after")) == 1
        assert s.get_cursor("github", "w0") is not None
    finally:
        s.close()


def test_replicas_share_one_queue_without_double_claims(postgres_url: str, schema: str) -> None:
    a = PostgresState(postgres_url, schema=schema, pool_size=2)
    b = PostgresState(postgres_url, schema=schema, pool_size=2)
    try:
        a.put(items(*(f"k{n}" for n in range(300))))
        claimed: dict[str, list[str]] = {"a": [], "b": []}

        def worker(name: str, s: PostgresState) -> None:
            while batch := s.claim(7, 300):
                claimed[name] += [i.key for i in batch]

        threads = [
            threading.Thread(target=worker, args=(n, s))
            for n, s in (("a", a), ("b", b), ("a", a), ("b", b))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        everything = claimed["a"] + claimed["b"]
        assert sorted(everything) == sorted(f"k{n}" for n in range(300))  # once each
        assert a.stats().in_flight == 300
    finally:
        a.close()
        b.close()


def test_group_commit_batches_concurrent_puts(
    postgres_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = PostgresState(postgres_url, schema=schema, pool_size=2)
    real = s._run_batch
    sizes: list[int] = []

    def slow_batch(ops: list[Any]) -> None:
        sizes.append(len(ops))
        time.sleep(0.05)
        real(ops)

    monkeypatch.setattr(s._committer, "_run_batch", slow_batch)
    barrier = threading.Barrier(32)
    counts: list[int] = []

    def worker(i: int) -> None:
        barrier.wait()
        counts.append(s.put(items(f"k{i}", "shared")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(counts) == 33  # 32 own keys + "shared" counted once
        assert len(sizes) <= 4 and max(sizes) >= 16, sizes
    finally:
        s.close()


def test_unreachable_server_names_the_host_not_the_password(postgres_url: str) -> None:
    url = with_password(postgres_url, "hunter2-secret", port=1)
    with pytest.raises(StateError) as info:
        PostgresState(url, connect_timeout=2)
    message = str(info.value)
    assert "hunter2-secret" not in message and "127.0.0.1" in message
    assert "cannot connect to PostgreSQL" in message
    with pytest.raises(StateError) as info2:
        open_state("postgres", url=url)
    assert "hunter2-secret" not in str(info2.value)


def test_describe_never_shows_the_password(postgres_url: str, schema: str) -> None:
    # The test server trusts local connections, so any password is accepted.
    s = PostgresState(with_password(postgres_url, "hunter2-secret"), schema=schema)
    try:
        shown = repr(s.describe()) + s.health().detail
        assert "hunter2-secret" not in shown and "***" in shown
        assert s.describe()["table"] == f"{schema}.statewave_runner_cursors"
    finally:
        s.close()


def test_injected_pool_is_used_and_left_open(postgres_url: str, schema: str) -> None:
    pool = psycopg_pool.ConnectionPool(postgres_url, min_size=1, max_size=2, open=True)
    try:
        s = PostgresState(pool=pool, schema=schema)
        s.set_cursor("github", "main", "c1")
        assert s.put(items("a")) == 1
        assert s.describe()["location"] == "an injected connection pool"
        s.close()
        with pool.connection() as conn:  # still usable: the embedder owns it
            table = f'"{schema}".statewave_runner_cursors'
            row = conn.execute(f"SELECT cursor FROM {table}").fetchone()  # noqa: S608
        assert row == ("c1",)
    finally:
        pool.close()


def test_synchronous_commit_off_is_turned_back_on(postgres_url: str, schema: str) -> None:
    url = with_params(postgres_url, options="-c%20synchronous_commit%3Doff")
    with psycopg.connect(url) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    s = PostgresState(url, schema=schema)
    try:
        setting = s._run("show", lambda c: c.execute("SHOW synchronous_commit").fetchone())
        assert setting == ("on",)
    finally:
        s.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"table": "bad-name"}, "table 'bad-name' must match"),
        ({"table": "x; DROP TABLE y"}, "must match"),
        ({"schema": "1abc"}, "schema '1abc' must match"),
        ({"table": "a" * 60}, "too long"),
    ],
)
def test_identifiers_are_validated_before_connecting(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(StateError, match=match):
        PostgresState("postgresql://nobody@203.0.113.1:1/none", **kwargs)  # type: ignore[arg-type]


def test_expired_keys_are_purged_in_bounded_chunks(
    postgres_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from statewave_runner.state import postgres as pg_mod

    from .state_helpers import FakeClock

    monkeypatch.setattr(pg_mod, "PURGE_CHUNK", 40)
    clock = FakeClock()
    s = PostgresState(postgres_url, schema=schema, clock=clock)
    try:
        for n in range(100):
            s.mark_if_new(f"evt-{n}", 1)
        s.mark_if_new("live", 3600)

        sql = f'SELECT count(*) FROM "{schema}".statewave_runner_seen'  # noqa: S608

        def count() -> int:
            return int(s._run("count", lambda c: c.execute(sql).fetchone()[0]))

        s.claim(1, 30)  # first purge at start: nothing expired yet
        assert count() == 101
        clock.advance(pg_mod.PURGE_INTERVAL + 2)
        s.claim(1, 30)  # the delivery worker's claim runs one bounded purge
        assert count() == 61
        s.claim(1, 30)  # within the interval: nothing more
        assert count() == 61
        clock.advance(pg_mod.PURGE_INTERVAL)
        s.claim(1, 30)
        assert count() == 21
        assert s.contains("live")
    finally:
        s.close()
