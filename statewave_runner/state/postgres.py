"""PostgreSQL state: several replicas share cursors, dedup, one outbox and leases.

psycopg 3 and psycopg_pool are imported only here, and only when the backend
builds its own pool from ``url``; an injected pool (``PostgresState(pool=...)``)
skips the import. Tables (created on open, ``IF NOT EXISTS``, under an advisory
lock so replicas starting together do not race):

* ``<table>`` (default ``statewave_runner_cursors``): the Node runner's cursor
  table, same shape, so both runners can use one database;
* ``<base>_outbox``, ``<base>_outbox_keys``, ``<base>_seen``, ``<base>_leases``,
  where ``<base>`` is ``table`` without its ``_cursors`` suffix.

Every write is a single statement in autocommit mode or one explicit
transaction; ``put()`` from many threads is group-committed into one statement
(see ``_group.py``). A commit returns after PostgreSQL flushed its WAL
(``synchronous_commit`` on, which our own pool makes sure of), so an
acknowledged write survives a server crash. A connection that breaks (server
restart, ``pg_terminate_backend``) is dropped and the operation is retried on
a fresh one; every operation is safe to repeat (puts deduplicate by key,
cursor writes are upserts, a repeated claim only delays items by one lease).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import StateError
from ._group import GroupCommitter, Op
from .base import DEFAULT_TABLE, ClaimedItem, Health, OutboxItem, OutboxSettings, OutboxStats
from .drivers import first_line, import_driver, safe_url, url_redactor

log = logging.getLogger("statewave_runner.state")

PURGE_INTERVAL = 30.0
PURGE_CHUNK = 1000
RETRIES = 3
"""Times an operation is retried on a fresh connection after its connection broke."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LONGEST_SUFFIX = "_outbox_keys_expires"
T = TypeVar("T")


# Every statement, with placeholders for the (validated, quoted) table names;
# rendered once per backend by _render().
_SQL = {
    "create_cursors": """CREATE TABLE IF NOT EXISTS {cursors} (
        kind text NOT NULL,
        name text NOT NULL,
        cursor text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (kind, name))""",
    "create_outbox": """CREATE TABLE IF NOT EXISTS {outbox} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key text NOT NULL,
        body text NOT NULL,
        origin text NOT NULL DEFAULT '',
        enqueued_at double precision NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        retry_at double precision NOT NULL DEFAULT 0,
        lease_until double precision NOT NULL DEFAULT 0,
        dead boolean NOT NULL DEFAULT false,
        last_error text)""",
    "create_outbox_index": 'CREATE INDEX IF NOT EXISTS "{base}_outbox_live" '
    "ON {outbox} (id) WHERE NOT dead",
    "create_keys": """CREATE TABLE IF NOT EXISTS {keys} (
        key text PRIMARY KEY,
        expires_at double precision NOT NULL)""",
    "create_keys_index": 'CREATE INDEX IF NOT EXISTS "{base}_outbox_keys_expires" '
    "ON {keys} (expires_at)",
    "create_seen": """CREATE TABLE IF NOT EXISTS {seen} (
        key text PRIMARY KEY,
        expires_at double precision NOT NULL)""",
    "create_seen_index": 'CREATE INDEX IF NOT EXISTS "{base}_seen_expires" ON {seen} (expires_at)',
    "create_leases": """CREATE TABLE IF NOT EXISTS {leases} (
        key text PRIMARY KEY,
        owner text NOT NULL,
        expires_at double precision NOT NULL)""",
    "purge_seen": "DELETE FROM {seen} WHERE ctid IN (SELECT ctid FROM {seen} "
    "WHERE expires_at <= %s LIMIT {chunk} FOR UPDATE SKIP LOCKED)",
    "purge_keys": "DELETE FROM {keys} WHERE ctid IN (SELECT ctid FROM {keys} "
    "WHERE expires_at <= %s LIMIT {chunk} FOR UPDATE SKIP LOCKED)",
    "purge_leases": "DELETE FROM {leases} WHERE ctid IN (SELECT ctid FROM {leases} "
    "WHERE expires_at <= %s LIMIT {chunk} FOR UPDATE SKIP LOCKED)",
    "get_cursor": "SELECT cursor FROM {cursors} WHERE kind = %s AND name = %s",
    "delete_cursor": "DELETE FROM {cursors} WHERE kind = %s AND name = %s",
    "list_cursors": "SELECT kind, name, cursor FROM {cursors}",
    # Later rows win when one batch sets a cursor twice.
    "write_cursors": "INSERT INTO {cursors} AS c (kind, name, cursor, updated_at) "
    "SELECT DISTINCT ON (kind, name) kind, name, cursor, now() "
    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[]) "
    "AS u(kind, name, cursor, ord) ORDER BY kind, name, ord DESC "
    "ON CONFLICT (kind, name) DO UPDATE SET cursor = EXCLUDED.cursor, updated_at = now()",
    "mark": "INSERT INTO {seen} AS s (key, expires_at) VALUES (%s, %s) "
    "ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at "
    "WHERE s.expires_at <= %s RETURNING 1",
    "contains": "SELECT 1 FROM {seen} WHERE key = %s AND expires_at > %s",
    "marked": "SELECT key FROM {seen} WHERE key = ANY(%s::text[]) AND expires_at > %s",
    # Keys in key order: two batches marking overlapping keys cannot deadlock.
    "write_marks": "INSERT INTO {seen} AS s (key, expires_at) "
    "SELECT key, expires_at FROM unnest(%s::text[], %s::float8[]) AS u(key, expires_at) "
    "ORDER BY key ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at "
    "WHERE s.expires_at <= %s RETURNING key",
    # Dedup and insert in one statement: a key is taken in the keys table (new,
    # or its previous entry expired) and only then queued. Keys are taken in
    # key order, so two concurrent batches cannot deadlock on each other.
    # The arrays travel in binary: psycopg's text format escapes every quote of
    # every JSON body with a regular expression, in Python.
    "put": "WITH input AS (SELECT * FROM unnest(%(ords)b::int[], %(keys)b::text[], "
    "%(bodies)b::text[], %(origins)b::text[]) AS t(ord, key, body, origin)), "
    "firsts AS (SELECT DISTINCT ON (key) ord, key, body, origin FROM input "
    "ORDER BY key, ord), "
    "fresh AS (INSERT INTO {keys} AS k (key, expires_at) "
    "SELECT key, %(expires)s FROM firsts "
    "ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at "
    "WHERE k.expires_at <= %(now)s RETURNING key) "
    "INSERT INTO {outbox} (key, body, origin, enqueued_at) "
    "SELECT f.key, f.body, f.origin, %(now)s FROM firsts f JOIN fresh USING (key) "
    "ORDER BY f.ord RETURNING key",
    "claim": "WITH due AS (SELECT id FROM {outbox} WHERE NOT dead AND retry_at <= %(now)s "
    "AND lease_until <= %(now)s ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    "UPDATE {outbox} AS o SET attempts = o.attempts + 1, lease_until = %(until)s "
    "FROM due WHERE o.id = due.id "
    "RETURNING o.id, o.key, o.body, o.origin, o.attempts, o.enqueued_at, o.last_error",
    "ack": "DELETE FROM {outbox} WHERE id = ANY(%s::bigint[])",
    "nack": "UPDATE {outbox} AS o SET lease_until = 0, retry_at = %s, "
    "last_error = %s, dead = (o.attempts >= %s) "
    "FROM unnest(%s::bigint[], %s::int[]) AS u(id, attempts) "
    "WHERE o.id = u.id AND o.attempts = u.attempts AND NOT o.dead",
    "dead_letter": "UPDATE {outbox} AS o SET dead = true, lease_until = 0, "
    "last_error = %s FROM unnest(%s::bigint[], %s::int[]) AS u(id, attempts) "
    "WHERE o.id = u.id AND o.attempts = u.attempts AND NOT o.dead",
    "retry_dead": "UPDATE {outbox} SET dead = false, attempts = 0, retry_at = 0, "
    "lease_until = 0 WHERE id IN (SELECT id FROM {outbox} WHERE dead ORDER BY id LIMIT %s)",
    "peek": "SELECT id, key, body, origin, attempts, enqueued_at, last_error "
    "FROM {outbox} WHERE dead = %s ORDER BY id LIMIT %s",
    "stats": "SELECT count(*) FILTER (WHERE NOT dead), "
    "count(*) FILTER (WHERE NOT dead AND lease_until > %s), "
    "count(*) FILTER (WHERE dead), min(enqueued_at) FILTER (WHERE NOT dead) FROM {outbox}",
    "acquire": "INSERT INTO {leases} AS l (key, owner, expires_at) "
    "VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, "
    "expires_at = EXCLUDED.expires_at "
    "WHERE l.owner = EXCLUDED.owner OR l.expires_at <= %s RETURNING 1",
    "renew": "UPDATE {leases} SET expires_at = %s "
    "WHERE key = %s AND owner = %s AND expires_at > %s",
    "release": "DELETE FROM {leases} WHERE key = %s AND owner = %s AND expires_at > %s",
}


def _render(template: str, names: dict[str, str]) -> str:
    for name, value in names.items():
        template = template.replace("{" + name + "}", value)
    return template


class _ConnectionLost(StateError):
    """The server could not be reached even after retries."""


class _MarkRace(Exception):
    """Another replica marked a key between our check and our mark: roll back, look again."""


MARK_RACE_RETRIES = 5


def _is_driver_error(exc: BaseException) -> bool:
    # Duck-typed so an injected pool works without importing psycopg here.
    return type(exc).__module__.split(".")[0] in ("psycopg", "psycopg_pool")


def _item(row: Sequence[Any]) -> ClaimedItem:
    return ClaimedItem(
        id=str(row[0]),
        key=row[1],
        body=row[2],
        origin=row[3],
        attempts=int(row[4]),
        enqueued_at=float(row[5]),
        last_error=row[6],
    )


def _ids_and_attempts(items: Sequence[ClaimedItem]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    attempts: list[int] = []
    for item in items:
        try:
            ids.append(int(item.id))
        except ValueError:
            continue
        attempts.append(item.attempts)
    return ids, attempts


class PostgresState:
    """The state contract on PostgreSQL (see module docstring)."""

    kind = "postgres"

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: Any = None,
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        settings: OutboxSettings | None = None,
        clock: Callable[[], float] = time.time,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        self.settings = settings or OutboxSettings()
        self._clock = clock
        self._closed = False
        self._where = safe_url(url) if url else "an injected connection pool"
        self._redactor = url_redactor(url or "")
        self._q = self._names(table, schema)
        self._purge_lock = threading.Lock()
        self._last_purge = float("-inf")
        if pool is not None:
            self._pool = pool
            self._own_pool = False
        else:
            if not url:
                raise StateError('state kind "postgres" needs url (or an injected pool)')
            self._pool = self._make_pool(url, pool_size, connect_timeout)
            self._own_pool = True
        try:
            self._create_tables()
        except BaseException:
            if self._own_pool:
                self._pool.close()
            raise
        self._committer = GroupCommitter(self._run_batch, f"postgres state {self._where}")

    # ------------------------------------------------------------------ set-up
    def _names(self, table: str, schema: str | None) -> dict[str, str]:
        for label, value in (("table", table), ("schema", schema)):
            if value is not None and not _IDENT.match(value):
                raise StateError(
                    f"postgres state: {label} {value!r} must match [A-Za-z_][A-Za-z0-9_]*"
                )
        # Unquoted identifiers fold to lower case in PostgreSQL (that is how the
        # Node runner creates its table); quoting the lower-cased name is the same.
        table = table.lower()
        base = table
        if table.endswith("_cursors") and table != "_cursors":
            base = table[: -len("_cursors")]
        if len(base) + len(_LONGEST_SUFFIX) > 63:
            raise StateError(
                f"postgres state: table {table!r} is too long "
                f"(at most {63 - len(_LONGEST_SUFFIX)} characters before _cursors)"
            )
        self.schema = schema.lower() if schema else None
        self.table = f"{self.schema}.{table}" if self.schema else table
        """The cursor table, schema-qualified when a schema is set."""
        prefix = f'"{self.schema}".' if self.schema else ""
        names = {
            "cursors": f'{prefix}"{table}"',
            "outbox": f'{prefix}"{base}_outbox"',
            "keys": f'{prefix}"{base}_outbox_keys"',
            "seen": f'{prefix}"{base}_seen"',
            "leases": f'{prefix}"{base}_leases"',
            "base": base,
            "chunk": str(PURGE_CHUNK),
        }
        return {name: _render(template, names) for name, template in _SQL.items()}

    def _error(self, doing: str, exc: BaseException) -> str:
        return self._redactor.scrub(
            f"PostgreSQL state at {self._where}: {doing} failed: {first_line(str(exc))}"
        )

    def _make_pool(self, url: str, pool_size: int, connect_timeout: float) -> Any:
        psycopg, psycopg_pool = import_driver("postgres")
        kwargs: dict[str, Any] = {"autocommit": True}
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StateError(self._error("parse url", exc)) from None
        if "application_name" not in params:
            kwargs["application_name"] = "statewave-runner"
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(1, math.ceil(connect_timeout))
        # Probe once with a plain connection: its error names the cause
        # (refused, unknown host, bad password); a pool would only time out.
        try:
            probe = psycopg.connect(url, **kwargs)
        except psycopg.Error as exc:
            raise StateError(
                self._redactor.scrub(
                    f"cannot connect to PostgreSQL at {self._where}: {first_line(str(exc))}"
                )
            ) from None
        probe.close()

        def configure(conn: Any) -> None:
            # put() promises durability; a server or role default of
            # synchronous_commit=off would break that promise silently.
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row and row[0] == "off":
                conn.execute("SET synchronous_commit TO on")

        pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs=kwargs,
            configure=configure,
            open=False,
            timeout=connect_timeout,
            name="statewave-runner-state",
        )
        try:
            pool.open(wait=True, timeout=connect_timeout)
        except psycopg.Error as exc:
            pool.close()
            raise StateError(self._error("open the connection pool", exc)) from None
        return pool

    def _create_tables(self) -> None:
        q = self._q
        statements = [q[name] for name in _SQL if name.startswith("create_")]
        lock_key = f"statewave_runner:{self.table}"

        def create(conn: Any) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key,))
                if self.schema is not None:
                    found = conn.execute(
                        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                    ).fetchone()
                    if found is None:
                        conn.execute(
                            _render('CREATE SCHEMA IF NOT EXISTS "{s}"', {"s": self.schema})
                        )
                for statement in statements:
                    conn.execute(statement)

        self._run("create tables", create)

    # ------------------------------------------------------------------ plumbing
    def _run(self, doing: str, fn: Callable[[Any], T]) -> T:
        if self._closed:
            raise StateError(f"PostgreSQL state at {self._where} is closed")
        attempt = 0
        while True:
            conn: Any = None
            try:
                with self._pool.connection() as conn:
                    if not conn.autocommit:
                        conn.autocommit = True
                    return fn(conn)
            except Exception as exc:
                if not _is_driver_error(exc):
                    raise
                broken = conn is not None and (conn.broken or conn.closed)
                if broken and attempt < RETRIES:
                    attempt += 1
                    log.warning("%s; reconnecting", self._error(doing, exc))
                    self._recover(attempt)
                    continue
                cls = _ConnectionLost if (broken or conn is None) else StateError
                raise cls(self._error(doing, exc)) from None

    def _exec(self, doing: str, name: str, params: Any = None) -> Any:
        """One statement in autocommit mode: one round trip. Returns the cursor."""
        sql = self._q[name]
        return self._run(doing, lambda c: c.execute(sql, params))

    def _fetchone(self, doing: str, name: str, params: Any = None) -> Any:
        sql = self._q[name]
        return self._run(doing, lambda c: c.execute(sql, params).fetchone())

    def _fetchall(self, doing: str, name: str, params: Any = None) -> list[Any]:
        sql = self._q[name]
        rows: list[Any] = self._run(doing, lambda c: c.execute(sql, params).fetchall())
        return rows

    def _rowcount(self, doing: str, name: str, params: Any = None) -> int:
        sql = self._q[name]
        return int(self._run(doing, lambda c: c.execute(sql, params).rowcount))

    def _recover(self, attempt: int) -> None:
        # After a server restart every idle pooled connection is dead: have the
        # pool test them all and replace the dead ones before the retry.
        check = getattr(self._pool, "check", None)
        if callable(check):
            try:
                check()
            except Exception as exc:  # the retry reports the real error
                log.debug("pool check failed: %s", self._redactor.scrub(str(exc)))
        time.sleep(0.05 * attempt)

    def _maybe_purge(self) -> None:
        # Called from claim(), i.e. the delivery worker: off the put() path.
        now = self._clock()
        if now - self._last_purge < PURGE_INTERVAL or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._last_purge = now
            for name in ("purge_seen", "purge_keys", "purge_leases"):
                try:
                    self._exec("purge expired keys", name, (now,))
                except StateError as exc:
                    log.warning("%s", exc)
                    return
        finally:
            self._purge_lock.release()

    # ------------------------------------------------------------------ cursors
    def get_cursor(self, kind: str, name: str) -> str | None:
        row = self._fetchone("read a cursor", "get_cursor", (kind, name))
        return None if row is None else str(row[0])

    def set_cursor(self, kind: str, name: str, cursor: str) -> None:
        self._run("write a cursor", lambda c: self._write_cursors(c, [(kind, name, cursor)]))

    def delete_cursor(self, kind: str, name: str) -> bool:
        return self._rowcount("delete a cursor", "delete_cursor", (kind, name)) > 0

    def list_cursors(self) -> dict[tuple[str, str], str]:
        rows = self._fetchall("list cursors", "list_cursors")
        return {(k, n): v for k, n, v in rows}

    def _write_cursors(self, conn: Any, rows: Sequence[tuple[str, str, str]]) -> None:
        # The cursor half of put_and_set_cursor, also used by set_cursor; tests
        # replace it to inject a failure between the two halves.
        if rows:
            conn.execute(
                self._q["write_cursors"],
                (
                    [r[0] for r in rows],
                    [r[1] for r in rows],
                    [r[2] for r in rows],
                    list(range(len(rows))),
                ),
            )

    # ------------------------------------------------------------------ dedup
    def mark_if_new(self, key: str, ttl_seconds: float) -> bool:
        now = self._clock()
        return self._fetchone("mark a dedup key", "mark", (key, now + ttl_seconds, now)) is not None

    def contains(self, key: str) -> bool:
        now = self._clock()
        return self._fetchone("look up a dedup key", "contains", (key, now)) is not None

    # ------------------------------------------------------------------ outbox
    def put(self, items: Sequence[OutboxItem]) -> int:
        return self.put_and_set_cursor(items, "", "", None)

    def put_and_mark(
        self, items: Sequence[OutboxItem], key: str, ttl_seconds: float
    ) -> tuple[int, bool]:
        if self._closed:
            raise StateError(f"PostgreSQL state at {self._where} is closed")
        added, new = self._committer.submit((list(items), None, (key, ttl_seconds)))
        return int(added), bool(new)

    def put_and_set_cursor(
        self, items: Sequence[OutboxItem], kind: str, name: str, cursor: str | None
    ) -> int:
        if self._closed:
            raise StateError(f"PostgreSQL state at {self._where} is closed")
        items = list(items)
        row = None if cursor is None else (kind, name, cursor)
        if not items and row is None:
            return 0
        return int(self._committer.submit((items, row, None), touches_cursors=row is not None))

    def _run_batch(self, ops: list[Op]) -> None:
        now = self._clock()
        try:
            counts = self._run("queue episodes", lambda c: self._put_batch(c, ops, now))
        except _ConnectionLost as exc:
            for op in ops:
                op.fail(_ConnectionLost(str(exc)))
            return
        except Exception as exc:
            if len(ops) == 1:
                ops[0].fail(exc)
                return
            # One bad operation must not fail its neighbours: run each alone.
            for op in ops:
                self._run_alone(op, now)
            return
        for op, result in zip(ops, counts, strict=True):
            op.succeed(result)

    def _run_alone(self, op: Op, now: float) -> None:
        try:
            op.succeed(self._run("queue episodes", lambda c: self._put_batch(c, [op], now))[0])
        except Exception as exc:
            op.fail(exc)

    def _put_batch(self, conn: Any, ops: list[Op], now: float) -> list[Any]:
        """One transaction for a batch of puts: per op its count, or (count, new) with a mark."""
        for _ in range(MARK_RACE_RETRIES):
            try:
                return self._put_batch_once(conn, ops, now)
            except _MarkRace:
                continue
        raise StateError(
            f"PostgreSQL state at {self._where}: dedup marks kept changing during a put; "
            "another replica is marking the same keys"
        )

    def _put_batch_once(self, conn: Any, ops: list[Op], now: float) -> list[Any]:
        # The first op of the batch marking a key may take it; later ones with
        # the same key find it taken, as they would one transaction later.
        takers: dict[str, int] = {}
        skipped: set[int] = set()
        for index, op in enumerate(ops):
            mark = op.payload[2]
            if mark is not None:
                if mark[0] in takers:
                    skipped.add(index)
                else:
                    takers[mark[0]] = index

        def run() -> list[str]:
            if takers:
                taken = conn.execute(self._q["marked"], (list(takers), now)).fetchall()
                for (key,) in taken:
                    skipped.add(takers.pop(key))
            fresh = self._insert_items(conn, ops, skipped, now)
            if takers:
                order = sorted(takers)
                expires = [now + ops[takers[k]].payload[2][1] for k in order]
                if self._write_mark(conn, order, expires, now) != set(order):
                    raise _MarkRace  # someone committed a mark since our read
            cursor_rows = [op.payload[1] for op in ops if op.payload[1] is not None]
            if cursor_rows:
                self._write_cursors(conn, cursor_rows)
            return fresh

        needs_transaction = bool(takers) or any(op.payload[1] is not None for op in ops)
        if needs_transaction:
            self._committer.wake_previous()  # before our first round trip
            with conn.transaction():
                fresh = run()
        else:
            fresh = run()  # one statement: atomic on its own

        owner: list[int] = []
        keys: list[str] = []
        for index, op in enumerate(ops):
            if index not in skipped:
                for item in op.payload[0]:
                    owner.append(index)
                    keys.append(item.key)
        first: dict[str, int] = {}
        for position, key in enumerate(keys):
            first.setdefault(key, position)
        counts = [0] * len(ops)
        for key in fresh:
            counts[owner[first[key]]] += 1
        return [
            counts[i] if op.payload[2] is None else (counts[i], i not in skipped)
            for i, op in enumerate(ops)
        ]

    def _insert_items(self, conn: Any, ops: list[Op], skipped: set[int], now: float) -> list[str]:
        keys: list[str] = []
        bodies: list[str] = []
        origins: list[str] = []
        for index, op in enumerate(ops):
            if index in skipped:
                continue
            for item in op.payload[0]:
                keys.append(item.key)
                bodies.append(item.body)
                origins.append(item.origin)
        if not keys:
            return []
        params = {
            "ords": list(range(len(keys))),
            "keys": keys,
            "bodies": bodies,
            "origins": origins,
            "expires": now + self.settings.dedup_ttl,
            "now": now,
        }
        # The previous batch's callers run while we wait for the server.
        self._committer.wake_previous()
        return [r[0] for r in conn.execute(self._q["put"], params).fetchall()]

    def _write_mark(
        self, conn: Any, keys: Sequence[str], expires: Sequence[float], now: float
    ) -> set[str]:
        # The mark half of put_and_mark, after the items; tests replace it to
        # inject a failure between the two halves. Returns the keys it marked.
        rows = conn.execute(self._q["write_marks"], (list(keys), list(expires), now)).fetchall()
        return {r[0] for r in rows}

    def claim(self, limit: int, lease_seconds: float) -> list[ClaimedItem]:
        if limit <= 0:
            return []
        now = self._clock()
        params = {"now": now, "limit": limit, "until": now + lease_seconds}
        rows = self._fetchall("claim episodes", "claim", params)
        self._maybe_purge()
        return sorted((_item(r) for r in rows), key=lambda i: int(i.id))

    def ack(self, items: Sequence[ClaimedItem]) -> None:
        ids, _ = _ids_and_attempts(items)
        if ids:
            self._exec("acknowledge episodes", "ack", (ids,))

    def nack(self, items: Sequence[ClaimedItem], retry_at: float, error: str) -> None:
        ids, attempts = _ids_and_attempts(items)
        if ids:
            params = (retry_at, error, self.settings.max_attempts, ids, attempts)
            self._exec("reschedule episodes", "nack", params)

    def dead_letter(self, items: Sequence[ClaimedItem], error: str) -> None:
        ids, attempts = _ids_and_attempts(items)
        if ids:
            self._exec("dead-letter episodes", "dead_letter", (error, ids, attempts))

    def retry_dead(self, limit: int | None = None) -> int:
        cap = None if limit is None else max(0, limit)
        return self._rowcount("retry dead-lettered episodes", "retry_dead", (cap,))

    def peek(self, limit: int, *, dead: bool = False) -> list[ClaimedItem]:
        rows = self._fetchall("peek at the outbox", "peek", (dead, max(0, limit)))
        return [_item(r) for r in rows]

    def stats(self) -> OutboxStats:
        now = self._clock()
        depth, in_flight, dead, oldest = self._fetchone("read outbox stats", "stats", (now,))
        return OutboxStats(
            depth=int(depth),
            in_flight=int(in_flight),
            dead=int(dead),
            oldest_age_seconds=None if oldest is None else max(0.0, now - float(oldest)),
        )

    # ------------------------------------------------------------------ leases
    def acquire(self, key: str, owner: str, ttl_seconds: float) -> bool:
        now = self._clock()
        params = (key, owner, now + ttl_seconds, now)
        return self._fetchone("acquire a lease", "acquire", params) is not None

    def renew(self, key: str, owner: str, ttl_seconds: float) -> bool:
        now = self._clock()
        return self._rowcount("renew a lease", "renew", (now + ttl_seconds, key, owner, now)) > 0

    def release(self, key: str, owner: str) -> bool:
        now = self._clock()
        return self._rowcount("release a lease", "release", (key, owner, now)) > 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def batches(self) -> int:
        """Group-commit batches run so far."""
        return self._committer.batches

    def health(self) -> Health:
        if self._closed:
            return Health(ok=False, detail="closed")
        try:
            self._run("check health", lambda c: c.execute("SELECT 1").fetchone())
        except StateError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=self._where)

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "location": self._where, "table": self.table}

    def close(self) -> None:
        if self._closed:
            return
        self._committer.close()
        self._closed = True
        if self._own_pool:
            self._pool.close()
