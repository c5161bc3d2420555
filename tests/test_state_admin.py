"""The `state cursors ...` / `state outbox ...` commands, on a real SQLite backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from statewave_runner.state import MemoryState, SqliteState
from statewave_runner.state.admin import (
    FAILED,
    NOT_FOUND,
    OK,
    USAGE,
    Result,
    outbox_peek,
    parse_ref,
    run_state_command,
)

from .state_helpers import FakeClock, items


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_714_557_600.0)  # 2024-05-01T10:00:00Z


@pytest.fixture
def state(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteState]:
    s = SqliteState(tmp_path / "s.db", clock=clock)
    yield s
    s.close()


def run(state: SqliteState, *words: str) -> Result:
    return run_state_command(state, words)


def test_cursor_commands(state: SqliteState) -> None:
    assert run(state, "cursors", "list") == Result(OK, "", "no cursors\n")
    assert run(state, "cursors", "get", "github/main") == Result(
        NOT_FOUND, "", "no cursor for github/main\n"
    )
    assert run(state, "cursors", "set", "github/main", '{"since":"x"}') == Result(
        OK, 'github/main: unset -> {"since":"x"}\n'
    )
    assert run(state, "cursors", "set", "slack/eng", "a\tb") == Result(
        OK, 'slack/eng: unset -> "a\\tb"\n'
    )
    assert run(state, "cursors", "set", "github/main", "v2").out == (
        'github/main: {"since":"x"} -> v2\n'
    )
    assert run(state, "cursors", "get", "github/main") == Result(OK, "v2\n")
    assert run(state, "cursors").out == 'github/main\tv2\nslack/eng\t"a\\tb"\n'
    assert json.loads(run(state, "cursors", "list", "--json").out) == {
        "github/main": "v2",
        "slack/eng": "a\tb",
    }
    assert run(state, "cursors", "delete", "github/main") == Result(
        OK, "deleted cursor github/main\n"
    )
    assert run(state, "cursors", "delete", "github/main").code == NOT_FOUND
    assert state.get_cursor("github", "main") is None


def test_bad_refs_and_usage(state: SqliteState) -> None:
    bad = run(state, "cursors", "get", "github")
    assert bad.code == USAGE and "expected KIND/NAME" in bad.err
    assert run(state, "cursors", "set", "/x", "v").code == USAGE
    assert run(state, "cursors", "frobnicate").code == USAGE
    assert run(state, "outbox", "peek", "many").code == USAGE
    assert run(state, "outbox", "peek", "-1").code == USAGE
    assert run(state).code == USAGE
    with pytest.raises(ValueError):
        parse_ref("no-slash")
    assert parse_ref("github/main") == ("github", "main")


def test_outbox_commands(state: SqliteState, clock: FakeClock) -> None:
    assert run(state, "outbox", "stats").out == (
        "depth       0\nin_flight   0\ndead        0\noldest_age  -\n"
    )
    state.put(items("a", "b", "c"))
    clock.advance(150)
    state.dead_letter(state.claim(1, 30), "422 from Statewave")
    state.claim(1, 30)
    assert run(state, "outbox").out == (
        "depth       2\nin_flight   1\ndead        1\noldest_age  2.5m\n"
    )
    peeked = [json.loads(line) for line in run(state, "outbox", "peek", "5").out.splitlines()]
    assert [(p["key"], p["attempts"]) for p in peeked] == [("b", 1), ("c", 0)]
    assert peeked[0]["episode"] == {"k": "b"}
    assert peeked[0]["enqueued_at"] == "2024-05-01T10:00:00.000Z"
    assert peeked[0]["origin"] == "test/one"
    dead = run(state, "outbox", "peek", "5", "--dead").out.splitlines()
    assert [(json.loads(d)["key"], json.loads(d)["last_error"]) for d in dead] == [
        ("a", "422 from Statewave")
    ]
    assert run(state, "outbox", "retry-dead", "--limit", "0").out == (
        "requeued 0 dead-lettered episodes\n"
    )
    assert run(state, "outbox", "retry-dead") == Result(OK, "requeued 1 dead-lettered episode\n")
    assert state.stats().dead == 0
    empty = run(state, "outbox", "peek", "3", "--dead")
    assert empty == Result(OK, "", "no dead-lettered episodes\n")


def test_non_json_bodies_are_shown_as_text() -> None:
    s = MemoryState()
    from statewave_runner.state import OutboxItem

    s.put([OutboxItem("k", "not json")])
    (line,) = outbox_peek(s, 1).out.splitlines()
    assert json.loads(line)["episode"] == "not json"


def test_backend_failure_is_exit_3(state: SqliteState) -> None:
    state.close()
    failed = run(state, "cursors", "list")
    assert failed.code == FAILED and failed.err.startswith("state: ") and "closed" in failed.err
