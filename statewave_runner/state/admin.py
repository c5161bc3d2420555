"""What ``python -m statewave_runner state ...`` does, minus argparse.

Each function takes an open backend and returns a :class:`Result` (exit code,
text for stdout, text for stderr), so the CLI stays a thin wrapper and the
commands are testable without a process::

    state cursors list                    cursors_list(state)
    state cursors get KIND/NAME           cursors_get(state, ref)
    state cursors set KIND/NAME VALUE     cursors_set(state, ref, value)
    state cursors delete KIND/NAME        cursors_delete(state, ref)
    state outbox stats                    outbox_stats(state)
    state outbox peek N [--dead]          outbox_peek(state, n, dead=...)
    state outbox retry-dead [--limit N]   outbox_retry_dead(state, limit)

:func:`run_state_command` dispatches on the words after ``state``.
Exit codes: 0 done, 1 not found, 2 usage error, 3 the backend failed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import StateError
from .base import ClaimedItem, StateBackend

OK, NOT_FOUND, USAGE, FAILED = 0, 1, 2, 3

USAGE_TEXT = (
    "usage: state cursors [list|get KIND/NAME|set KIND/NAME VALUE|delete KIND/NAME]\n"
    "       state outbox [stats|peek N [--dead]|retry-dead [--limit N]]"
)


@dataclass(frozen=True, slots=True)
class Result:
    """What a command prints and how the process exits."""

    code: int
    out: str = ""
    err: str = ""


def parse_ref(ref: str) -> tuple[str, str]:
    """``"github/main"`` -> ``("github", "main")``; ``ValueError`` naming the problem."""
    kind, sep, name = ref.partition("/")
    if not sep or not kind or not name:
        raise ValueError(f"expected KIND/NAME (like github/main), got {ref!r}")
    return kind, name


def _printable(value: str) -> str:
    # A cursor with a newline or tab would break the one-line-per-cursor
    # listing: show those as a JSON string literal instead.
    if any(ch in value for ch in "\n\r\t") or value != value.strip() or not value:
        return json.dumps(value, ensure_ascii=False)
    return value


def cursors_list(state: StateBackend, *, as_json: bool = False) -> Result:
    """Every cursor, sorted: ``kind/name<TAB>cursor`` lines, or one JSON object."""
    cursors = sorted(state.list_cursors().items())
    if as_json:
        doc = {f"{k}/{n}": v for (k, n), v in cursors}
        return Result(OK, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    if not cursors:
        return Result(OK, "", "no cursors\n")
    return Result(OK, "".join(f"{k}/{n}\t{_printable(v)}\n" for (k, n), v in cursors))


def cursors_get(state: StateBackend, ref: str) -> Result:
    """The raw cursor of ``KIND/NAME`` (exit 1 when there is none)."""
    try:
        kind, name = parse_ref(ref)
    except ValueError as exc:
        return Result(USAGE, err=f"{exc}\n")
    value = state.get_cursor(kind, name)
    if value is None:
        return Result(NOT_FOUND, err=f"no cursor for {kind}/{name}\n")
    return Result(OK, value + "\n")


def cursors_set(state: StateBackend, ref: str, value: str) -> Result:
    """Set the cursor of ``KIND/NAME`` (the source resumes from it on its next tick)."""
    try:
        kind, name = parse_ref(ref)
    except ValueError as exc:
        return Result(USAGE, err=f"{exc}\n")
    old = state.get_cursor(kind, name)
    state.set_cursor(kind, name, value)
    was = "unset" if old is None else _printable(old)
    return Result(OK, f"{kind}/{name}: {was} -> {_printable(value)}\n")


def cursors_delete(state: StateBackend, ref: str) -> Result:
    """Forget the cursor of ``KIND/NAME``: the source starts over (exit 1 if none)."""
    try:
        kind, name = parse_ref(ref)
    except ValueError as exc:
        return Result(USAGE, err=f"{exc}\n")
    if not state.delete_cursor(kind, name):
        return Result(NOT_FOUND, err=f"no cursor for {kind}/{name}\n")
    return Result(OK, f"deleted cursor {kind}/{name}\n")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def outbox_stats(state: StateBackend) -> Result:
    """Depth, in flight, dead-lettered and the oldest waiting item's age."""
    st = state.stats()
    lines = [
        f"depth       {st.depth}",
        f"in_flight   {st.in_flight}",
        f"dead        {st.dead}",
        f"oldest_age  {_age(st.oldest_age_seconds)}",
    ]
    return Result(OK, "\n".join(lines) + "\n")


def _item_doc(item: ClaimedItem) -> dict[str, Any]:
    try:
        body: Any = json.loads(item.body)
    except ValueError:
        body = item.body
    enqueued = datetime.fromtimestamp(item.enqueued_at, UTC).isoformat(timespec="milliseconds")
    return {
        "id": item.id,
        "key": item.key,
        "origin": item.origin,
        "attempts": item.attempts,
        "enqueued_at": enqueued.replace("+00:00", "Z"),
        "last_error": item.last_error,
        "episode": body,
    }


def outbox_peek(state: StateBackend, n: int, *, dead: bool = False) -> Result:
    """The ``n`` oldest queued (or dead-lettered) items as JSON Lines, without claiming."""
    if n < 0:
        return Result(USAGE, err=f"N must be a non-negative number, got {n}\n")
    found = state.peek(n, dead=dead)
    if not found:
        return Result(OK, "", f"no {'dead-lettered' if dead else 'queued'} episodes\n")
    out = "".join(json.dumps(_item_doc(i), ensure_ascii=False) + "\n" for i in found)
    return Result(OK, out)


def outbox_retry_dead(state: StateBackend, limit: int | None = None) -> Result:
    """Requeue dead-lettered items (all, or the ``limit`` oldest) for delivery now."""
    if limit is not None and limit < 0:
        return Result(USAGE, err=f"--limit must be a non-negative number, got {limit}\n")
    moved = state.retry_dead(limit)
    noun = "episode" if moved == 1 else "episodes"
    return Result(OK, f"requeued {moved} dead-lettered {noun}\n")


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None


def run_state_command(state: StateBackend, words: Sequence[str]) -> Result:
    """Dispatch ``state <words...>`` (e.g. ``["cursors", "get", "github/main"]``).

    Backend failures become exit code 3 with the (already password-free)
    ``StateError`` message.
    """
    args = list(words)
    try:
        match args:
            case ["cursors"] | ["cursors", "list"]:
                return cursors_list(state)
            case ["cursors", "list", "--json"]:
                return cursors_list(state, as_json=True)
            case ["cursors", "get", ref]:
                return cursors_get(state, ref)
            case ["cursors", "set", ref, value]:
                return cursors_set(state, ref, value)
            case ["cursors", "delete", ref]:
                return cursors_delete(state, ref)
            case ["outbox"] | ["outbox", "stats"]:
                return outbox_stats(state)
            case ["outbox", "peek", n]:
                return outbox_peek(state, _int(n, "N"))
            case ["outbox", "peek", n, "--dead"] | ["outbox", "peek", "--dead", n]:
                return outbox_peek(state, _int(n, "N"), dead=True)
            case ["outbox", "retry-dead"]:
                return outbox_retry_dead(state)
            case ["outbox", "retry-dead", "--limit", n]:
                return outbox_retry_dead(state, _int(n, "--limit"))
            case _:
                return Result(USAGE, err=USAGE_TEXT + "\n")
    except ValueError as exc:
        return Result(USAGE, err=f"{exc}\n")
    except StateError as exc:
        return Result(FAILED, err=f"state: {exc}\n")
