"""State backends: cursors, dedup, durable outbox and leases.

:func:`open_state` builds the backend ``[runner.state]`` asks for; each
backend class is also constructible directly. ``check_driver(kind)`` tells
``validate`` and start-up whether the optional driver is installed without
importing it.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from ..errors import StateError
from .base import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_TABLE,
    ClaimedItem,
    Health,
    OutboxItem,
    OutboxSettings,
    OutboxStats,
    StateBackend,
)
from .drivers import KINDS, check_driver

if TYPE_CHECKING:
    from .file import FileState
    from .memory import MemoryState
    from .postgres import PostgresState
    from .redis import RedisState
    from .sqlite import SqliteState

# Backends are imported on first use: importing the package must not import
# every backend (sqlite3 alone is over a megabyte of resident memory that the
# default memory backend never uses, and a SQLite daemon never needs memory.py).
_LAZY = {
    "MemoryState": ".memory",
    "FileState": ".file",
    "SqliteState": ".sqlite",
    "PostgresState": ".postgres",
    "RedisState": ".redis",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


DEFAULT_STATE_DIR = "./var/connectors-state"
FILE_DEFAULT_NAME = "cursors.json"
SQLITE_DEFAULT_NAME = "state.db"


def default_path(kind: str, state_dir: str = DEFAULT_STATE_DIR) -> str | None:
    """Where ``file``/``sqlite`` state lives when ``path`` is not set."""
    if kind == "file":
        return os.path.join(state_dir, FILE_DEFAULT_NAME)
    if kind == "sqlite":
        return os.path.join(state_dir, SQLITE_DEFAULT_NAME)
    return None


def open_state(
    kind: str,
    *,
    path: str | None = None,
    url: str | None = None,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    state_dir: str = DEFAULT_STATE_DIR,
    settings: OutboxSettings | None = None,
) -> StateBackend:
    """Open the state backend ``kind`` (memory, file, sqlite, postgres, redis).

    ``path`` (file, sqlite) defaults to ``<state_dir>/cursors.json`` and
    ``<state_dir>/state.db``; relative paths are relative to the working
    directory, as in the Node runner. ``url`` is required for postgres and
    redis. Raises ``DriverMissingError`` when the driver is not installed and
    ``StateError`` (naming the host, never the password) when the backend
    cannot be opened.
    """
    check_driver(kind)
    if kind == "memory":
        from .memory import MemoryState

        return MemoryState(settings)
    if kind in ("file", "sqlite"):
        where = os.path.abspath(path or default_path(kind, state_dir) or "")
        if kind == "file":
            from .file import FileState

            return FileState(where, settings=settings)
        from .sqlite import SqliteState

        return SqliteState(where, settings=settings)
    if not url:
        raise StateError(f'state kind "{kind}" needs url')
    if kind == "postgres":
        from .postgres import PostgresState

        return PostgresState(url, table=table, schema=schema, settings=settings)
    from .redis import RedisState

    return RedisState(url, key_prefix=key_prefix, settings=settings)


__all__ = [
    "KINDS",
    "ClaimedItem",
    "FileState",
    "Health",
    "MemoryState",
    "OutboxItem",
    "OutboxSettings",
    "OutboxStats",
    "PostgresState",
    "RedisState",
    "SqliteState",
    "StateBackend",
    "check_driver",
    "default_path",
    "open_state",
]
