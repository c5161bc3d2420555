"""Crash tests: a real child process writes continuously and is SIGKILLed at random moments.

After every kill, before anything reopens the state: the cursor file is valid
JSON of a known version and the SQLite database passes ``PRAGMA
integrity_check``. Then every ``put()`` the child saw return is in the outbox
(unless the child's delivery thread had started acking it), each cursor
names an item that was queued with it (``put_and_set_cursor`` is atomic) and
is no older than the last one the child saw committed, and every dedup mark
names an item that was queued with it (``put_and_mark`` is atomic) while every
``put_and_mark`` the child saw return left its mark.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from statewave_runner.state import FileState, SqliteState

KILLS = 20

CHILD = textwrap.dedent(
    """
    import os, sys, threading, time
    from statewave_runner.state import FileState, OutboxItem, SqliteState

    kind, path, run = sys.argv[1], sys.argv[2], sys.argv[3]
    state = FileState(path) if kind == "file" else SqliteState(path)

    def say(line):
        os.write(1, (line + "\\n").encode())

    def writer(t):
        n = 0
        while True:
            key = f"{run}-{t}-{n}"
            item = [OutboxItem(key, '{"n": %d}' % n, f"crash/t{t}")]
            if t < 2:
                state.put_and_set_cursor(item, "crash", f"t{t}", key)
            elif t == 2:
                state.put(item)
            else:
                added, new = state.put_and_mark(item, "mark-" + key, 3600)
                assert (added, new) == (1, True)
            say(f"ok {key}")
            n += 1

    def deliverer():
        while True:
            batch = state.claim(8, 2.0)
            if not batch:
                time.sleep(0.005)
                continue
            keep, done = batch[:2], batch[2:]
            if done:
                say("acking " + " ".join(i.key for i in done))  # said before it happens
                state.ack(done)
            state.nack(keep, time.time() + 0.01, "sink unavailable")

    for t in range(4):
        threading.Thread(target=writer, args=(t,), daemon=True).start()
    threading.Thread(target=deliverer, daemon=True).start()
    say("ready")
    time.sleep(3600)
    """
)


def key_index(key: str) -> tuple[int, int]:
    run, _, n = key.split("-")
    return int(run), int(n)


class Child:
    """The child process and everything it printed, read continuously."""

    def __init__(self, script: Path, kind: str, path: Path, run: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), kind, str(path), str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().rstrip("\n")
            if line == "ready":
                self.ready.set()
            else:
                self.lines.append(line)

    def kill_after(self, delay: float) -> None:
        if not self.ready.wait(timeout=30):
            self.proc.kill()
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"child never became ready: {err}")
        time.sleep(delay)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL


def check_files_untouched_by_recovery(kind: str, path: Path) -> dict[str, str] | None:
    """What a crash left on disk, checked before anything reopens it."""
    db = Path(f"{path}.db") if kind == "file" else path
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    if kind != "file" or not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["version"] == 1
    assert all(isinstance(v, str) for v in doc["cursors"].values())
    return dict(doc["cursors"])


def marked_keys(kind: str, path: Path) -> set[str]:
    conn = sqlite3.connect(Path(f"{path}.db") if kind == "file" else path)
    try:
        return {key for (key,) in conn.execute("SELECT key FROM seen")}
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_sigkill_loses_no_acknowledged_put(kind: str, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / ("cursors.json" if kind == "file" else "state.db")
    rng = random.Random(f"{kind}-{os.getpid()}")
    acknowledged: set[str] = set()
    acking: set[str] = set()
    last_cursor: dict[str, tuple[int, int]] = {}
    total_acknowledged = 0

    for run in range(KILLS):
        child = Child(script, kind, path, run)
        child.kill_after(rng.uniform(0.02, 0.3))
        for line in child.lines:
            word, _, rest = line.partition(" ")
            if word == "ok":
                acknowledged.add(rest)
            elif word == "acking":
                acking.update(rest.split())
        total_acknowledged += sum(1 for line in child.lines if line.startswith("ok "))

        on_disk = check_files_untouched_by_recovery(kind, path)
        state = FileState(path) if kind == "file" else SqliteState(path)
        try:
            present = {i.key for i in state.peek(10**9)} | {
                i.key for i in state.peek(10**9, dead=True)
            }
            lost = acknowledged - present - acking
            assert not lost, f"run {run}: acknowledged puts missing: {sorted(lost)[:5]}"
            marks = marked_keys(kind, path)
            for mark in marks:
                # Atomic pair: never a mark without its item.
                item = mark.removeprefix("mark-")
                assert item in present or item in acking, f"run {run}: mark without item {item}"
            unmarked = {k for k in acknowledged if k.split("-")[1] == "3"} - {
                m.removeprefix("mark-") for m in marks
            }
            assert not unmarked, f"run {run}: acknowledged marks missing: {sorted(unmarked)[:5]}"
            cursors = state.list_cursors()
            for (ckind, name), cursor in cursors.items():
                assert ckind == "crash"
                # Atomic pair: the cursor's own item was queued with it.
                assert cursor in present or cursor in acking, cursor
                assert cursor.split("-")[1] == name[1:]
                # Never behind what the child saw committed.
                seen = [key_index(k) for k in acknowledged if k.split("-")[1] == name[1:]]
                if seen:
                    assert key_index(cursor) >= max(seen)
                last_cursor[name] = key_index(cursor)
            if on_disk is not None:
                # The file is complete and at most the last commit behind the database.
                for ref, value in on_disk.items():
                    name = ref.split("/")[1]
                    assert key_index(value) <= last_cursor[name]
                # And the reopen brought it up to date.
                mirrored = json.loads(path.read_text(encoding="utf-8"))["cursors"]
                assert mirrored == {f"{k}/{n}": v for (k, n), v in cursors.items()}
        finally:
            state.close()
        # Only this run's keys matter for the "not behind" check of the next run.
        acknowledged = {k for k in acknowledged if k in present}

    assert total_acknowledged > KILLS  # the child really was writing when it died
    # Whatever a killed child had claimed but not acked comes back after its lease.
    state = FileState(path) if kind == "file" else SqliteState(path, clock=lambda: time.time() + 60)
    try:
        if kind == "file":
            state._clock = lambda: time.time() + 60
        live = state.stats().depth
        reclaimed = 0
        while batch := state.claim(1000, 30):
            reclaimed += len(batch)
        assert reclaimed == live > 0
    finally:
        state.close()
