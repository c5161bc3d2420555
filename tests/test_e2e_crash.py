"""Crashes and outages through the real daemon process (issue 7 at daemon level).

SIGKILL with Statewave down, SIGKILL with a batch in flight, SIGKILL right
after a tick, and a Statewave outage the daemon lives through. SQLite state
(durable across SIGKILL); the fake Statewave and GitHub run in this process.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon import Daemon, running
from .e2e_world import API_KEY, GH_TOKEN, SECRETS, World, check_wire, wait_for
from .fakes import Delay, FakeStatewave, Hang
from .fakes.github import FakeGitHub


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with FakeStatewave(API_KEY) as sw, FakeGitHub(token=GH_TOKEN) as gh:
        yield World(tmp_path, sw, gh)


def sqlite_state(world: World) -> str:
    return f'kind = "sqlite"\npath = "{world.tmp / "state" / "state.db"}"'


def queued_by_ticks(daemon: Daemon, kind: str) -> int:
    return sum(
        int(r.get("queued", 0))
        for r in daemon.records()
        if r.get("msg") == "tick complete" and r.get("kind") == kind
    )


def test_sigkill_right_after_a_tick_does_not_hold_the_source_for_the_next_process(
    world: World,
) -> None:
    """A killed process must not keep its sources' tick leases beyond their slot.

    Each checkpoint extends the tick lease by two minutes while the tick runs;
    if that extension outlives the tick, the restarted process (a new replica
    id) skips every tick of that source for up to two minutes.
    """
    world.seed(docs=2)
    config = world.config(state=sqlite_state(world), push=False)
    with running(config) as daemon:
        world.wait_all_delivered()
        wait_for(lambda: queued_by_ticks(daemon, "github") > 0, what="a github tick")
        daemon.kill()
    world.add_issue(11, day=21)
    world.add_doc("after-kill.md")
    with running(config) as daemon:
        world.wait_all_delivered(timeout=10)
        assert daemon.stop() == 0
    assert max(world.delivered().values()) == 1


def test_sigkill_while_statewave_is_down_then_everything_delivered_once(world: World) -> None:
    world.seed(docs=150)  # two batches of markdown alone
    config = world.config(state=sqlite_state(world))
    world.statewave.down()
    pushed = [world.slack_event(f"during the outage {i}") for i in range(30)]
    with running(config) as daemon:
        for body, _ in pushed:
            assert world.post_slack(daemon, body) == (200, {"ok": True})
        wait_for(lambda: queued_by_ticks(daemon, "markdown") == 150, what="markdown queued")
        wait_for(lambda: queued_by_ticks(daemon, "github") == 6, what="github queued")
        daemon.wait_log("Statewave delivery stalled")
        daemon.kill()
    assert world.statewave.request_count == 0
    world.statewave.up()
    with running(config) as daemon:
        world.wait_all_delivered()
        assert daemon.stop() == 0
    delivered = world.delivered()
    assert set(delivered) == set(world.expected) and len(world.expected) == 186
    assert max(delivered.values()) == 1
    check_wire(world.batch_requests(), world.expected)


@pytest.mark.slow
def test_sigkill_mid_delivery_duplicates_only_the_batch_in_flight(world: World) -> None:
    """Two kills, each with one batch in flight; then everything arrives.

    Kill 1: the batch in flight is held by a ``Delay``; the fake (like the real
    server) stores it although its client died, and the restarted runner
    cannot know, so it sends that batch again when its claim lease ends: the
    one allowed duplicate batch. Kill 2: the batch is held by a ``Hang``; the
    fake stores nothing, so only the redelivery after the lease can bring
    those episodes: it must. ``timeout = 0.5`` keeps the claim lease
    (30 x timeout) at 15 s so the test finishes in reasonable time.
    """
    config = world.config(state=sqlite_state(world), statewave={"timeout": 0.5})
    sw = world.statewave
    killed: list[set[str]] = []  # keys of the batch in flight at each kill

    def kill_with_batch_in_flight(daemon: Daemon) -> None:
        assert sw.wait_busy(20), "no batch went out"
        assert sw.in_flight == 1
        daemon.kill()
        index = sw.request_count  # nothing else runs: the held batch records next
        assert sw.wait_idle(10)
        assert sw.request_count == index + 1
        held = sw.requests[index]
        assert held.path == "/v1/episodes/batch"
        killed.append({ep["idempotency_key"] for ep in held.json()["episodes"]})

    # 1st process: takes Slack deliveries (delivered at once), then a markdown
    # backfill of 120 documents (two checkpoints); its first batch of 100 is
    # stored slowly, and the process dies once the tick itself is complete
    # (a kill inside a tick keeps that source's lease for two minutes).
    with running(config) as daemon:
        for i in range(40):
            body, _ = world.slack_event(f"before the kill {i}")
            assert world.post_slack(daemon, body) == (200, {"ok": True})
        world.wait_all_delivered()
        sw.script(Delay(2.0), path="/v1/episodes/batch")
        docs = {world.add_doc(f"doc-{i:03d}.md") for i in range(120)}
        assert sw.wait_busy(20), "no batch went out"
        wait_for(lambda: queued_by_ticks(daemon, "markdown") == 120, what="the backfill queued")
        kill_with_batch_in_flight(daemon)
    assert len(killed[0]) == 100 and killed[0] <= docs
    stored_at_kill = set(world.delivered())
    assert stored_at_kill == {k for k, v in world.expected.items() if v == "slack/team"} | killed[0]
    # 2nd process: claims the other 20 documents at once; that request is lost; it dies.
    sw.script(Hang(2.0), path="/v1/episodes/batch")
    with running(config) as daemon:
        kill_with_batch_in_flight(daemon)
    assert killed[1] == docs - killed[0]
    assert set(world.delivered()) == stored_at_kill  # the lost batch stored nothing
    # 3rd process: new upstream data and deliveries go out at once, the two
    # killed batches when their claim leases end.
    world.seed(docs=0)
    restarted = time.monotonic()
    with running(config) as daemon:
        for i in range(10):
            body, _ = world.slack_event(f"after the kills {i}")
            assert world.post_slack(daemon, body) == (200, {"ok": True})
        world.wait_all_delivered(timeout=40)
        print(f"all delivered {time.monotonic() - restarted:.1f}s after the last restart")
        time.sleep(1.0)  # anything still due would go out within a poll interval
        assert daemon.stop() == 0

    delivered = world.delivered()
    assert set(delivered) == set(world.expected) and len(world.expected) == 40 + 120 + 6 + 10
    assert not killed[0] & killed[1]
    duplicated = {k for k, n in delivered.items() if n > 1}
    # Exactly the batch that was stored while its sender died, once more; never more.
    assert duplicated == killed[0]
    assert max(delivered.values()) == 2
    check_wire(world.batch_requests(), world.expected, statuses=(201, None))


def test_statewave_outage_through_the_daemon(world: World) -> None:
    """Statewave down while pull and push produce; /readyz stays 200; all delivered once."""
    world.seed(docs=2)
    config = world.config(state=sqlite_state(world))
    sw = world.statewave
    ready: list[int] = []
    stop_polling = threading.Event()

    def poll_readyz(daemon: Daemon) -> None:
        while not stop_polling.is_set():
            ready.append(daemon.get("/readyz")[0])
            time.sleep(0.05)

    def outage(daemon: Daemon) -> None:
        world.wait_all_delivered()
        sw.down()
        for i in range(60):
            world.add_doc(f"outage-{i}.md")
        world.add_issue(20, day=25)
        world.add_comment(20, 7020, day=26)
        for i in range(25):
            body, _ = world.slack_event(f"outage {i}")
            assert world.post_slack(daemon, body) == (200, {"ok": True})
        stalled = daemon.wait_log("Statewave delivery stalled")
        assert stalled["level"] == "warn"
        assert f"cannot reach Statewave at {sw.url}" in stalled["msg"]
        assert "pulls and webhooks keep being accepted" in stalled["msg"]
        wait_for(lambda: queued_by_ticks(daemon, "markdown") >= 62, what="outage docs queued")
        wait_for(lambda: queued_by_ticks(daemon, "github") >= 6 + 2, what="outage issue queued")
        metrics = daemon.get("/metrics")[1].decode()
        depth = re.search(r"^statewave_runner_outbox_depth (\S+)$", metrics, re.M)
        assert depth is not None and float(depth.group(1)) >= 60 + 2 + 25
        assert world.statewave.episode_count == 2 + 6  # only what came before the outage
        sw.up()
        world.wait_all_delivered()
        daemon.wait_log("Statewave delivery recovered")

    with running(config) as daemon:
        poller = threading.Thread(target=poll_readyz, args=(daemon,), daemon=True)
        poller.start()
        try:
            outage(daemon)
        finally:
            stop_polling.set()
            poller.join(5)
        assert daemon.stop() == 0
    assert len(ready) > 20 and set(ready) == {200}
    delivered = world.delivered()
    assert set(delivered) == set(world.expected)
    assert max(delivered.values()) == 1
    check_wire(world.batch_requests(), world.expected)
    for secret in SECRETS:
        assert secret not in daemon.stderr
