"""Shared helpers for the state tests: a fake clock, backend factories, cleanup."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statewave_runner.state import (
    FileState,
    MemoryState,
    OutboxItem,
    OutboxSettings,
    PostgresState,
    RedisState,
    SqliteState,
    StateBackend,
)

KINDS = ("memory", "file", "sqlite", "postgres", "redis")


class FakeClock:
    """A settable unix clock, shared by every backend instance of a test."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class Env:
    """One backend under test, plus how to open more instances on the same storage."""

    kind: str
    clock: FakeClock
    opener: Callable[[OutboxSettings | None], Any]
    shared: bool
    """Whether a second instance sees the same state (sqlite, postgres, redis)."""
    server_clock: bool
    """Dedup and lease TTLs follow the server's clock (redis), not ``clock``."""
    opened: list[Any] = field(default_factory=list)
    state: Any = None

    def open(self, settings: OutboxSettings | None = None) -> Any:
        backend = self.opener(settings)
        self.opened.append(backend)
        return backend

    def peer(self) -> Any:
        """Another instance on the same storage if the backend allows it, else the same one."""
        return self.open(self.state.settings) if self.shared else self.state

    def reopen(self, settings: OutboxSettings | None = None) -> Any:
        self.state.close()
        self.state = self.open(settings or self.state.settings)
        return self.state

    def expire(self, seconds: float) -> None:
        """Let ``seconds`` pass for every clock the backend uses."""
        self.clock.advance(seconds)
        if self.server_clock:
            time.sleep(seconds)

    def close_all(self) -> None:
        for backend in self.opened:
            with contextlib.suppress(Exception):
                backend.close()


def items(*keys: str, origin: str = "test/one") -> list[OutboxItem]:
    return [OutboxItem(key=k, body=f'{{"k": "{k}"}}', origin=origin) for k in keys]


def drop_postgres_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def drop_postgres_tables(url: str, base: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for suffix in ("_cursors", "_outbox", "_outbox_keys", "_seen", "_leases"):
            conn.execute(f'DROP TABLE IF EXISTS "{base}{suffix}"')


def delete_redis_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextlib.contextmanager
def make_env(kind: str, request: Any, tmp_path: Path, unique_name: str) -> Iterator[Env]:
    clock = FakeClock()
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    opener: Callable[[OutboxSettings | None], StateBackend]
    if kind == "memory":
        opener = lambda s: MemoryState(s, clock=clock)  # noqa: E731
    elif kind == "file":
        path = str(tmp_path / "state" / "cursors.json")
        opener = lambda s: FileState(path, settings=s, clock=clock)  # noqa: E731
    elif kind == "sqlite":
        path = str(tmp_path / "state.db")
        opener = lambda s: SqliteState(path, settings=s, clock=clock)  # noqa: E731
    elif kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        opener = lambda s: PostgresState(  # noqa: E731
            url, schema=unique_name, settings=s, clock=clock, pool_size=2
        )
        cleanup = lambda: drop_postgres_schema(url, unique_name)  # noqa: E731
    elif kind == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"{unique_name}:"
        opener = lambda s: RedisState(url, key_prefix=prefix, settings=s, clock=clock)  # noqa: E731
        cleanup = lambda: delete_redis_prefix(url, prefix)  # noqa: E731
    else:  # pragma: no cover
        raise ValueError(kind)
    env = Env(
        kind=kind,
        clock=clock,
        opener=opener,
        shared=kind in ("sqlite", "postgres", "redis"),
        server_clock=kind == "redis",
    )
    try:
        env.state = env.open(OutboxSettings(max_attempts=3))
        yield env
    finally:
        env.close_all()
        cleanup()
