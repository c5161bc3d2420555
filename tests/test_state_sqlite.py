"""SQLite-specific behaviour: pragmas, group commit, processes sharing a file, purging."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from statewave_runner.errors import StateError, StateVersionError
from statewave_runner.state import SqliteState, open_state
from statewave_runner.state import sqlite as sqlite_mod

from .state_helpers import FakeClock, items


def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    s = SqliteState(tmp_path / "s.db")
    try:
        conn = s._writer
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with s._reader() as reader:
            assert reader.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        s.close()


def test_page_cache_is_bounded(tmp_path: Path) -> None:
    # A connection keeps its cache full for good: idle RSS after a burst.
    s = SqliteState(tmp_path / "s.db")
    try:
        want = -sqlite_mod.CACHE_KIB
        assert s._writer.execute("PRAGMA cache_size").fetchone()[0] == want
        with s._reader() as reader:
            assert reader.execute("PRAGMA cache_size").fetchone()[0] == want
    finally:
        s.close()


def test_group_commit_shares_transactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = SqliteState(tmp_path / "s.db")
    real = s._run_batch
    sizes: list[int] = []

    def slow_batch(ops: list[Any]) -> None:
        sizes.append(len(ops))
        time.sleep(0.05)  # a slow disk: everyone arriving meanwhile joins the next batch
        real(ops)

    monkeypatch.setattr(s._committer, "_run_batch", slow_batch)
    barrier = threading.Barrier(32)
    counts: list[int] = []

    def worker(i: int) -> None:
        barrier.wait()
        counts.append(s.put(items(f"k{i}")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(counts) == 32 and sum(sizes) == 32
        assert len(sizes) <= 4, sizes  # 32 puts, a handful of transactions
        assert max(sizes) >= 16
        assert s.stats().depth == 32
    finally:
        s.close()


def test_processes_sharing_one_file_mark_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    SqliteState(path).close()
    child = textwrap.dedent(
        """
        import sys
        from statewave_runner.state import SqliteState, OutboxItem
        s = SqliteState(sys.argv[1])
        won = [k for k in range(60) if s.mark_if_new(f"evt-{k}", 600)]
        added = sum(s.put([OutboxItem(f"item-{k}", "{}")]) for k in range(60))
        s.close()
        print(len(won), added)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child, str(path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o[0]) for o in outputs) == 60
    assert sum(int(o[1]) for o in outputs) == 60
    s = SqliteState(path)
    try:
        assert s.stats().depth == 60
    finally:
        s.close()


def test_expired_keys_are_purged_in_bounded_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "PURGE_CHUNK", 100)
    clock = FakeClock()
    s = SqliteState(tmp_path / "s.db", clock=clock)
    try:
        for n in range(250):
            s.mark_if_new(f"evt-{n}", 1)
        count = lambda: s._writer.execute("SELECT count(*) FROM seen").fetchone()[0]  # noqa: E731
        assert count() == 250
        clock.advance(sqlite_mod.PURGE_INTERVAL + 2)
        s.mark_if_new("fresh", 3600)  # a write transaction triggers one bounded purge
        assert count() == 250 - 100 + 1
        s.mark_if_new("fresh2", 3600)  # within the interval: no purge
        assert count() == 152
        clock.advance(sqlite_mod.PURGE_INTERVAL)
        s.mark_if_new("fresh3", 3600)
        assert count() == 53
        # Purging never removes live keys.
        assert not s.mark_if_new("fresh", 3600)
    finally:
        s.close()


def test_committed_marks_are_remembered_until_they_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "MARKED_MEMORY", 3)
    clock = FakeClock()
    s = SqliteState(tmp_path / "s.db", clock=clock)
    try:
        assert s.put_and_mark(items("a"), "evt-0", 10) == (1, True)
        assert s._marked == {"evt-0": clock() + 10}  # the expiry the row was given
        reads: list[str] = []
        real_read = s._read
        monkeypatch.setattr(
            s, "_read", lambda doing, fn: reads.append(doing) or real_read(doing, fn)
        )
        assert s.contains("evt-0") and reads == []  # answered from memory
        # A failed or duplicate put_and_mark remembers nothing new.
        assert s.put_and_mark(items("b"), "evt-0", 10) == (0, False)
        assert list(s._marked) == ["evt-0"]
        # A key another instance marked is read once, then remembered.
        other = SqliteState(tmp_path / "s.db", clock=clock)
        try:
            assert other.mark_if_new("evt-x", 10)
        finally:
            other.close()
        assert s.contains("evt-x") and len(reads) == 1
        assert s.contains("evt-x") and len(reads) == 1
        assert not s.contains("evt-unknown") and len(reads) == 2
        # The newest MARKED_MEMORY keys only.
        for n in (1, 2, 3):
            assert s.put_and_mark([], f"evt-{n}", 10) == (0, True)
        assert list(s._marked) == ["evt-1", "evt-2", "evt-3"]
        assert s.contains("evt-0") and len(reads) == 3  # forgotten: read again
        # Expired in memory exactly when the row is.
        assert "evt-3" in s._marked
        clock.advance(10)
        assert not s.contains("evt-3") and len(reads) == 4
        assert s.put_and_mark(items("c"), "evt-3", 10) == (1, True)
    finally:
        s.close()


def test_ids_are_never_reused(tmp_path: Path) -> None:
    s = SqliteState(tmp_path / "s.db")
    try:
        s.put(items("a"))
        delivered = s.claim(1, 30)
        s.ack(delivered)
        s.put(items("b"))
        (newer,) = s.peek(1)
        assert int(newer.id) > int(delivered[0].id)
        s.ack(delivered)  # a late duplicate ack must not touch b
        assert [i.key for i in s.peek(10)] == ["b"]
    finally:
        s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteState(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StateVersionError, match="schema version 99"):
        SqliteState(path)


def test_not_a_database_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=str(path)):
        SqliteState(path)
    assert path.read_bytes() == b"this is not sqlite" * 100


def test_open_state_default_path(tmp_path: Path) -> None:
    s = open_state("sqlite", state_dir=str(tmp_path / "var"))
    try:
        assert isinstance(s, SqliteState)
        assert s.describe()["location"] == str(tmp_path / "var" / "state.db")
    finally:
        s.close()
