"""Crashes and outages through the real daemon process (issue 7 at daemon level).

SIGKILL with Statewave down, SIGKILL with a batch in flight, SIGKILL right
after a tick, and a Statewave outage the daemon lives through. SQLite state
(durable across SIGKILL); the fake Statewave and GitHub run in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon import Daemon, running
from .e2e_world import API_KEY, GH_TOKEN, World, wait_for
from .fakes import FakeStatewave
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
