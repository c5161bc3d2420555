"""End to end through the real daemon: ``python -m statewave_runner run`` as a child process.

markdown + github (the fake GitHub API via ``api_url``) + a Slack receiver,
delivering to the fake Statewave, with SQLite and PostgreSQL state. The oracle
is the set of idempotency keys the upstream data must produce (computed in
``e2e_world`` from the Node key recipes): each must reach Statewave exactly
once, in the server's wire format, across a restart.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .daemon import Daemon, running
from .e2e_world import (
    API_KEY,
    GH_TOKEN,
    SECRETS,
    World,
    check_wire,
    wait_for,
)
from .fakes import FakeStatewave
from .fakes.github import FakeGitHub


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with FakeStatewave(API_KEY) as sw, FakeGitHub(token=GH_TOKEN) as gh:
        yield World(tmp_path, sw, gh)


@dataclass
class StateUnderTest:
    kind: str
    toml: str
    db_path: Path | None = None
    pg_url: str | None = None
    schema: str | None = None
    table_base: str | None = None


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[Any]:
    if request.param == "sqlite":
        db = tmp_path / "state" / "state.db"
        yield StateUnderTest("sqlite", f'kind = "sqlite"\npath = "{db}"', db_path=db)
        return
    url: str = request.getfixturevalue("postgres_url")
    # A lock the test holds must make the daemon's write fail soon, not hang:
    # libpq's `options` sets lock_timeout for the daemon's sessions only.
    sep = "&" if "?" in url else "?"
    daemon_url = f"{url}{sep}options=-c%20lock_timeout%3D300"
    toml = (
        f'kind = "postgres"\nurl = "{daemon_url}"\n'
        f'schema = "{unique_name}"\ntable = "{unique_name}_cursors"'
    )
    try:
        yield StateUnderTest(
            "postgres", toml, pg_url=url, schema=unique_name, table_base=unique_name
        )
    finally:
        _drop_schema(url, unique_name)


def _ticks(daemon: Daemon, kind: str) -> list[dict[str, Any]]:
    return [
        r for r in daemon.records() if r.get("msg") == "tick complete" and r.get("kind") == kind
    ]


def test_every_episode_once_in_wire_format_and_restart_resumes_from_cursors(
    world: World, state: StateUnderTest
) -> None:
    world.seed(docs=3)
    config = world.config(state=state.toml)
    first_slack = [world.slack_event(f"before restart {i}") for i in range(4)]

    with running(config) as daemon:
        for body, _ in first_slack:
            assert world.post_slack(daemon, body) == (200, {"ok": True})
        world.wait_all_delivered()
        # A later tick of each source finds nothing new: markdown by content
        # hash, GitHub by ETag (a 304 costs no rate limit).
        wait_for(lambda: any(r["episodes"] == 0 for r in _ticks(daemon, "markdown")))
        wait_for(lambda: any(r.status == 304 for r in world.github.requests), what="a 304")
        assert daemon.stop() == 0
    log = daemon.stderr
    assert any(r.get("msg") == "runner stopped" for r in daemon.records())

    delivered = world.delivered()
    assert set(delivered) == set(world.expected)
    assert max(delivered.values()) == 1
    assert check_wire(world.batch_requests(), world.expected) == len(world.expected)

    # While the daemon is down: a changed file, a new file, a new issue.
    world.add_doc("page-1.md", "# page-1.md\n\nRewritten.\n")
    world.add_doc("later.md")
    world.add_issue(10, day=20)
    github_before = len(world.github.requests)
    second_slack = [world.slack_event(f"after restart {i}") for i in range(2)]

    with running(config) as daemon:
        for body, _ in second_slack:
            assert world.post_slack(daemon, body) == (200, {"ok": True})
        # Slack retries an event the first process already took: absorbed.
        old_body, _ = first_slack[0]
        status, answer = world.post_slack(daemon, old_body, retry_num=1)
        assert (status, answer) == (200, {"ok": True, "deduplicated": True})
        world.wait_all_delivered()
        wait_for(
            lambda: len(_ticks(daemon, "markdown")) >= 2 and len(_ticks(daemon, "github")) >= 2
        )
        # Resumed from the cursors, not from scratch: the first tick of each
        # source after the restart produced only what changed meanwhile.
        assert _ticks(daemon, "markdown")[0]["episodes"] == 2
        assert _ticks(daemon, "github")[0]["episodes"] == 1
        assert daemon.stop() == 0
    log += daemon.stderr

    first_after = next(
        r for r in world.github.requests[github_before:] if r.path.endswith("/issues")
    )
    assert "since" in first_after.query and first_after.headers.get("if-none-match")

    delivered = world.delivered()
    assert set(delivered) == set(world.expected)
    assert max(delivered.values()) == 1
    assert check_wire(world.batch_requests(), world.expected) == len(world.expected)
    for secret in SECRETS:
        assert secret not in log


# --------------------------------------------------------------------------- slack retry


@contextlib.contextmanager
def failing_puts(state: StateUnderTest) -> Iterator[None]:
    """Make the daemon's durable put fail for real while the block runs.

    SQLite: the runner's busy timeout is 30 s and not configurable, so a lock
    held by the test would make the request hang rather than fail; instead a
    trigger the test adds refuses inserts into the outbox, so the daemon's
    write transaction aborts with a genuine SQLite error (and rolls back its
    dedup key with it). PostgreSQL: the test holds a SHARE lock on the outbox
    key table (reads pass, inserts wait) and the daemon's sessions run with
    ``lock_timeout = 300ms``, so its INSERT is cancelled by the server.
    """
    if state.kind == "sqlite":
        assert state.db_path is not None
        conn = sqlite3.connect(state.db_path, timeout=10, isolation_level=None)
        try:
            conn.execute(
                "CREATE TRIGGER e2e_refuse_put BEFORE INSERT ON outbox "
                "BEGIN SELECT RAISE(ABORT, 'e2e: database or disk is full'); END"
            )
            yield
            conn.execute("DROP TRIGGER e2e_refuse_put")
        finally:
            conn.close()
        return
    import psycopg

    assert state.pg_url is not None
    with psycopg.connect(state.pg_url) as conn:
        conn.execute(f'LOCK TABLE "{state.schema}"."{state.table_base}_outbox_keys" IN SHARE MODE')
        yield
        conn.rollback()


def test_slack_delivery_whose_emit_fails_gets_503_and_the_retry_is_delivered_once(
    world: World, state: StateUnderTest
) -> None:
    config = world.config(state=state.toml, pull=False)
    warmup, warm_key = world.slack_event("warm-up")
    body, key = world.slack_event("the one that fails first")
    with running(config) as daemon:
        assert world.post_slack(daemon, warmup) == (200, {"ok": True})
        assert world.statewave.wait_for_episodes(1)
        with failing_puts(state):
            status, answer = world.post_slack(daemon, body)
            assert (status, answer) == (503, {"error": "emit_failed"})
            record = daemon.wait_log("could not queue event")
            assert record["level"] == "error"
            cause = "lock timeout" if state.kind == "postgres" else "e2e: database or disk is full"
            assert cause in record["msg"]
        # Slack's retry: same event_id, fresh signature, X-Slack-Retry-Num: 1.
        assert world.post_slack(daemon, body, retry_num=1) == (200, {"ok": True})
        assert world.post_slack(daemon, body, retry_num=2) == (
            200,
            {"ok": True, "deduplicated": True},
        )
        assert world.statewave.wait_for_episodes(2)
        # Let the worker go idle: nothing else may arrive for that event.
        wait_for(lambda: daemon.get("/metrics")[1].count(b"statewave_runner_outbox_depth 0") == 1)
        assert daemon.stop() == 0
    delivered = world.delivered()
    assert delivered == {warm_key: 1, key: 1}
    assert check_wire(world.batch_requests(), world.expected) == 2
    for secret in SECRETS:
        assert secret not in daemon.stderr
