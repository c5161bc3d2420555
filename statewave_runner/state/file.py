"""Cursors in the Node runner's JSON file; everything else in SQLite beside it.

``path`` (default ``<state_dir>/cursors.json``) keeps the Node runner's format,
``{"version": 1, "cursors": {"<kind>/<name>": "<cursor>"}}``, so an operator
migrating from ``@statewavedev/connectors-runner`` keeps their cursors, and can
still read (and, with the runner stopped, edit) them. Dedup keys, the outbox
and leases live in ``<path>.db``, a SQLite database (see ``sqlite.py``).

Crash argument (docs/state.md has the long form). The SQLite database is the
source of truth, also for cursors; ``cursors.json`` is its mirror:

1. Every cursor change commits in a SQLite transaction together with whatever
   it must be atomic with (``put_and_set_cursor``'s items), and with two
   hashes in ``meta``: ``json_sha`` of the JSON the change produces and
   ``json_prev_sha`` of the JSON on disk before it.
2. After the commit, before the caller is woken, the JSON is rewritten:
   temp file -> fsync -> rename over ``path`` -> fsync the directory. So the
   file always holds a complete document, the old one or the new one.
3. On open: if the file's hash is ``json_sha`` the two agree. If it is
   ``json_prev_sha`` (or the file is missing) we crashed between 1 and 2: the
   database wins and the file is rewritten. Any other content was written by
   someone else while we were stopped (the Node runner, an operator's edit):
   the file wins and its cursors replace the database's.

An exclusive ``flock`` on ``<path>.lock`` keeps a second process off the same
files: the mirror has one writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import StateError, StateLockedError, StateVersionError
from ._group import Op
from .base import Health, OutboxSettings
from .sqlite import Conn, SqliteState, fsync_dir

log = logging.getLogger("statewave_runner.state")

CURRENT_VERSION = 1
ABSENT = "absent"
"""The hash recorded for "no file on disk"."""


def render_cursors(cursors: dict[tuple[str, str], str]) -> bytes:
    """The Node runner's on-disk document (``JSON.stringify(payload, null, 2)``)."""
    payload = {
        "version": CURRENT_VERSION,
        "cursors": {f"{kind}/{name}": value for (kind, name), value in sorted(cursors.items())},
    }
    return json.dumps(payload, indent=2, ensure_ascii=False).encode("utf-8")


def _sha(data: bytes | None) -> str:
    return ABSENT if data is None else hashlib.sha256(data).hexdigest()


def parse_cursors(path: str, data: bytes) -> dict[tuple[str, str], str]:
    """Validate a cursors document; raise ``StateError``/``StateVersionError`` naming ``path``."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(
            f"cursor state file at {path} is not valid JSON ({exc}); refusing to overwrite it. "
            "Inspect the file and either repair it or delete it to start fresh."
        ) from None
    if not isinstance(doc, dict):
        raise StateError(f"cursor state file at {path} is not a JSON object; refusing to use it.")
    version = doc.get("version")
    if isinstance(version, bool) or version != CURRENT_VERSION:
        raise StateVersionError(
            f"cursor state file at {path} has unsupported version={json.dumps(version)}. "
            f"Expected version={CURRENT_VERSION}. It was written by another release: "
            "upgrade statewave-runner, or move the file away to start fresh."
        )
    raw = doc.get("cursors")
    if not isinstance(raw, dict):
        raise StateError(
            f"cursor state file at {path} is missing the .cursors map; refusing to overwrite it."
        )
    out: dict[tuple[str, str], str] = {}
    for ref, value in raw.items():
        kind, sep, name = ref.partition("/")
        if not sep or not kind or not name:
            raise StateError(
                f"cursor state file at {path}: key {ref!r} is not of the form <kind>/<name>"
            )
        if not isinstance(value, str):
            raise StateError(f"cursor state file at {path}: cursor of {ref!r} is not a string")
        out[(kind, name)] = value
    return out


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data``: temp file, fsync, rename, fsync the directory."""
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read cursor state file at {path}: {exc.strerror}") from None


def _take_lock(lock_path: str, state_path: str) -> int:
    try:
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateError(f"cannot open lock file {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 32, 0).decode().strip()
            holder = f" (pid {int(text)})" if text else ""
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StateLockedError(
                f"cursor state file {state_path} is in use by another process{holder}; "
                "stop it first. To share state between processes use kind = "
                '"sqlite", "postgres" or "redis".'
            ) from None
        raise StateError(f"cannot lock {lock_path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass(frozen=True, slots=True)
class _Mirror:
    """What a committed batch must write to the JSON file."""

    data: bytes
    sha: str


class FileState(SqliteState):
    """Node-compatible ``cursors.json`` plus a SQLite database at ``<path>.db``."""

    kind = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        settings: OutboxSettings | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._mirror_error: str | None = None
        self._disk_sha = ABSENT
        self._lock_fd: int | None = _take_lock(self.path + ".lock", self.path)
        try:
            raw = _read_file(self.path)
            from_file = None if raw is None else parse_cursors(self.path, raw)
            self._remove_stale_temp_files()
            super().__init__(
                self.path + ".db", settings=settings, clock=clock, busy_timeout=busy_timeout
            )
            try:
                self._reconcile(raw, from_file)
            except BaseException:
                super().close()
                raise
        except BaseException:
            self._unlock()
            raise

    # ------------------------------------------------------------------ open
    def _remove_stale_temp_files(self) -> None:
        # Ours (<path>.tmp-<pid>) and the Node runner's (<path>.tmp-<pid>-<ms>)
        # from a crash between write and rename; we hold the lock, nobody else
        # is writing one.
        for tmp in glob.glob(glob.escape(self.path) + ".tmp-*"):
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _reconcile(self, raw: bytes | None, from_file: dict[tuple[str, str], str] | None) -> None:
        meta = dict(
            self._read("read meta", lambda c: c.execute("SELECT k, v FROM meta").fetchall())
        )
        file_sha = _sha(raw)
        current, previous = meta.get("json_sha"), meta.get("json_prev_sha")
        if current is None:
            if from_file is None:
                if self.list_cursors():
                    self._mirror_now()
                return
            # First open next to a file we never wrote: a Node runner's, or ours
            # with the database deleted. The file is all we know.
            self._import(from_file, file_sha)
            log.info("cursor state: imported %d cursors from %s", len(from_file), self.path)
            return
        if file_sha == current:
            self._disk_sha = file_sha
            return
        if from_file is None or file_sha == previous:
            # Crashed between the commit and the rename (or the file was
            # deleted): the database holds the truth.
            self._disk_sha = file_sha
            self._mirror_now()
            log.info("cursor state: rewrote %s from %s", self.path, self.db_path)
            return
        self._import(from_file, file_sha)
        log.warning(
            "cursor state: %s was changed while the runner was stopped; using its %d cursors",
            self.path,
            len(from_file),
        )

    def _import(self, cursors: dict[tuple[str, str], str], file_sha: str) -> None:
        rows = [(k, n, v) for (k, n), v in cursors.items()]

        def op(conn: Conn, now: float) -> None:
            conn.execute("DELETE FROM cursors")
            self._write_cursors(conn, rows, now)
            self._set_meta(conn, file_sha, file_sha)

        self._write(op)
        self._disk_sha = file_sha

    def _mirror_now(self) -> None:
        # A no-op write transaction that touches cursors: re-renders the file.
        self._write(lambda conn, now: None, touches_cursors=True)

    @staticmethod
    def _set_meta(conn: Conn, current: str, previous: str) -> None:
        conn.executemany(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            [("json_sha", current), ("json_prev_sha", previous)],
        )

    # ------------------------------------------------------------------ mirror
    def _before_commit(self, conn: Conn, ops: list[Op], now: float) -> object:
        if not any(op.touches_cursors for op in ops):
            return None
        rows = conn.execute("SELECT kind, name, cursor FROM cursors").fetchall()
        data = render_cursors({(k, n): v for k, n, v in rows})
        sha = _sha(data)
        if sha == self._disk_sha:
            return None
        self._set_meta(conn, sha, self._disk_sha)
        return _Mirror(data, sha)

    def _after_commit(self, token: object) -> None:
        if not isinstance(token, _Mirror):
            return
        try:
            self._write_mirror(token.data)
        except OSError as exc:
            # The change is committed in the database (the source of truth);
            # the next cursor change or the next open rewrites the file.
            self._mirror_error = f"cannot write {self.path}: {exc}"
            log.error("cursor state: %s", self._mirror_error)
            # The rename may have happened before the failure: remember what is
            # really on disk, so the next open recognises it.
            with contextlib.suppress(StateError):
                self._disk_sha = _sha(_read_file(self.path))
            return
        self._disk_sha = token.sha
        self._mirror_error = None

    def _write_mirror(self, data: bytes) -> None:
        write_atomically(self.path, data)

    # ------------------------------------------------------------------ lifecycle
    def health(self) -> Health:
        health = super().health()
        if health.ok and self._mirror_error is not None:
            return Health(ok=True, detail=f"{self.path} is stale: {self._mirror_error}")
        return Health(ok=health.ok, detail=self.path if health.ok else health.detail)

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "location": self.path, "database": self.db_path}

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._mirror_error is not None:
                with contextlib.suppress(StateError):
                    self._mirror_now()
        finally:
            super().close()
            self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __repr__(self) -> str:
        return f"FileState({self.path!r})"


def load_node_cursors(path: str) -> dict[tuple[str, str], str]:
    """Read a Node runner ``cursors.json`` without opening any state (for tools)."""
    raw = _read_file(path)
    return {} if raw is None else parse_cursors(path, raw)
