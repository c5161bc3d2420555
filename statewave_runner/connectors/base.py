"""The connector API: episodes, pull and push protocols, config building blocks.

A connector kind is a config dataclass plus a class that does the work:

* pull: ``sync(request) -> Iterable[Checkpoint]``. The runner queues each
  checkpoint's episodes together with its cursor (both or neither), so a long
  backfill that is interrupted resumes from its last checkpoint.
* push: ``handle(request, ctx) -> Response``. ``ctx.emit()`` is durable when it
  returns; mark an event as seen only after that (``ctx.emit_once()`` does
  both in one atomic step), and answer 503 when it raises so the sender
  retries.

Both are registered with a :class:`ConnectorSpec` (see ``registry.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..errors import ConnectorError
from ..httptypes import Request, Response

if TYPE_CHECKING:
    from ..httpclient import HttpClient

# --------------------------------------------------------------------------- episodes


def _js_string(part: object) -> str:
    """Render one idempotency-key part exactly as JavaScript's ``String()`` would."""
    if part is None:
        return ""
    if isinstance(part, bool):
        return "true" if part else "false"
    if isinstance(part, int):
        return str(part)
    if isinstance(part, float):
        if math.isnan(part):
            return "NaN"
        if math.isinf(part):
            return "Infinity" if part > 0 else "-Infinity"
        if part.is_integer() and abs(part) < 1e21:
            return str(int(part))
        return repr(part)
    return str(part)


def idempotency_key(*parts: object) -> str:
    """First 32 hex chars of sha256 over the parts joined with ``|``.

    ``None`` becomes the empty string and numbers render as JavaScript's
    ``String(n)`` does, so keys equal the Node connectors' keys and a migration
    does not duplicate history.
    """
    joined = "|".join(_js_string(p) for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:32]


# iso_utc's fast paths: integer epoch milliseconds from 1970 to 2106 (below
# 2**32 seconds the general path's float division is exact to the microsecond,
# so both give the same string), and strings already in its output form with a
# four-digit year >= 1000 (strftime does not pad smaller years).
_MAX_FAST_MILLIS = 2**32 * 1000
_CANONICAL_ISO = re.compile(r"[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", re.ASCII)


def iso_utc(value: datetime | str | int | float | None = None) -> str:
    """Normalize a timestamp like JavaScript's ``new Date(x).toISOString()``.

    ``datetime`` (naive means UTC), ISO-8601 strings (``Z`` or offset; a bare
    date is midnight UTC), or epoch *milliseconds* as a number. ``None`` is now.
    Output: ``2024-05-01T10:00:00.000Z``. Raises ``ValueError`` on junk.
    """
    if type(value) is int and 0 <= value < _MAX_FAST_MILLIS:
        # Epoch milliseconds (what the Slack and other mappers pass): integer
        # arithmetic and gmtime instead of a datetime, fromtimestamp and strftime.
        seconds, millis = divmod(value, 1000)
        t = time.gmtime(seconds)
        return (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"
        )
    if type(value) is str and _CANONICAL_ISO.fullmatch(value):
        # Already in the output form (an episode built from a timestamp we
        # made): only check that it names a real instant.
        text = value
        datetime(
            int(text[0:4]),
            int(text[5:7]),
            int(text[8:10]),
            int(text[11:13]),
            int(text[14:16]),
            int(text[17:19]),
        )
        return text
    if value is None:
        dt = datetime.now(UTC)
    elif isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    elif isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r}")
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a timestamp: {value!r}")
        dt = datetime.fromtimestamp(value / 1000.0, UTC)
    else:
        text = value.strip()
        if not text:
            raise ValueError("empty timestamp")
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    millis = dt.microsecond // 1000
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


@dataclass(frozen=True, slots=True)
class SourcePointer:
    """Where an episode came from: ``type`` (``github.issue``), ``id`` and a link."""

    type: str
    id: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Episode:
    """The normalized unit every connector produces and the runner delivers.

    ``occurred_at`` is an ISO-8601 UTC string with milliseconds (see
    :func:`iso_utc`). ``connector`` is ``"<kind>/<name>"`` of the source that
    produced it; the runner sets it when it queues the episode.
    """

    subject: str
    kind: str
    text: str
    occurred_at: str
    source: SourcePointer
    idempotency_key: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    connector: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape stored in the outbox)."""
        src: dict[str, Any] = {"type": self.source.type, "id": self.source.id}
        if self.source.url is not None:
            src["url"] = self.source.url
        out: dict[str, Any] = {
            "subject": self.subject,
            "kind": self.kind,
            "text": self.text,
            "occurred_at": self.occurred_at,
            "source": src,
            "idempotency_key": self.idempotency_key,
        }
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.connector:
            out["connector"] = self.connector
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Episode:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on a malformed document."""
        try:
            src = data["source"]
            return cls(
                subject=str(data["subject"]),
                kind=str(data["kind"]),
                text=str(data["text"]),
                occurred_at=str(data["occurred_at"]),
                source=SourcePointer(str(src["type"]), str(src["id"]), src.get("url")),
                idempotency_key=str(data["idempotency_key"]),
                metadata=dict(data.get("metadata") or {}),
                connector=str(data.get("connector") or ""),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an episode document: missing or bad {exc}") from None


class MappingError(ConnectorError):
    """One upstream item could not be turned into an episode (skip it, count it, log it)."""

    def __init__(self, message: str):
        super().__init__(message, reason="mapping")


def make_episode(
    *,
    subject: str | None,
    kind: str | None,
    text: str,
    source: SourcePointer,
    occurred_at: datetime | str | int | float | None = None,
    key_parts: Sequence[object] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Episode:
    """Build a validated :class:`Episode`.

    ``key_parts`` feed :func:`idempotency_key`; without them the Node default
    ``[source.type, source.id, kind, occurred_at]`` is used. Raises
    :class:`MappingError` when ``subject``, ``kind``, ``source.type`` or
    ``source.id`` is missing, or ``occurred_at`` does not parse.
    """
    missing = [
        label
        for label, value in (
            ("subject", subject),
            ("kind", kind),
            ("source.type", source.type),
            ("source.id", source.id),
        )
        if not value
    ]
    if missing or not subject or not kind:
        raise MappingError(f"episode is missing {', '.join(missing)}")
    try:
        when = iso_utc(occurred_at)
    except (ValueError, OverflowError, OSError) as exc:
        raise MappingError(f"bad occurred_at {occurred_at!r}: {exc}") from None
    parts = list(key_parts) if key_parts is not None else [source.type, source.id, kind, when]
    return Episode(
        subject=subject,
        kind=kind,
        text=text,
        occurred_at=when,
        source=source,
        idempotency_key=idempotency_key(*parts),
        metadata=dict(metadata or {}),
    )


# --------------------------------------------------------------------------- config building blocks

MISSING: Any = dataclasses.MISSING


def option(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    doc: str = "",
    secret: bool = False,
    min: float | None = None,
    max: float | None = None,
    pattern: str | None = None,
    example: str | None = None,
) -> Any:
    """Declare a config key on a connector config dataclass.

    The config loader reads these: ``secret`` keys are redacted everywhere,
    ``min``/``max`` bound numbers, ``pattern`` is a regex a string must match
    in full, ``doc`` and ``example`` feed ``python -m statewave_runner
    connectors``. A key without a default is required.
    """
    meta = {
        "doc": doc,
        "secret": secret,
        "min": min,
        "max": max,
        "pattern": pattern,
        "example": example,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def secret(default: Any = MISSING, *, doc: str = "") -> Any:
    """Shorthand for ``option(default, secret=True, doc=doc)``."""
    return option(default, secret=True, doc=doc)


NAME_PATTERN = r"[a-z0-9][a-z0-9_-]*"


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Keys every ``[[pull.<kind>]]`` and ``[[push.<kind>]]`` entry has."""

    name: str = option(
        doc="unique within the kind; keys state and the mount path", pattern=NAME_PATTERN
    )
    subject: str | None = option(None, doc="overrides the connector's default subject")

    def check(self) -> Iterable[tuple[str, str]]:
        """Cross-field rules: yield ``(key, message)``; key ``""`` means the entry itself."""
        return ()


@dataclass(frozen=True, kw_only=True)
class PullConfig(SourceConfig):
    """Keys every ``[[pull.<kind>]]`` entry has."""

    schedule: str = option(doc='"every <N><s|m|h|d>" or 5/6-field cron (seconds first)')
    max_items: int | None = option(None, min=1, doc="cap episodes per tick")
    dry_run: bool = option(False, doc="run the sync, log and count, queue nothing")
    timezone: str | None = option(
        None, doc="IANA zone for cron schedules; default [runner] timezone or UTC"
    )


@dataclass(frozen=True, kw_only=True)
class PushConfig(SourceConfig):
    """Keys every ``[[push.<kind>]]`` entry has."""


# --------------------------------------------------------------------------- pull


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A unit of progress: these episodes, then this cursor (``None``: leave it)."""

    episodes: Sequence[Episode]
    cursor: str | None = None


@dataclass(frozen=True)
class SyncRequest:
    """Everything one pull tick gets from the runner."""

    kind: str
    name: str
    cursor: str | None
    subject: str | None
    max_items: int | None
    dry_run: bool
    stop: threading.Event
    http: HttpClient
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]

    def stopping(self) -> bool:
        """True once the runner is stopping: finish the current page and return."""
        return self.stop.is_set()


@runtime_checkable
class PullConnector(Protocol):
    """A pull source. One instance per config entry, reused across ticks."""

    def sync(self, request: SyncRequest) -> Iterable[Checkpoint]: ...


# --------------------------------------------------------------------------- push


class DedupStore(Protocol):
    """Seen-event ids with a TTL, shared by every replica on the state backend."""

    def contains(self, key: str) -> bool: ...

    def mark_if_new(self, key: str, ttl_seconds: float) -> bool: ...


class PushContext(Protocol):
    """What a push receiver gets besides the request."""

    kind: str
    name: str
    subject: str | None
    dedup: DedupStore
    http: HttpClient
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]

    def emit(self, episodes: Sequence[Episode]) -> int:
        """Queue durably (deduplicated by idempotency key); returns how many were new.

        Raises :class:`~statewave_runner.errors.EmitError` when the state
        backend could not take them: answer 503.
        """
        ...

    def emit_once(self, event_key: str, episodes: Sequence[Episode], ttl_seconds: float) -> bool:
        """Queue durably and mark ``event_key`` as seen, in one atomic step, once per key.

        True: the event is new; its episodes are queued (deduplicated by
        idempotency key) and ``event_key`` is marked for ``ttl_seconds``.
        False: ``event_key`` was marked already (a retry of an event taken
        before); nothing was queued. Either way the answer is durable when it
        returns. Raises :class:`~statewave_runner.errors.EmitError` when the
        state backend could not take them: nothing is marked, answer 503.

        One state round trip instead of ``dedup.contains`` + :meth:`emit` +
        ``dedup.mark_if_new``; prefix the key with the receiver's kind and name.
        """
        ...

    def get_cursor(self) -> str | None:
        """This receiver's stored cursor (e.g. Gmail's history id)."""
        ...

    def set_cursor(self, cursor: str) -> None: ...

    def now(self) -> float:
        """Unix time, injectable for signature-window tests."""
        ...


@runtime_checkable
class PushReceiver(Protocol):
    """A webhook receiver mounted at ``/<kind>/<name>/events``."""

    def handle(self, request: Request, ctx: PushContext) -> Response: ...


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class ConnectorSpec:
    """How the runner learns a connector kind.

    ``factory(config)`` builds the connector from a validated instance of
    ``config_class``; it may raise :class:`ConnectorError` (counted as a
    ``load`` error).
    """

    kind: str
    mode: Literal["pull", "push"]
    config_class: type[SourceConfig]
    factory: Callable[[Any], PullConnector | PushReceiver]
    summary: str = ""
