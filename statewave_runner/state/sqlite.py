"""Everything in one SQLite database: WAL, ``synchronous=FULL``, group commit.

Writes (puts, cursor changes, claims, acks, dedup marks, leases) go through
one :class:`GroupCommitter`: concurrent callers share a transaction and its
single fsync, each operation inside its own savepoint so one failing
operation does not fail its neighbours. A call returns only after the
``COMMIT`` that contains it, and with ``synchronous=FULL`` in WAL mode a
commit is on disk (the WAL is fsynced) before ``COMMIT`` returns: survives
``kill -9`` and power loss. Reads use their own connections and never wait for
a writer (WAL).

Several processes may share one database file (SQLite's own locking
serializes their write transactions); the ``file`` backend adds a process
lock on top because its JSON mirror has a single writer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import StateError, StateVersionError
from ._group import GroupCommitter, Op
from .base import ClaimedItem, Health, OutboxItem, OutboxSettings, OutboxStats

log = logging.getLogger("statewave_runner.state")

SCHEMA_VERSION = 1

PURGE_INTERVAL = 30.0
"""Seconds between two bounded purges of expired dedup keys and leases."""
PURGE_CHUNK = 1000
"""Rows one purge deletes at most per table: no stop-the-world sweep."""
CACHE_KIB = 512
"""Page cache per connection, in KiB (``PRAGMA cache_size``; SQLite's default is 2,000).

A connection keeps its cache full for good: after a burst of a few thousand
episodes the default left ~3.7 MB resident for the writer and a reader; this
bound leaves ~1.3 MB. The outbox works at its two ends and the OS page cache
backs the rest, so a bigger cache buys no measurable throughput."""
MARKED_MEMORY = 16384
"""Dedup keys this instance committed or read as marked, kept in memory with
their expiry so that ``contains`` answers a retry without a database read.

Bounded because it lives as long as the daemon: ~140 bytes a key, so ~2.3 MB
when full (65,536 would be ~9 MB, a third of the idle daemon). Slack retries
arrive within minutes, and 16,384 keys cover minutes even at thousands of
deliveries a second; an older retry costs one read, as before."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    cursor TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires_at);
CREATE TABLE IF NOT EXISTS outbox_keys (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_keys_expires ON outbox_keys (expires_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, -- AUTOINCREMENT: ids are never reused
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_at REAL NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_live ON outbox (dead, id);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
) WITHOUT ROWID;
"""

Conn = sqlite3.Connection
Payload = Callable[[Conn, float], Any]


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


def _ids_and_attempts(items: Sequence[ClaimedItem]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for item in items:
        try:
            out.append((int(item.id), item.attempts))
        except ValueError:
            continue  # not one of ours: nothing to act on
    return out


def fsync_dir(path: str) -> None:
    """fsync a directory so a file created or renamed in it survives power loss."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CHUNK = 200
"""Rows per multi-row statement: 4 variables a row stays below SQLite's oldest
limit of 999 variables per statement."""


@functools.lru_cache(maxsize=256)
def _sql_present(table: str, n: int) -> str:
    marks = ", ".join("?" * n)
    return f"SELECT key FROM {table} WHERE key IN ({marks}) AND expires_at > ?"  # noqa: S608


@functools.lru_cache(maxsize=256)
def _sql_set_expiry(table: str, n: int) -> str:
    # Callers pass only keys found absent or expired in this transaction, so
    # the upsert never shortens an unexpired entry.
    rows = ", ".join(["(?, ?)"] * n)
    return (
        f"INSERT INTO {table} (key, expires_at) VALUES {rows} "  # noqa: S608 - placeholders
        "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
    )


@functools.lru_cache(maxsize=256)
def _sql_present_both(marks: int, keys: int) -> str:
    # Which event keys are marked and which idempotency keys are queued, in
    # one statement (one sqlite3_step when, as usual, neither is).
    m = ", ".join("?" * marks)
    k = ", ".join("?" * keys)
    return (
        f"SELECT 0, key FROM seen WHERE key IN ({m}) AND expires_at > ? "  # noqa: S608
        f"UNION ALL SELECT 1, key FROM outbox_keys WHERE key IN ({k}) AND expires_at > ?"
    )


@functools.lru_cache(maxsize=256)
def _sql_items(n: int) -> str:
    rows = ", ".join(["(?, ?, ?, ?)"] * n)
    return f"INSERT INTO outbox (key, body, origin, enqueued_at) VALUES {rows}"  # noqa: S608


class _Put:
    """A put, put_and_set_cursor or put_and_mark as a group-commit payload.

    The batch runs all of a batch's puts together (``SqliteState._put_many``);
    called on its own (the per-operation retry that isolates a failure) it
    runs alone.
    """

    __slots__ = ("cursor", "expires", "items", "mark", "state")

    def __init__(
        self,
        state: SqliteState,
        items: list[OutboxItem],
        cursor: tuple[str, str, str] | None,
        mark: tuple[str, float] | None,
    ) -> None:
        self.state = state
        self.items = items
        self.cursor = cursor
        self.mark = mark
        self.expires = 0.0
        """The expiry its mark was given (put_and_mark, when the key was new)."""

    def __call__(self, conn: Conn, now: float) -> Any:
        return self.state._put_many(conn, [self], now)[0]


class SqliteState:
    """The state contract in one SQLite file at ``path`` (created if missing)."""

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        settings: OutboxSettings | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 30.0,
    ) -> None:
        self.settings = settings or OutboxSettings()
        self.db_path = os.path.abspath(os.fspath(path))
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._readers: list[Conn] = []
        self._all_conns: list[Conn] = []
        self._rlock = threading.Lock()
        self._closed = False
        self._marked: dict[str, float] = {}
        self._marked_lock = threading.Lock()
        self._last_purge = float("-inf")
        self._writer = self._open_db()
        self._committer = GroupCommitter(self._run_batch, f"{self.kind} state {self.db_path}")

    # ------------------------------------------------------------------ plumbing
    def _where(self) -> str:
        return f"SQLite state at {self.db_path}"

    def _wrap(self, exc: BaseException, doing: str) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            err = StateError(f"{self._where()}: {doing} failed: {exc}")
            err.__cause__ = exc
            return err
        return exc

    def _connect(self) -> Conn:
        conn = sqlite3.connect(
            self.db_path,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
            cached_statements=1024,  # the multi-row statements come in many sizes
        )
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        return conn

    def _open_db(self) -> Conn:
        directory = os.path.dirname(self.db_path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StateError(f"{self._where()}: cannot create {directory}: {exc}") from None
        existed = os.path.exists(self.db_path)
        try:
            conn = self._connect()
            self._all_conns.append(conn)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StateError(
                    f"{self._where()}: cannot use WAL journaling (got {mode!r}); "
                    "put the state on a local file system"
                )
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateVersionError(
                    f"{self._where()}: schema version {version} is newer than this release "
                    f"understands ({SCHEMA_VERSION}); upgrade statewave-runner or use another path"
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Not executescript(): it would COMMIT our BEGIN IMMEDIATE.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            self._close_conns()
            raise StateError(
                f"{self._where()}: cannot open the database ({exc}); "
                "if the file is not a SQLite database or is corrupt, move it away"
            ) from None
        except BaseException:
            self._close_conns()
            raise
        if not existed:
            fsync_dir(directory)  # the new file's directory entry must survive power loss
        return conn

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Conn]:
        if self._closed:
            raise StateError(f"{self._where()} is closed")
        with self._rlock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                raise self._wrap(exc, "open a read connection") from None
            with self._rlock:
                self._all_conns.append(conn)
        try:
            yield conn
        finally:
            with self._rlock:
                self._readers.append(conn)

    def _read(self, doing: str, fn: Callable[[Conn], Any]) -> Any:
        with self._reader() as conn:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise self._wrap(exc, doing) from None

    def _write(self, payload: Payload, *, touches_cursors: bool = False) -> Any:
        if self._closed:
            raise StateError(f"{self._where()} is closed")
        return self._committer.submit(payload, touches_cursors=touches_cursors)

    def _run_batch(self, ops: list[Op]) -> None:
        now = self._clock()
        # Optimistic first: the whole batch in one transaction, no savepoints.
        # If one operation fails, roll back and run the batch again with a
        # savepoint around each operation, so only the failing one fails.
        if len(ops) == 1 or not self._attempt(ops, now, isolate=False):
            self._attempt(ops, now, isolate=len(ops) > 1)

    def _attempt(self, ops: list[Op], now: float, *, isolate: bool) -> bool:
        """One transaction over ``ops``; False (nothing settled) to ask for isolation."""
        conn = self._writer
        pending: list[tuple[Op, Any]] = []
        current: Op | None = None
        puts: list[Op] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                if not isolate and type(op.payload) is _Put:
                    puts.append(op)  # run together below, a few statements for all of them
                    continue
                current = op
                if isolate:
                    conn.execute("SAVEPOINT op")
                try:
                    result = op.payload(conn, now)
                except Exception as exc:
                    if not isolate:
                        if len(ops) > 1:
                            conn.execute("ROLLBACK")
                            return False
                        raise
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    op.fail(self._wrap(exc, "write"))
                    continue
                if isolate:
                    conn.execute("RELEASE op")
                pending.append((op, result))
            if puts:
                current = puts[0] if len(ops) == 1 else None
                try:
                    results = self._put_many(conn, [op.payload for op in puts], now)
                except Exception:
                    if len(ops) > 1:
                        conn.execute("ROLLBACK")
                        return False
                    raise
                pending.extend(zip(puts, results, strict=True))
            current = None
            token = self._before_commit(conn, [op for op, _ in pending], now)
            self._purge_some(conn, now)
            self._committer.wake_previous()  # they run while we wait for the fsync
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for op in ops:
                if op.done:
                    continue
                if op is current or len(ops) == 1:
                    op.fail(self._wrap(exc, "write"))
                else:
                    err = StateError(f"{self._where()}: write transaction failed: {exc}")
                    err.__cause__ = exc
                    op.fail(err)
            return True
        self._after_commit(token)
        for op, result in pending:
            op.succeed(result)
        return True

    def _before_commit(self, conn: Conn, ops: list[Op], now: float) -> object:
        """Hook inside the write transaction, after the batch's operations."""
        return None

    def _after_commit(self, token: object) -> None:
        """Hook after a successful COMMIT, before the callers are woken."""

    def _purge_some(self, conn: Conn, now: float) -> None:
        if now - self._last_purge < PURGE_INTERVAL:
            return
        self._last_purge = now
        for table in ("seen", "outbox_keys", "leases"):
            conn.execute(
                f"DELETE FROM {table} WHERE key IN "  # noqa: S608 - fixed table names
                f"(SELECT key FROM {table} WHERE expires_at <= ? LIMIT {PURGE_CHUNK})",
                (now,),
            )

    # ------------------------------------------------------------------ cursors
    def get_cursor(self, kind: str, name: str) -> str | None:
        row = self._read(
            "read a cursor",
            lambda c: c.execute(
                "SELECT cursor FROM cursors WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone(),
        )
        return None if row is None else str(row[0])

    def set_cursor(self, kind: str, name: str, cursor: str) -> None:
        def op(conn: Conn, now: float) -> None:
            self._write_cursors(conn, [(kind, name, cursor)], now)

        self._write(op, touches_cursors=True)

    def delete_cursor(self, kind: str, name: str) -> bool:
        def op(conn: Conn, now: float) -> bool:
            cur = conn.execute("DELETE FROM cursors WHERE kind = ? AND name = ?", (kind, name))
            return cur.rowcount > 0

        return bool(self._write(op, touches_cursors=True))

    def list_cursors(self) -> dict[tuple[str, str], str]:
        rows = self._read(
            "list cursors",
            lambda c: c.execute("SELECT kind, name, cursor FROM cursors").fetchall(),
        )
        return {(k, n): v for k, n, v in rows}

    def _write_cursors(self, conn: Conn, rows: Sequence[tuple[str, str, str]], now: float) -> None:
        # The cursor half of put_and_set_cursor, also used by set_cursor; tests
        # replace it to inject a failure between the two halves.
        conn.executemany(
            "INSERT INTO cursors (kind, name, cursor, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (kind, name) DO UPDATE SET "
            "cursor = excluded.cursor, updated_at = excluded.updated_at",
            [(k, n, c, now) for k, n, c in rows],
        )

    # ------------------------------------------------------------------ dedup
    def mark_if_new(self, key: str, ttl_seconds: float) -> bool:
        def op(conn: Conn, now: float) -> bool:
            rows = conn.execute(
                "INSERT INTO seen (key, expires_at) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE seen.expires_at <= ? RETURNING 1",
                (key, now + ttl_seconds, now),
            ).fetchall()
            return bool(rows)

        return bool(self._write(op))

    def contains(self, key: str) -> bool:
        now = self._clock()
        # A key marked in a committed transaction stays marked until its
        # expiry: nothing shortens or deletes an unexpired mark (the upserts
        # only replace expired ones, the purge only deletes expired ones), so
        # a key remembered with its expiry needs no read (and no GIL hand-off
        # to SQLite) until then.
        expires = self._marked.get(key)
        if expires is not None and expires > now:
            return True
        row = self._read(
            "look up a dedup key",
            lambda c: c.execute(
                "SELECT expires_at FROM seen WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone(),
        )
        if row is None:
            return False
        self._remember(key, float(row[0]))
        return True

    def _remember(self, key: str, expires: float) -> None:
        """Keep a committed mark's expiry in memory (the newest MARKED_MEMORY keys)."""
        marked = self._marked
        marked[key] = expires
        if len(marked) > MARKED_MEMORY:
            with self._marked_lock:
                while len(marked) > MARKED_MEMORY:
                    try:
                        oldest = next(iter(marked))
                    except RuntimeError:  # another thread added a key meanwhile
                        continue
                    marked.pop(oldest, None)

    # ------------------------------------------------------------------ outbox
    def _put_many(self, conn: Conn, puts: Sequence[_Put], now: float) -> list[Any]:
        """Run several puts in the open transaction, as if one after the other.

        A handful of statements for the whole group, whatever its size: one
        SELECT for which of their event keys are marked and which of their
        idempotency keys are queued (usually returning nothing), then one
        multi-row INSERT for the new keys, one for the new items and one for
        the marks. Every statement releases the GIL while SQLite runs it
        (several times: reset, step, rowid), and taking it back competes with
        every other thread: per-put statements cost far more than the SQL
        itself. Returns each put's result.
        """
        # The first put of the group marking a key takes it; later ones with
        # the same key find it taken, as they would one transaction later.
        skipped: set[int] = set()
        takers: dict[str, int] = {}
        for index, p in enumerate(puts):
            if p.mark is not None:
                if p.mark[0] in takers:
                    skipped.add(index)
                else:
                    takers[p.mark[0]] = index
        # Inside the write transaction (BEGIN IMMEDIATE holds the database's
        # write lock, across processes too): nobody can mark a key or queue
        # an item between this read and our writes. The items of a put whose
        # key turns out marked are looked up too, and ignored.
        keys = [
            item.key for index, p in enumerate(puts) if index not in skipped for item in p.items
        ]
        marked, taken = self._present_both(conn, list(takers), keys, now)
        for key in marked:
            skipped.add(takers.pop(key))
        counts = [0] * len(puts)
        rows: list[Any] = []
        for index, p in enumerate(puts):
            if index in skipped:
                continue
            for item in p.items:
                if item.key in taken:
                    continue
                taken.add(item.key)  # a later copy in this group is a duplicate
                rows.append((item.key, item.body, item.origin))
                counts[index] += 1
        if rows:
            self._insert_items(conn, rows, now)
        if takers:
            marks: list[tuple[str, float]] = []
            for key, index in takers.items():
                put = puts[index]
                assert put.mark is not None
                put.expires = now + put.mark[1]
                marks.append((key, put.expires))
            self._write_mark(conn, marks)
        cursor_rows = [p.cursor for p in puts if p.cursor is not None]
        if cursor_rows:
            self._write_cursors(conn, cursor_rows, now)
        return [
            counts[i] if p.mark is None else (counts[i], i not in skipped)
            for i, p in enumerate(puts)
        ]

    def _present_both(
        self, conn: Conn, marks: list[str], keys: list[str], now: float
    ) -> tuple[set[str], set[str]]:
        """Which of ``marks`` are marked (seen) and which of ``keys`` are queued (outbox_keys)."""
        if not marks and not keys:
            return set(), set()
        if not marks or not keys or len(marks) + len(keys) > _CHUNK:
            return self._present(conn, "seen", marks, now), self._present(
                conn, "outbox_keys", keys, now
            )
        marked: set[str] = set()
        taken: set[str] = set()
        sql = _sql_present_both(len(marks), len(keys))
        for table, key in conn.execute(sql, (*marks, now, *keys, now)).fetchall():
            (taken if table else marked).add(key)
        return marked, taken

    def _present(self, conn: Conn, table: str, keys: list[str], now: float) -> set[str]:
        """Which of ``keys`` hold an unexpired entry in ``table`` (seen, outbox_keys)."""
        found: set[str] = set()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            sql = _sql_present(table, len(chunk))
            found.update(r[0] for r in conn.execute(sql, (*chunk, now)).fetchall())
        return found

    def _insert_items(self, conn: Conn, rows: list[Any], now: float) -> None:
        # New keys (absent, or their entry expired) take the dedup TTL; the
        # items are inserted in order, so their ids are too.
        expires = now + self.settings.dedup_ttl
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            n = len(chunk)
            conn.execute(
                _sql_set_expiry("outbox_keys", n), [v for r in chunk for v in (r[0], expires)]
            )
            conn.execute(_sql_items(n), [v for r in chunk for v in (*r, now)])

    def put(self, items: Sequence[OutboxItem]) -> int:
        items = list(items)
        if not items:
            if self._closed:
                raise StateError(f"{self._where()} is closed")
            return 0
        return int(self._write(_Put(self, items, None, None)))

    def put_and_set_cursor(
        self, items: Sequence[OutboxItem], kind: str, name: str, cursor: str | None
    ) -> int:
        if cursor is None:
            return self.put(items)
        put = _Put(self, list(items), (kind, name, cursor), None)
        return int(self._write(put, touches_cursors=True))

    def put_and_mark(
        self, items: Sequence[OutboxItem], key: str, ttl_seconds: float
    ) -> tuple[int, bool]:
        put = _Put(self, list(items), None, (key, ttl_seconds))
        added, new = self._write(put)
        if new:  # committed: remember it for contains()
            self._remember(key, put.expires)
        return int(added), bool(new)

    def _write_mark(self, conn: Conn, marks: list[tuple[str, float]]) -> None:
        # The mark half of put_and_mark (every put of the group: key, expiry),
        # after the items; tests replace it to inject a failure between the
        # two halves.
        for start in range(0, len(marks), _CHUNK):
            chunk = marks[start : start + _CHUNK]
            conn.execute(_sql_set_expiry("seen", len(chunk)), [v for m in chunk for v in m])

    def claim(self, limit: int, lease_seconds: float) -> list[ClaimedItem]:
        if limit <= 0:
            return []

        def op(conn: Conn, now: float) -> list[ClaimedItem]:
            rows = conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, lease_until = ? "
                "WHERE id IN (SELECT id FROM outbox WHERE dead = 0 AND retry_at <= ? "
                "AND lease_until <= ? ORDER BY id LIMIT ?) "
                "RETURNING id, key, body, origin, attempts, enqueued_at, last_error",
                (now + lease_seconds, now, now, limit),
            ).fetchall()
            return sorted((_item(r) for r in rows), key=lambda i: int(i.id))

        result: list[ClaimedItem] = self._write(op)
        return result

    def ack(self, items: Sequence[ClaimedItem]) -> None:
        ids = [(i,) for i, _ in _ids_and_attempts(items)]
        if ids:
            self._write(lambda conn, now: conn.executemany("DELETE FROM outbox WHERE id = ?", ids))

    def nack(self, items: Sequence[ClaimedItem], retry_at: float, error: str) -> None:
        rows = [
            (retry_at, error, self.settings.max_attempts, i, a) for i, a in _ids_and_attempts(items)
        ]
        if rows:
            self._write(
                lambda conn, now: conn.executemany(
                    "UPDATE outbox SET lease_until = 0, retry_at = ?, last_error = ?, "
                    "dead = (attempts >= ?) WHERE id = ? AND attempts = ? AND dead = 0",
                    rows,
                )
            )

    def dead_letter(self, items: Sequence[ClaimedItem], error: str) -> None:
        rows = [(error, i, a) for i, a in _ids_and_attempts(items)]
        if rows:
            self._write(
                lambda conn, now: conn.executemany(
                    "UPDATE outbox SET dead = 1, lease_until = 0, last_error = ? "
                    "WHERE id = ? AND attempts = ? AND dead = 0",
                    rows,
                )
            )

    def retry_dead(self, limit: int | None = None) -> int:
        cap = -1 if limit is None else max(0, limit)

        def op(conn: Conn, now: float) -> int:
            cur = conn.execute(
                "UPDATE outbox SET dead = 0, attempts = 0, retry_at = 0, lease_until = 0 "
                "WHERE id IN (SELECT id FROM outbox WHERE dead = 1 ORDER BY id LIMIT ?)",
                (cap,),
            )
            return cur.rowcount

        return int(self._write(op))

    def peek(self, limit: int, *, dead: bool = False) -> list[ClaimedItem]:
        rows = self._read(
            "peek at the outbox",
            lambda c: c.execute(
                "SELECT id, key, body, origin, attempts, enqueued_at, last_error "
                "FROM outbox WHERE dead = ? ORDER BY id LIMIT ?",
                (int(dead), max(0, limit)),
            ).fetchall(),
        )
        return [_item(r) for r in rows]

    def stats(self) -> OutboxStats:
        now = self._clock()

        def read(c: Conn) -> tuple[Any, ...]:
            live = c.execute(
                "SELECT count(*), coalesce(sum(lease_until > ?), 0), min(enqueued_at) "
                "FROM outbox WHERE dead = 0",
                (now,),
            ).fetchone()
            dead = c.execute("SELECT count(*) FROM outbox WHERE dead = 1").fetchone()
            return (*live, dead[0])

        depth, in_flight, oldest, dead = self._read("read outbox stats", read)
        return OutboxStats(
            depth=int(depth),
            in_flight=int(in_flight),
            dead=int(dead),
            oldest_age_seconds=None if oldest is None else max(0.0, now - float(oldest)),
        )

    # ------------------------------------------------------------------ leases
    def acquire(self, key: str, owner: str, ttl_seconds: float) -> bool:
        def op(conn: Conn, now: float) -> bool:
            rows = conn.execute(
                "INSERT INTO leases (key, owner, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at "
                "WHERE leases.owner = excluded.owner OR leases.expires_at <= ? RETURNING 1",
                (key, owner, now + ttl_seconds, now),
            ).fetchall()
            return bool(rows)

        return bool(self._write(op))

    def renew(self, key: str, owner: str, ttl_seconds: float) -> bool:
        def op(conn: Conn, now: float) -> bool:
            cur = conn.execute(
                "UPDATE leases SET expires_at = ? WHERE key = ? AND owner = ? AND expires_at > ?",
                (now + ttl_seconds, key, owner, now),
            )
            return cur.rowcount > 0

        return bool(self._write(op))

    def release(self, key: str, owner: str) -> bool:
        def op(conn: Conn, now: float) -> bool:
            cur = conn.execute(
                "DELETE FROM leases WHERE key = ? AND owner = ? AND expires_at > ?",
                (key, owner, now),
            )
            return cur.rowcount > 0

        return bool(self._write(op))

    # ------------------------------------------------------------------ lifecycle
    @property
    def batches(self) -> int:
        """Write transactions committed so far (one per group of concurrent writes)."""
        return self._committer.batches

    def health(self) -> Health:
        if self._closed:
            return Health(ok=False, detail="closed")
        try:
            self._read("check health", lambda c: c.execute("SELECT 1").fetchone())
        except StateError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=self.db_path)

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "location": self.db_path}

    def close(self) -> None:
        if self._closed:
            return
        self._committer.close()
        self._closed = True
        self._close_conns()

    def _close_conns(self) -> None:
        with self._rlock:
            conns, self._all_conns, self._readers = self._all_conns, [], []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
