"""The state contract (statewave_runner/state/base.py), run against all five backends.

PostgreSQL and Redis come from STATEWAVE_TEST_POSTGRES_URL / STATEWAVE_TEST_REDIS_URL;
each test gets its own schema / key prefix and drops it afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statewave_runner.errors import StateError
from statewave_runner.state import (
    FileState,
    MemoryState,
    OutboxSettings,
    PostgresState,
    RedisState,
    SqliteState,
    StateBackend,
)

from .state_helpers import KINDS, Env, items, make_env


@pytest.fixture(params=KINDS)
def env(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[Env]:
    with make_env(request.param, request, tmp_path, unique_name) as e:
        yield e


def run_threads(n: int, target: Any) -> list[Any]:
    """Run ``target(i)`` in ``n`` threads released together; return results in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


class InjectedFault(Exception):
    pass


# --------------------------------------------------------------------------- shape


def test_backend_satisfies_the_protocol(env: Env) -> None:
    assert isinstance(env.state, StateBackend)
    expected = {
        "memory": MemoryState,
        "file": FileState,
        "sqlite": SqliteState,
        "postgres": PostgresState,
        "redis": RedisState,
    }[env.kind]
    assert type(env.state) is expected
    assert env.state.kind == env.kind
    assert env.state.describe()["kind"] == env.kind
    assert env.state.health().ok


# --------------------------------------------------------------------------- cursors


def test_cursor_round_trip(env: Env) -> None:
    s = env.state
    assert s.get_cursor("github", "main") is None
    assert s.list_cursors() == {}
    s.set_cursor("github", "main", '{"since":"2024-05-01T10:00:00.000Z"}')
    s.set_cursor("slack", "eng", "")
    s.set_cursor("notion", "wiki", "ünïcødé ✓ \n tab\t")
    assert s.get_cursor("github", "main") == '{"since":"2024-05-01T10:00:00.000Z"}'
    assert s.get_cursor("slack", "eng") == ""
    s.set_cursor("github", "main", "v2")
    assert s.list_cursors() == {
        ("github", "main"): "v2",
        ("slack", "eng"): "",
        ("notion", "wiki"): "ünïcødé ✓ \n tab\t",
    }
    assert s.delete_cursor("github", "main") is True
    assert s.delete_cursor("github", "main") is False
    assert s.get_cursor("github", "main") is None
    assert s.get_cursor("github", "other") is None


def test_cursors_and_queue_survive_reopen(env: Env) -> None:
    env.state.set_cursor("github", "main", "c1")
    assert env.state.put(items("a", "b")) == 2
    assert env.state.mark_if_new("evt-1", 60)
    s = env.reopen()
    if env.kind == "memory":
        # Nothing survives a restart, by design (and the banner says so).
        assert (s.list_cursors(), s.peek(10), s.contains("evt-1")) == ({}, [], False)
        return
    assert s.get_cursor("github", "main") == "c1"
    assert [i.key for i in s.peek(10)] == ["a", "b"]
    assert s.put(items("a")) == 0  # the dedup window survives too
    assert s.contains("evt-1")


# --------------------------------------------------------------------------- dedup


def test_mark_if_new_is_true_once_within_ttl(env: Env) -> None:
    s = env.state
    assert not s.contains("evt")
    assert s.mark_if_new("evt", 0.3) is True
    assert s.contains("evt")
    assert s.mark_if_new("evt", 0.3) is False
    assert s.mark_if_new("other", 0.3) is True
    env.expire(0.45)
    assert not s.contains("evt")
    assert s.mark_if_new("evt", 60) is True
    assert s.mark_if_new("evt", 60) is False


def test_mark_if_new_from_16_threads_is_true_exactly_once(env: Env) -> None:
    # Two instances on the same storage where the backend allows it (replicas).
    backends = [env.state, env.peer()]
    keys = [f"evt-{n}" for n in range(20)]

    def worker(i: int) -> list[str]:
        backend = backends[i % 2]
        order = keys if i % 2 == 0 else list(reversed(keys))
        return [k for k in order if backend.mark_if_new(k, 600)]

    results = run_threads(16, worker)
    won = [k for r in results for k in r]
    assert sorted(won) == sorted(keys)  # every key True exactly once overall


# --------------------------------------------------------------------------- outbox


def test_put_counts_new_items_and_deduplicates(env: Env) -> None:
    s = env.state
    assert s.put([]) == 0
    assert s.put(items("a", "b", "a")) == 2  # a duplicate inside one put counts once
    assert s.put(items("a", "c")) == 1
    assert [i.key for i in s.peek(10)] == ["a", "b", "c"]
    first = s.peek(1)[0]
    assert first.body == '{"k": "a"}' and first.origin == "test/one" and first.attempts == 0
    # Delivered keys stay deduplicated within the TTL: a re-fetch is absorbed.
    s.ack(s.claim(10, 30))
    assert s.stats().depth == 0
    assert s.put(items("a", "b", "c")) == 0
    assert s.stats().depth == 0


def test_dedup_window_expires(env: Env) -> None:
    s = env.reopen(OutboxSettings(dedup_ttl=0.3, max_attempts=3))
    assert s.put(items("a")) == 1
    s.ack(s.claim(10, 30))
    env.expire(0.45)
    assert s.put(items("a")) == 1
    assert [i.key for i in s.peek(10)] == ["a"]


def test_claim_is_oldest_first_and_leases(env: Env) -> None:
    s = env.state
    s.put(items("a", "b", "c", "d"))
    batch = s.claim(2, 30)
    assert [i.key for i in batch] == ["a", "b"]
    assert all(i.attempts == 1 for i in batch)
    assert all(i.enqueued_at == pytest.approx(env.clock(), abs=1e-3) for i in batch)
    assert len({i.id for i in batch}) == 2
    assert [i.key for i in s.claim(10, 30)] == ["c", "d"]
    assert s.claim(10, 30) == []
    assert s.claim(0, 30) == []
    st = s.stats()
    assert (st.depth, st.in_flight, st.dead) == (4, 4, 0)


def test_expired_lease_makes_items_claimable_again(env: Env) -> None:
    # A worker claims and "crashes" (never acks): after the lease, another
    # worker gets the items, with the attempt counted.
    s = env.state
    s.put(items("a", "b"))
    first = s.claim(10, 30)
    env.clock.advance(29)
    assert s.claim(10, 30) == []
    env.clock.advance(2)
    again = env.peer().claim(10, 30)
    assert [(i.key, i.attempts) for i in again] == [("a", 2), ("b", 2)]
    assert [i.id for i in again] == [i.id for i in first]


def test_ack_removes_and_is_idempotent(env: Env) -> None:
    s = env.state
    s.put(items("a", "b"))
    batch = s.claim(10, 30)
    s.ack(batch[:1])
    s.ack(batch[:1])  # gone already: no-op
    assert [i.key for i in s.peek(10)] == ["b"]
    s.ack(batch[1:])
    assert s.stats().depth == 0
    assert s.stats().oldest_age_seconds is None


def test_nack_reschedules_with_error(env: Env) -> None:
    s = env.state
    s.put(items("a", "b"))
    batch = s.claim(10, 300)
    now = env.clock()
    s.nack(batch[:1], now + 60, "503 from sink")
    st = s.stats()
    assert (st.depth, st.in_flight) == (2, 1)
    assert s.claim(10, 30) == []  # a is waiting for retry_at, b is leased
    env.clock.advance(61)
    retried = s.claim(10, 30)
    assert [(i.key, i.attempts, i.last_error) for i in retried] == [("a", 2, "503 from sink")]


def test_dead_letter_after_max_attempts_and_retry_dead(env: Env) -> None:
    s = env.state  # max_attempts=3
    s.put(items("a", "b"))
    for attempt in (1, 2, 3):
        batch = s.claim(1, 30)
        assert [(i.key, i.attempts) for i in batch] == [("a", attempt)]
        s.nack(batch, env.clock(), f"fail {attempt}")
    st = s.stats()
    assert (st.depth, st.dead) == (1, 1)
    dead = s.peek(10, dead=True)
    assert [(i.key, i.attempts, i.last_error) for i in dead] == [("a", 3, "fail 3")]
    assert [i.key for i in s.peek(10)] == ["b"]
    assert [i.key for i in s.claim(10, 30)] == ["b"]  # dead items are never claimed
    assert s.retry_dead() == 1
    assert s.retry_dead() == 0
    back = s.claim(10, 30)
    assert [(i.key, i.attempts) for i in back] == [("a", 1)]


def test_dead_letter_now_and_retry_dead_limit(env: Env) -> None:
    s = env.state
    s.put(items("a", "b", "c"))
    s.dead_letter(s.claim(10, 30), "422: bad episode")
    st = s.stats()
    assert (st.depth, st.in_flight, st.dead) == (0, 0, 3)
    assert [i.last_error for i in s.peek(10, dead=True)] == ["422: bad episode"] * 3
    assert s.retry_dead(limit=2) == 2
    assert [i.key for i in s.peek(10)] == ["a", "b"]
    assert [i.key for i in s.peek(10, dead=True)] == ["c"]
    assert s.retry_dead(limit=0) == 0


def test_stale_claim_cannot_nack_or_bury_a_reclaimed_item(env: Env) -> None:
    s = env.state
    s.put(items("a"))
    stale = s.claim(1, 10)
    env.clock.advance(11)
    current = s.claim(1, 10)
    assert current[0].attempts == 2
    s.nack(stale, env.clock(), "late")
    s.dead_letter(stale, "late")
    st = s.stats()
    assert (st.depth, st.in_flight, st.dead) == (1, 1, 0)  # still leased to the second worker
    assert s.peek(1)[0].last_error is None
    s.ack(current)
    assert s.stats().depth == 0
    s.ack(stale)  # a late ack of a delivered item is harmless


def test_peek_does_not_claim(env: Env) -> None:
    s = env.state
    s.put(items("a", "b", "c"))
    assert [i.key for i in s.peek(2)] == ["a", "b"]
    assert s.peek(0) == []
    assert all(i.attempts == 0 for i in s.peek(10))
    assert [i.key for i in s.claim(10, 30)] == ["a", "b", "c"]


def test_stats_counts_and_oldest_age(env: Env) -> None:
    s = env.state
    empty = s.stats()
    assert (empty.depth, empty.in_flight, empty.dead, empty.oldest_age_seconds) == (0, 0, 0, None)
    s.put(items("a"))
    env.clock.advance(5)
    s.put(items("b", "c"))
    env.clock.advance(2)
    st = s.stats()
    assert (st.depth, st.in_flight, st.dead) == (3, 0, 0)
    assert st.oldest_age_seconds == pytest.approx(7.0, abs=1e-3)
    s.ack(s.claim(1, 30))
    assert s.stats().oldest_age_seconds == pytest.approx(2.0, abs=1e-3)


def test_concurrent_puts_all_land_exactly_once(env: Env) -> None:
    backends = [env.state, env.peer()]

    def worker(i: int) -> int:
        total = 0
        for n in range(15):
            # Every key is put by two threads: exactly one of them counts it.
            total += backends[i % 2].put(items(f"k{(i // 2)}-{n}", f"shared-{n}"))
        return total

    counts = run_threads(16, worker)
    assert sum(counts) == 8 * 15 + 15
    keys = [i.key for i in env.state.peek(1000)]
    assert len(keys) == len(set(keys)) == 8 * 15 + 15


# --------------------------------------------------------------------------- atomic pair


def test_put_and_set_cursor_sets_both(env: Env) -> None:
    s = env.state
    assert s.put_and_set_cursor(items("a", "b"), "github", "main", "c1") == 2
    assert s.get_cursor("github", "main") == "c1"
    assert s.put_and_set_cursor(items("b", "c"), "github", "main", "c2") == 1
    assert s.get_cursor("github", "main") == "c2"
    assert s.put_and_set_cursor(items("d"), "github", "main", None) == 1
    assert s.get_cursor("github", "main") == "c2"  # None leaves it alone
    assert s.put_and_set_cursor([], "github", "main", "c3") == 0
    assert s.get_cursor("github", "main") == "c3"
    assert [i.key for i in s.peek(10)] == ["a", "b", "c", "d"]


def test_put_and_set_cursor_is_all_or_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    s = env.state
    s.put_and_set_cursor(items("a"), "github", "main", "c1")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise InjectedFault("disk on fire between the two halves")

    monkeypatch.setattr(s, "_write_cursors", fail)
    with pytest.raises((InjectedFault, StateError)):
        s.put_and_set_cursor(items("b", "c"), "github", "main", "c2")
    monkeypatch.undo()
    assert s.get_cursor("github", "main") == "c1"
    assert [i.key for i in s.peek(10)] == ["a"]
    # Neither half happened: the same items are still new.
    assert s.put_and_set_cursor(items("b", "c"), "github", "main", "c2") == 2
    assert s.get_cursor("github", "main") == "c2"


def test_one_failing_write_does_not_fail_concurrent_ones(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = env.state
    real = s._write_cursors

    def fail_for_bad(*args: Any, **kwargs: Any) -> None:
        rows = args[1]  # every backend: (connection-or-target, rows, ...)
        if any(row[1] == "bad" for row in rows):
            raise InjectedFault("bad cursor")
        real(*args, **kwargs)

    monkeypatch.setattr(s, "_write_cursors", fail_for_bad)

    def worker(i: int) -> str:
        name = "bad" if i == 0 else f"good{i}"
        try:
            s.put_and_set_cursor(items(f"item-{i}"), "github", name, f"c{i}")
        except (InjectedFault, StateError):
            return "failed"
        return "ok"

    results = run_threads(12, worker)
    monkeypatch.undo()
    assert results == ["failed"] + ["ok"] * 11
    assert s.get_cursor("github", "bad") is None
    assert sorted(i.key for i in s.peek(100)) == sorted(f"item-{i}" for i in range(1, 12))
    assert all(s.get_cursor("github", f"good{i}") == f"c{i}" for i in range(1, 12))


# --------------------------------------------------------------------------- put and mark


def test_put_and_mark_queues_and_marks_once_per_key(env: Env) -> None:
    s = env.state
    assert s.put_and_mark(items("a", "b"), "evt-1", 60) == (2, True)
    assert s.contains("evt-1")
    assert s.mark_if_new("evt-1", 60) is False
    # Marked: nothing happens, not even for items never seen before.
    assert s.put_and_mark(items("a", "b"), "evt-1", 60) == (0, False)
    assert s.put_and_mark(items("c"), "evt-1", 60) == (0, False)
    # A new key still deduplicates its items by idempotency key.
    assert s.put_and_mark(items("b", "d", "d"), "evt-2", 60) == (1, True)
    assert s.put_and_mark([], "evt-3", 60) == (0, True)
    assert s.contains("evt-3")
    # A key marked by mark_if_new counts as handled too.
    assert s.mark_if_new("evt-4", 60) is True
    assert s.put_and_mark(items("e"), "evt-4", 60) == (0, False)
    assert [i.key for i in s.peek(10)] == ["a", "b", "d"]


def test_put_and_mark_key_expires_with_its_ttl(env: Env) -> None:
    s = env.state
    assert s.put_and_mark(items("a"), "evt", 0.3) == (1, True)
    assert s.put_and_mark(items("b"), "evt", 0.3) == (0, False)
    env.expire(0.45)
    assert not s.contains("evt")
    assert s.put_and_mark(items("b"), "evt", 60) == (1, True)
    assert s.put_and_mark(items("c"), "evt", 60) == (0, False)
    assert [i.key for i in s.peek(10)] == ["a", "b"]


def test_put_and_mark_is_all_or_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    s = env.state
    s.put(items("a"))

    def fail(*args: Any, **kwargs: Any) -> None:
        raise InjectedFault("disk on fire between the two halves")

    monkeypatch.setattr(s, "_write_mark", fail)
    with pytest.raises((InjectedFault, StateError)):
        s.put_and_mark(items("b", "c"), "evt-1", 60)
    monkeypatch.undo()
    assert not s.contains("evt-1")
    assert [i.key for i in s.peek(10)] == ["a"]
    # Neither half happened: the retry is new and queues both items.
    assert s.put_and_mark(items("b", "c"), "evt-1", 60) == (2, True)
    assert [i.key for i in s.peek(10)] == ["a", "b", "c"]


def test_put_and_mark_from_16_threads_is_new_exactly_once(env: Env) -> None:
    # Two instances on the same storage where the backend allows it (replicas).
    # Every thread offers its own item for each key: only the winner's is queued.
    backends = [env.state, env.peer()]
    keys = [f"evt-{n}" for n in range(12)]

    def worker(i: int) -> list[tuple[str, int]]:
        backend = backends[i % 2]
        order = keys if i % 2 == 0 else list(reversed(keys))
        won = []
        for k in order:
            added, new = backend.put_and_mark(items(f"{k}/by-{i}"), k, 600)
            assert added == (1 if new else 0)
            if new:
                won.append((k, i))
        return won

    results = run_threads(16, worker)
    won = [w for r in results for w in r]
    assert sorted(k for k, _ in won) == sorted(keys)  # every key new exactly once overall
    queued = sorted(i.key for i in env.state.peek(1000))
    assert queued == sorted(f"{k}/by-{i}" for k, i in won)


def test_put_and_mark_failure_does_not_fail_concurrent_puts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = env.state

    def fail(*args: Any, **kwargs: Any) -> None:
        raise InjectedFault("mark failed")

    monkeypatch.setattr(s, "_write_mark", fail)

    def worker(i: int) -> str:
        try:
            if i == 0:
                s.put_and_mark(items("marked-0"), "evt-0", 600)
            else:
                s.put(items(f"plain-{i}"))
        except (InjectedFault, StateError):
            return "failed"
        return "ok"

    results = run_threads(8, worker)
    monkeypatch.undo()
    assert results == ["failed"] + ["ok"] * 7
    assert not s.contains("evt-0")
    assert sorted(i.key for i in s.peek(100)) == sorted(f"plain-{i}" for i in range(1, 8))


# --------------------------------------------------------------------------- leases


def test_leases_belong_to_their_owner(env: Env) -> None:
    s = env.state
    assert s.acquire("tick:github/main", "replica-a", 0.3) is True
    assert s.acquire("tick:github/main", "replica-b", 0.3) is False
    assert s.acquire("tick:github/main", "replica-a", 0.3) is True  # ours: renewed
    assert s.renew("tick:github/main", "replica-b", 0.3) is False
    assert s.release("tick:github/main", "replica-b") is False
    assert s.renew("tick:github/main", "replica-a", 0.3) is True
    assert s.release("tick:github/main", "replica-a") is True
    assert s.release("tick:github/main", "replica-a") is False
    assert s.acquire("tick:github/main", "replica-b", 0.3) is True
    env.expire(0.45)
    # b's lease expired: it can neither renew nor release it, and a may take it.
    assert s.renew("tick:github/main", "replica-b", 0.3) is False
    assert s.acquire("tick:github/main", "replica-a", 30) is True
    assert s.release("tick:github/main", "replica-b") is False
    assert s.acquire("other", "replica-b", 30) is True  # leases are per key


def test_two_owners_contending_one_wins(env: Env) -> None:
    backends = [env.state, env.peer()]

    def worker(i: int) -> tuple[str, bool]:
        owner = "replica-a" if i % 2 == 0 else "replica-b"
        return owner, backends[i % 2].acquire("tick:slack/eng", owner, 600)

    results = run_threads(16, worker)
    winners = {owner for owner, ok in results if ok}
    assert len(winners) == 1
    (winner,) = winners
    # Every call by the winner succeeded (acquire renews its own lease), none by the loser.
    assert all(ok == (owner == winner) for owner, ok in results)


# --------------------------------------------------------------------------- lifecycle


def test_close_is_idempotent_and_final(env: Env) -> None:
    s = env.state
    s.put(items("a"))
    s.close()
    s.close()
    assert not s.health().ok
    with pytest.raises(StateError):
        s.put(items("b"))
    with pytest.raises(StateError):
        s.get_cursor("github", "main")
    with pytest.raises(StateError):
        s.claim(1, 30)
