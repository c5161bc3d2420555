"""Redis-specific behaviour: the Node hash, the reliable queue's structures, TTLs, clients."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from statewave_runner.errors import StateError
from statewave_runner.state import OutboxSettings, RedisState, open_state

from .state_helpers import FakeClock, delete_redis_prefix, items


@pytest.fixture
def prefix(redis_url: str, unique_name: str) -> Iterator[str]:
    p = f"{unique_name}:"
    yield p
    delete_redis_prefix(redis_url, p)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def test_cursors_live_in_the_node_runners_hash(
    redis_url: str, prefix: str, client: redis.Redis
) -> None:
    client.hset(f"{prefix}cursors", "github/main", "from-node")  # what ioredis HSET wrote
    s = RedisState(redis_url, key_prefix=prefix)
    try:
        assert s.get_cursor("github", "main") == "from-node"
        s.set_cursor("slack", "eng", "s1")
        assert client.hgetall(f"{prefix}cursors") == {"github/main": "from-node", "slack/eng": "s1"}
        assert s.list_cursors() == {("github", "main"): "from-node", ("slack", "eng"): "s1"}
    finally:
        s.close()


def test_default_prefix_is_the_node_default(redis_url: str) -> None:
    s = RedisState(redis_url)
    try:
        assert s.key_prefix == "statewave_runner:"
        assert s._cursors_key == "statewave_runner:cursors"
    finally:
        s.close()  # nothing written: the shared default keys are left alone


def test_claimed_items_sit_in_the_processing_set_until_their_deadline(
    redis_url: str, prefix: str, client: redis.Redis
) -> None:
    clock = FakeClock()
    s = RedisState(redis_url, key_prefix=prefix, clock=clock)
    try:
        s.put(items("a", "b"))
        assert client.zrange(f"{prefix}ob:ready", 0, -1) == ["1", "2"]
        claimed = s.claim(1, 30)
        # The worker "crashes" here. Nothing is lost: the item is in proc with a deadline.
        assert client.zrange(f"{prefix}ob:proc", 0, -1, withscores=True) == [("1", clock() + 30)]
        assert client.zrange(f"{prefix}ob:ready", 0, -1) == ["2"]
        assert client.hget(f"{prefix}ob:i:1", "attempts") == "1"
        clock.advance(31)
        other = RedisState(redis_url, key_prefix=prefix, clock=clock)
        try:
            again = other.claim(10, 30)
            assert [(i.id, i.attempts) for i in again] == [(claimed[0].id, 2), ("2", 1)]
        finally:
            other.close()
    finally:
        s.close()


def test_dedup_marks_expire_by_themselves(redis_url: str, prefix: str, client: redis.Redis) -> None:
    s = RedisState(redis_url, key_prefix=prefix, settings=OutboxSettings(dedup_ttl=3600))
    try:
        s.mark_if_new("evt", 60)
        s.put(items("a"))
        assert 0 < client.pttl(f"{prefix}seen:evt") <= 60_000
        assert 3_500_000 < client.pttl(f"{prefix}ob:k:a") <= 3_600_000
        s.acquire("tick", "me", 10)
        assert client.get(f"{prefix}lease:tick") == "me"
        assert 0 < client.pttl(f"{prefix}lease:tick") <= 10_000
        s.ack(s.claim(10, 30))
        # Acked items leave nothing behind but their dedup mark.
        left = sorted(k for k in client.scan_iter(f"{prefix}ob:*") if not k.endswith("ob:seq"))
        assert left == [f"{prefix}ob:k:a"]
    finally:
        s.close()


def test_put_and_set_cursor_is_one_transaction(
    redis_url: str, prefix: str, client: redis.Redis
) -> None:
    s = RedisState(redis_url, key_prefix=prefix)
    try:
        before = client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
        s.put_and_set_cursor(items("a"), "github", "main", "c1")
        after = client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
        assert after >= before + 1  # went through MULTI/EXEC
        assert s.get_cursor("github", "main") == "c1"
    finally:
        s.close()


def test_injected_client_is_used_and_left_open(redis_url: str, prefix: str) -> None:
    c = redis.Redis.from_url(redis_url)  # bytes responses: the backend copes
    try:
        s = RedisState(client=c, key_prefix=prefix)
        s.set_cursor("github", "main", "c1")
        s.put(items("a"))
        assert s.get_cursor("github", "main") == "c1"
        assert [i.key for i in s.claim(10, 30)] == ["a"]
        assert s.describe()["location"] == "an injected client"
        s.close()
        assert c.ping()
    finally:
        c.close()


def test_unreachable_server_names_the_host_not_the_password(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    url = urlunsplit(parts._replace(netloc=f":hunter2-secret@{parts.hostname}:1"))
    with pytest.raises(StateError) as info:
        RedisState(url, connect_timeout=2)
    message = str(info.value)
    assert "hunter2-secret" not in message and parts.hostname in message
    assert "cannot connect to Redis" in message
    with pytest.raises(StateError) as info2:
        open_state("redis", url=url)
    assert "hunter2-secret" not in str(info2.value)
