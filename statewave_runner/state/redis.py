"""Redis state: cursors in the Node runner's hash, a reliable queue, PX leases.

redis-py is imported only here, and only when the backend builds its own
client from ``url``; an injected client skips the import. Keys (``<p>`` is
``key_prefix``, default ``statewave_runner:``):

* ``<p>cursors``: hash, field ``<kind>/<name>``, exactly as the Node runner;
* ``<p>seen:<key>``: dedup marks, ``SET NX PX`` (one round trip);
* ``<p>lease:<key>``: leases, ``SET NX PX`` semantics in one script,
  compare-and-delete / compare-and-extend scripts for release / renew;
* the outbox, a reliable queue: ``<p>ob:i:<id>`` item hashes (ids from
  ``INCR <p>ob:seq``, never reused), ``<p>ob:k:<key>`` queue-dedup marks with
  the dedup TTL, and the sorted sets ``ready`` (due, by id), ``delayed`` (by
  ``retry_at``), ``proc`` (claimed, by lease deadline), ``dead`` and ``live``
  (every item not dead, by id). A claim moves items from ``ready`` to ``proc``
  in one script; a crashed worker's items sit in ``proc`` until their
  deadline passes and the next claim moves them back. Nothing is lost.

Each operation is one script or one ``MULTI``/``EXEC``, so it is atomic.
Concurrent ``put()`` and ``put_and_mark()`` calls are group-committed (see
``_group.py``): the callers serialize their arguments, one of them sends
everything queued as one script, one round trip, in which each call runs in
order exactly as it would alone.
Durability is Redis's own persistence setting: with ``appendonly yes`` and
``appendfsync always`` a put is on disk before Redis answers; with the
defaults a Redis crash can lose the last second (or everything, without
persistence). Dedup marks and leases expire by Redis's clock; outbox times
(``retry_at``, claim deadlines) are the runner's clock. Standalone Redis (or
Sentinel) only: the scripts touch keys they compute, which Redis Cluster
does not allow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import StateError
from ._group import GroupCommitter, Op
from .base import DEFAULT_KEY_PREFIX, ClaimedItem, Health, OutboxItem, OutboxSettings, OutboxStats
from .drivers import first_line, import_driver, safe_url, url_redactor

log = logging.getLogger("statewave_runner.state")

PROMOTE_CHUNK = 1000
T = TypeVar("T")

# All scripts get the prefix as ARGV[1] and build their keys from it.
# Every put script's first lines: ARGV prefix, now, dedup ttl (ms), and
# queue(key, body, origin), which queues one item unless its key is already
# queued within the dedup TTL and returns 1 if it did, else 0.
_PUT_PRELUDE = """
local p = ARGV[1]
local now = ARGV[2]
local ttl = ARGV[3]
local function queue(key, body, origin)
  if redis.call('SET', p .. 'ob:k:' .. key, '1', 'NX', 'PX', ttl) then
    local id = redis.call('INCR', p .. 'ob:seq')
    redis.call('HSET', p .. 'ob:i:' .. id, 'key', key, 'body', body,
      'origin', origin, 'attempts', 0, 'enq', now)
    redis.call('ZADD', p .. 'ob:ready', id, id)
    redis.call('ZADD', p .. 'ob:live', id, id)
    return 1
  end
  return 0
end
"""

# ARGV: prefix, now, dedup ttl (ms), then key/body/origin triples.
_PUT = (
    _PUT_PRELUDE
    + """
local added = 0
for i = 4, #ARGV, 3 do
  added = added + queue(ARGV[i], ARGV[i + 1], ARGV[i + 2])
end
return added
"""
)

# Several callers' puts in one script (group commit: one round trip for all).
# ARGV: prefix, now, dedup ttl (ms), then one JSON array with one array per put:
# [1, event key, its ttl (ms)] for put_and_mark or [0, "", "0"] for put, then
# its key, body, origin triples. (One argument, serialized by each caller
# beforehand: redis-py packs and Redis parses 3 + 1 arguments, not 3 per item.)
# Each put runs as it would alone, in order; returns "added:new" per put,
# space-separated (new is 1 for a plain put).
_PUT_BATCH = (
    _PUT_PRELUDE
    + """
local batch = cjson.decode(ARGV[4])
local out = {}
for o = 1, #batch do
  local op = batch[o]
  local seen = false
  if op[1] == 1 then
    seen = p .. 'seen:' .. op[2]
  end
  local added = 0
  local new = 1
  if seen and redis.call('EXISTS', seen) == 1 then
    new = 0
  else
    for j = 4, #op, 3 do
      added = added + queue(op[j], op[j + 1], op[j + 2])
    end
    if seen then
      redis.call('SET', seen, '1', 'PX', op[3])
    end
  end
  out[o] = added .. ':' .. new
end
return table.concat(out, ' ')
"""
)

_CLAIM = """
local p = ARGV[1]
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local deadline = ARGV[4]
local chunk = tonumber(ARGV[5])
local ready = p .. 'ob:ready'
for _, src in ipairs({p .. 'ob:delayed', p .. 'ob:proc'}) do
  local due = redis.call('ZRANGEBYSCORE', src, '-inf', now, 'LIMIT', 0, chunk)
  for _, id in ipairs(due) do
    redis.call('ZREM', src, id)
    redis.call('ZADD', ready, id, id)
  end
end
local ids = redis.call('ZRANGE', ready, 0, limit - 1)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', ready, id)
  local item = p .. 'ob:i:' .. id
  if redis.call('EXISTS', item) == 1 then
    redis.call('ZADD', p .. 'ob:proc', deadline, id)
    local attempts = redis.call('HINCRBY', item, 'attempts', 1)
    local f = redis.call('HMGET', item, 'key', 'body', 'origin', 'enq', 'err')
    out[#out + 1] = {id, f[1], f[2], f[3], attempts, f[4], f[5]}
  end
end
return out
"""

_ACK = """
local p = ARGV[1]
for i = 2, #ARGV do
  local id = ARGV[i]
  redis.call('DEL', p .. 'ob:i:' .. id)
  for _, z in ipairs({'ready', 'delayed', 'proc', 'dead', 'live'}) do
    redis.call('ZREM', p .. 'ob:' .. z, id)
  end
end
return 0
"""

# ARGV: prefix, retry_at, error, max_attempts (0: dead-letter now), then id/attempts pairs.
_NACK = """
local p = ARGV[1]
local retry_at = ARGV[2]
local err = ARGV[3]
local max_attempts = tonumber(ARGV[4])
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  local item = p .. 'ob:i:' .. id
  local attempts = tonumber(redis.call('HGET', item, 'attempts'))
  if attempts and attempts == tonumber(ARGV[i + 1])
      and not redis.call('ZSCORE', p .. 'ob:dead', id) then
    redis.call('HSET', item, 'err', err)
    redis.call('ZREM', p .. 'ob:proc', id)
    redis.call('ZREM', p .. 'ob:ready', id)
    redis.call('ZREM', p .. 'ob:delayed', id)
    if max_attempts == 0 or attempts >= max_attempts then
      redis.call('ZREM', p .. 'ob:live', id)
      redis.call('ZADD', p .. 'ob:dead', id, id)
    else
      redis.call('ZADD', p .. 'ob:delayed', retry_at, id)
    end
  end
end
return 0
"""

_RETRY_DEAD = """
local p = ARGV[1]
local limit = tonumber(ARGV[2])
local ids = redis.call('ZRANGE', p .. 'ob:dead', 0, limit - 1)
for _, id in ipairs(ids) do
  redis.call('ZREM', p .. 'ob:dead', id)
  redis.call('HSET', p .. 'ob:i:' .. id, 'attempts', 0)
  redis.call('ZADD', p .. 'ob:ready', id, id)
  redis.call('ZADD', p .. 'ob:live', id, id)
end
return #ids
"""

_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _s(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _segment(head: list[Any], items: Sequence[OutboxItem]) -> bytes:
    """One put's part of a batch (see ``_PUT_BATCH``), serialized by its caller.

    Encoded here, so an item Redis cannot take (a lone surrogate) fails its own
    put, not its batch.
    """
    for item in items:
        head += (item.key, item.body, item.origin)
    return json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _is_driver_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "redis"


class RedisState:
    """The state contract on Redis (see module docstring)."""

    kind = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        settings: OutboxSettings | None = None,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 10.0,
    ) -> None:
        self.settings = settings or OutboxSettings()
        self.key_prefix = key_prefix
        self._clock = clock
        self._closed = False
        self._where = safe_url(url) if url else "an injected client"
        self._redactor = url_redactor(url or "")
        self._cursors_key = f"{key_prefix}cursors"
        if client is not None:
            self._client = client
            self._own_client = False
        else:
            if not url:
                raise StateError('state kind "redis" needs url (or an injected client)')
            (redis,) = import_driver("redis")
            try:
                self._client = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=connect_timeout,
                    socket_keepalive=True,
                    health_check_interval=30,
                    retry_on_timeout=True,
                )
            except (ValueError, redis.RedisError) as exc:
                raise StateError(self._error("parse url", exc)) from None
            self._own_client = True
        try:
            self._client.ping()
        except Exception as exc:
            if self._own_client:
                self._client.close()
            if _is_driver_error(exc):
                raise StateError(
                    self._redactor.scrub(
                        f"cannot connect to Redis at {self._where}: {first_line(str(exc))}"
                    )
                ) from None
            raise
        reg = self._client.register_script
        self._put = reg(_PUT)
        self._put_batch = reg(_PUT_BATCH)
        self._claim = reg(_CLAIM)
        self._ack = reg(_ACK)
        self._nack = reg(_NACK)
        self._retry_dead = reg(_RETRY_DEAD)
        self._acquire = reg(_ACQUIRE)
        self._renew = reg(_RENEW)
        self._release = reg(_RELEASE)
        self._warn_if_not_persistent()
        self._committer = GroupCommitter(self._run_batch, f"redis state {self._where}")

    def _error(self, doing: str, exc: BaseException) -> str:
        return self._redactor.scrub(
            f"Redis state at {self._where}: {doing} failed: {first_line(str(exc))}"
        )

    def _run(self, doing: str, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StateError(f"Redis state at {self._where} is closed")
        # redis-py drops a broken connection and reconnects on the next
        # command; one retry covers a connection that died while idle.
        for attempt in (0, 1):
            try:
                return fn()
            except Exception as exc:
                if not _is_driver_error(exc):
                    raise
                name = type(exc).__name__
                if attempt == 0 and name in ("ConnectionError", "TimeoutError"):
                    continue
                raise StateError(self._error(doing, exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _warn_if_not_persistent(self) -> None:
        try:
            info = self._client.info("persistence")
        except Exception:  # INFO may be renamed or forbidden on managed Redis
            return
        if str(info.get("aof_enabled", "0")) != "1":
            log.warning(
                "Redis at %s has appendonly off: queued episodes survive a Redis restart only "
                "as of its last RDB snapshot, if any (set appendonly yes, appendfsync always)",
                self._where,
            )

    def _k(self, suffix: str) -> str:
        return f"{self.key_prefix}{suffix}"

    # ------------------------------------------------------------------ cursors
    def get_cursor(self, kind: str, name: str) -> str | None:
        value = self._run(
            "read a cursor", lambda: self._client.hget(self._cursors_key, f"{kind}/{name}")
        )
        return None if value is None else _s(value)

    def set_cursor(self, kind: str, name: str, cursor: str) -> None:
        def op() -> None:
            pipe = self._client.pipeline(transaction=True)
            self._write_cursors(pipe, [(kind, name, cursor)])
            pipe.execute()

        self._run("write a cursor", op)

    def delete_cursor(self, kind: str, name: str) -> bool:
        count = self._run(
            "delete a cursor", lambda: self._client.hdel(self._cursors_key, f"{kind}/{name}")
        )
        return bool(count)

    def list_cursors(self) -> dict[tuple[str, str], str]:
        raw = self._run("list cursors", lambda: self._client.hgetall(self._cursors_key))
        out: dict[tuple[str, str], str] = {}
        for field, value in raw.items():
            kind, _, name = _s(field).partition("/")
            out[(kind, name)] = _s(value)
        return out

    def _write_cursors(self, pipe: Any, rows: Sequence[tuple[str, str, str]]) -> None:
        # The cursor half of put_and_set_cursor (queued on its MULTI), also used
        # by set_cursor; tests replace it to inject a failure between the halves.
        for kind, name, cursor in rows:
            pipe.hset(self._cursors_key, f"{kind}/{name}", cursor)

    # ------------------------------------------------------------------ dedup
    def mark_if_new(self, key: str, ttl_seconds: float) -> bool:
        result = self._run(
            "mark a dedup key",
            lambda: self._client.set(self._k(f"seen:{key}"), "1", nx=True, px=_ms(ttl_seconds)),
        )
        return bool(result)

    def contains(self, key: str) -> bool:
        return bool(
            self._run("look up a dedup key", lambda: self._client.exists(self._k(f"seen:{key}")))
        )

    # ------------------------------------------------------------------ outbox
    def _put_args(self, items: Sequence[OutboxItem]) -> list[Any]:
        args: list[Any] = [self.key_prefix, repr(self._clock()), _ms(self.settings.dedup_ttl)]
        for item in items:
            args += [item.key, item.body, item.origin]
        return args

    def put(self, items: Sequence[OutboxItem]) -> int:
        if self._closed:
            raise StateError(f"Redis state at {self._where} is closed")
        items = list(items)
        if not items:
            return 0
        added, _ = self._committer.submit(_segment([0, "", "0"], items))
        return int(added)

    def put_and_set_cursor(
        self, items: Sequence[OutboxItem], kind: str, name: str, cursor: str | None
    ) -> int:
        items = list(items)
        if cursor is None:
            return self.put(items)

        def op() -> int:
            # MULTI/EXEC: Redis runs (and persists) both commands as one unit.
            pipe = self._client.pipeline(transaction=True)
            if items:
                self._put(args=self._put_args(items), client=pipe)
            self._write_cursors(pipe, [(kind, name, cursor)])
            results = pipe.execute()
            return int(results[0]) if items else 0

        return self._run("queue episodes and set a cursor", op)

    def put_and_mark(
        self, items: Sequence[OutboxItem], key: str, ttl_seconds: float
    ) -> tuple[int, bool]:
        if self._closed:
            raise StateError(f"Redis state at {self._where} is closed")
        # The batch script runs the check, the items and the mark as one unit
        # (and Redis persists it as one).
        head: list[Any] = [1]
        self._write_mark(head, key, ttl_seconds)
        added, new = self._committer.submit(_segment(head, items))
        return int(added), bool(new)

    def _run_batch(self, ops: list[Op]) -> None:
        # Serialized by the callers: the leader only joins their JSON.
        batch = b"[" + b",".join([op.payload for op in ops]) + b"]"
        args = [self.key_prefix, repr(self._clock()), _ms(self.settings.dedup_ttl), batch]
        self._committer.wake_previous()  # the previous batch's callers run while we wait
        reply = self._run("queue episodes", lambda: self._put_batch(args=args))
        results = _s(reply).split(" ")
        if len(results) != len(ops):
            raise StateError(f"Redis state at {self._where}: unexpected reply to a batch of puts")
        for op, result in zip(ops, results, strict=True):
            added, _, new = result.partition(":")
            op.succeed((int(added), new == "1"))

    def _write_mark(self, args: list[Any], key: str, ttl_seconds: float) -> None:
        # The mark half of put_and_mark (its place in the script's arguments);
        # tests replace it to inject a failure between the two halves.
        args += [key, str(_ms(ttl_seconds))]

    def claim(self, limit: int, lease_seconds: float) -> list[ClaimedItem]:
        if limit <= 0:
            return []
        now = self._clock()
        rows = self._run(
            "claim episodes",
            lambda: self._claim(
                args=[self.key_prefix, repr(now), limit, repr(now + lease_seconds), PROMOTE_CHUNK]
            ),
        )
        return [
            ClaimedItem(
                id=_s(r[0]),
                key=_s(r[1]),
                body=_s(r[2]),
                origin=_s(r[3]),
                attempts=int(r[4]),
                enqueued_at=float(_s(r[5])),
                last_error=None if r[6] is None else _s(r[6]),
            )
            for r in rows
        ]

    def ack(self, items: Sequence[ClaimedItem]) -> None:
        if items:
            ids = [i.id for i in items]
            self._run("acknowledge episodes", lambda: self._ack(args=[self.key_prefix, *ids]))

    def _nack_args(self, items: Sequence[ClaimedItem]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            out += [item.id, item.attempts]
        return out

    def nack(self, items: Sequence[ClaimedItem], retry_at: float, error: str) -> None:
        if items:
            args = [self.key_prefix, repr(retry_at), error, self.settings.max_attempts]
            self._run(
                "reschedule episodes",
                lambda: self._nack(args=args + self._nack_args(items)),
            )

    def dead_letter(self, items: Sequence[ClaimedItem], error: str) -> None:
        if items:
            args = [self.key_prefix, "0", error, 0]
            self._run(
                "dead-letter episodes",
                lambda: self._nack(args=args + self._nack_args(items)),
            )

    def retry_dead(self, limit: int | None = None) -> int:
        cap = -1 if limit is None else max(0, limit)
        if cap == 0:
            return 0
        # ZRANGE 0 -1 is everything: limit - 1 with limit = 0 means "all" in the script.
        return int(
            self._run(
                "retry dead-lettered episodes",
                lambda: self._retry_dead(args=[self.key_prefix, 0 if cap < 0 else cap]),
            )
        )

    def peek(self, limit: int, *, dead: bool = False) -> list[ClaimedItem]:
        if limit <= 0:
            return []

        def op() -> list[ClaimedItem]:
            ids = self._client.zrange(self._k("ob:dead" if dead else "ob:live"), 0, limit - 1)
            pipe = self._client.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(
                    self._k(f"ob:i:{_s(i)}"), "key", "body", "origin", "attempts", "enq", "err"
                )
            out = []
            for i, f in zip(ids, pipe.execute(), strict=True):
                if f[0] is None:
                    continue  # acked between the two round trips
                out.append(
                    ClaimedItem(
                        id=_s(i),
                        key=_s(f[0]),
                        body=_s(f[1]),
                        origin=_s(f[2]),
                        attempts=int(_s(f[3])),
                        enqueued_at=float(_s(f[4])),
                        last_error=None if f[5] is None else _s(f[5]),
                    )
                )
            return out

        return self._run("peek at the outbox", op)

    def stats(self) -> OutboxStats:
        now = self._clock()

        def op() -> OutboxStats:
            pipe = self._client.pipeline(transaction=True)
            pipe.zcard(self._k("ob:live"))
            pipe.zcount(self._k("ob:proc"), f"({now!r}", "+inf")
            pipe.zcard(self._k("ob:dead"))
            pipe.zrange(self._k("ob:live"), 0, 0)
            depth, in_flight, dead, first = pipe.execute()
            oldest = None
            if first:
                enq = self._client.hget(self._k(f"ob:i:{_s(first[0])}"), "enq")
                if enq is not None:
                    oldest = max(0.0, now - float(_s(enq)))
            return OutboxStats(
                depth=int(depth),
                in_flight=int(in_flight),
                dead=int(dead),
                oldest_age_seconds=oldest,
            )

        return self._run("read outbox stats", op)

    # ------------------------------------------------------------------ leases
    def acquire(self, key: str, owner: str, ttl_seconds: float) -> bool:
        return bool(
            self._run(
                "acquire a lease",
                lambda: self._acquire(
                    keys=[self._k(f"lease:{key}")], args=[owner, _ms(ttl_seconds)]
                ),
            )
        )

    def renew(self, key: str, owner: str, ttl_seconds: float) -> bool:
        return bool(
            self._run(
                "renew a lease",
                lambda: self._renew(keys=[self._k(f"lease:{key}")], args=[owner, _ms(ttl_seconds)]),
            )
        )

    def release(self, key: str, owner: str) -> bool:
        return bool(
            self._run(
                "release a lease",
                lambda: self._release(keys=[self._k(f"lease:{key}")], args=[owner]),
            )
        )

    # ------------------------------------------------------------------ lifecycle
    def health(self) -> Health:
        if self._closed:
            return Health(ok=False, detail="closed")
        try:
            self._run("check health", self._client.ping)
        except StateError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=self._where)

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "location": self._where, "key_prefix": self.key_prefix}

    @property
    def batches(self) -> int:
        """Group-commit batches (scripts run for puts) so far."""
        return self._committer.batches

    def close(self) -> None:
        if self._closed:
            return
        self._committer.close()
        self._closed = True
        if self._own_client:
            self._client.close()
