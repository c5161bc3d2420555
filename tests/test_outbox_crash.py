"""SIGKILL the delivering process, restart it, check nothing is lost and duplicates are bounded.

Real processes, real signals, a durable SQLite outbox, the fake Statewave in
this process. Needs ``statewave_runner.state.sqlite`` (issue 6).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import Delay, FakeStatewave

pytest.importorskip(
    "statewave_runner.state.sqlite",
    reason="needs state.sqlite (issue 6; lands from the state branch)",
)

ROOT = Path(__file__).resolve().parent.parent
KEY = "sw-crash-key-1"
BATCH = 100

CHILD = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {root!r})
    from statewave_runner.connectors.base import SourcePointer, make_episode
    from statewave_runner.ingest import HttpSink
    from statewave_runner.outbox import DeliveryWorker, outbox_item

    def open_sqlite(path):
        try:
            from statewave_runner.state import open_state
            return open_state("sqlite", path=path)
        except (ImportError, TypeError):
            from statewave_runner.state.sqlite import SqliteState
            return SqliteState(path)

    args = json.loads(sys.argv[1])
    state = open_sqlite(args["db"])
    if args["produce"]:
        for start in range(0, args["produce"], 100):
            items = []
            for n in range(start, min(start + 100, args["produce"])):
                episode = make_episode(
                    subject="crash:test", kind="event", text="event %d" % n,
                    source=SourcePointer("crash.event", str(n)),
                    occurred_at=1_700_000_000_000 + n, key_parts=["crash", n],
                )
                items.append(outbox_item(episode, "crash/test"))
            state.put(items)
        print("queued", flush=True)
    worker = DeliveryWorker(
        state,
        HttpSink(args["url"], api_key=args["key"], timeout=2),
        batch_size={batch},
        concurrency=1,
        lease_seconds=1.5,
        backoff_initial=0.05,
        backoff_max=0.3,
        poll_interval=0.05,
        probe_interval=0.2,
    )
    worker.start()
    print("started", flush=True)
    while True:
        time.sleep(1)
    """
).format(root=str(ROOT), batch=BATCH)


def spawn(db: Path, url: str, produce: int = 0) -> subprocess.Popen[str]:
    args = json.dumps({"db": str(db), "url": url, "key": KEY, "produce": produce})
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    expect = ["queued", "started"] if produce else ["started"]
    for word in expect:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != word:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"child said {line!r}, expected {word!r}:\n{err}")
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def keys_of(n: int) -> set[str]:
    from statewave_runner.connectors.base import idempotency_key

    return {idempotency_key("crash", i) for i in range(n)}


@pytest.fixture
def fake() -> Iterator[FakeStatewave]:
    with FakeStatewave(KEY) as server:
        yield server


@pytest.mark.slow
def test_sigkill_while_statewave_is_down_loses_nothing_duplicates_nothing(
    fake: FakeStatewave, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    fake.down()
    proc = spawn(db, fake.url, produce=2000)
    time.sleep(0.5)  # the worker is stalled, probing a dead server
    kill(proc)
    fake.up()
    proc = spawn(db, fake.url)
    try:
        assert fake.wait_for_episodes(2000, timeout=60)
        time.sleep(0.5)
    finally:
        kill(proc)
    delivered = Counter(fake.idempotency_keys())
    assert set(delivered) == keys_of(2000)
    assert max(delivered.values()) == 1


@pytest.mark.slow
def test_sigkill_mid_delivery_repeatedly_duplicates_at_most_one_batch_per_kill(
    fake: FakeStatewave, tmp_path: Path
) -> None:
    total = 3000
    db = tmp_path / "state.db"
    fake.persistent = Delay(0.05)  # keep a batch in flight most of the time
    rng = random.Random(7)
    proc = spawn(db, fake.url, produce=total)
    kills = 0
    try:
        while kills < 8 and fake.episode_count < total:
            time.sleep(rng.uniform(0.1, 0.5))
            kill(proc)
            kills += 1
            proc = spawn(db, fake.url)
        assert fake.wait_for_episodes(total, timeout=90)
        fake.wait_idle()
        time.sleep(2.0)  # leases of the last kill expire; nothing more may arrive
    finally:
        kill(proc)
    assert fake.wait_idle()
    delivered = Counter(fake.idempotency_keys())
    assert set(delivered) == keys_of(total)
    duplicates = sum(count - 1 for count in delivered.values())
    assert kills >= 3
    assert duplicates <= kills * BATCH
