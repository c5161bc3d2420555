"""Connector kinds used by runner/config tests (independent of the built-ins)."""

from __future__ import annotations

import threading
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from statewave_runner.connectors.base import (
    Checkpoint,
    ConnectorSpec,
    PullConfig,
    PushConfig,
    PushContext,
    SourcePointer,
    SyncRequest,
    make_episode,
    option,
    secret,
)
from statewave_runner.connectors.registry import Registry
from statewave_runner.httptypes import Request, Response


@dataclass(frozen=True, kw_only=True)
class DemoPullConfig(PullConfig):
    repo: str = option(doc="owner/name")
    token: str | None = secret(None)
    pages: int = option(1, min=1)
    region: Literal["us", "eu"] = option("us")
    labels: list[str] = option(default_factory=list)

    def check(self) -> Iterable[tuple[str, str]]:
        if self.repo.count("/") != 1:
            yield "repo", f'expected "owner/name", got "{self.repo}"'


class DemoPull:
    """Emits ``pages`` checkpoints of two episodes each; cursor counts pages."""

    calls: typing.ClassVar[list[str | None]] = []
    gate: typing.ClassVar[threading.Event | None] = None

    def __init__(self, config: DemoPullConfig):
        self.config = config

    def sync(self, request: SyncRequest) -> Iterator[Checkpoint]:
        DemoPull.calls.append(request.cursor)
        if DemoPull.gate is not None:
            DemoPull.gate.wait(10)
        start = int(request.cursor or 0)
        for page in range(start, start + self.config.pages):
            episodes = [
                make_episode(
                    subject=request.subject or f"repo:{self.config.repo}",
                    kind="demo.item",
                    text=f"item {page}.{i}",
                    source=SourcePointer("demo", f"{page}.{i}"),
                    occurred_at="2024-01-01T00:00:00Z",
                    key_parts=["demo", self.config.repo, page, i],
                )
                for i in range(2)
            ]
            yield Checkpoint(episodes, str(page + 1))


@dataclass(frozen=True, kw_only=True)
class DemoPushConfig(PushConfig):
    signing_secret: str = secret()
    channels: list[str] = option()
    once: bool = option(False, doc="queue and mark in one step (ctx.emit_once)")


class DemoPush:
    """Accepts {"id": ...}: dedup on id, emit one episode, 503 when emit fails.

    By default the receiver dedups itself (contains, emit, mark_if_new); with
    ``once`` it makes one ``ctx.emit_once`` call instead.
    """

    def __init__(self, config: DemoPushConfig):
        self.config = config

    def handle(self, request: Request, ctx: PushContext) -> Response:
        if request.headers.get("x-demo-secret") != self.config.signing_secret:
            return Response.json(401, {"error": "bad_signature"})
        import json

        body: Any = json.loads(request.body or b"null")
        if not isinstance(body, dict) or "id" not in body:
            return Response.json(400, {"error": "invalid_json"})
        event_id = str(body["id"])
        if not self.config.once and ctx.dedup.contains(event_id):
            return Response.json(200, {"ok": True, "deduplicated": True})
        episode = make_episode(
            subject=ctx.subject or "demo:push",
            kind="demo.push",
            text=str(body.get("text", "")),
            source=SourcePointer("demo.push", event_id),
            key_parts=["demo", event_id],
        )
        from statewave_runner.errors import EmitError

        if self.config.once:
            try:
                new = ctx.emit_once(event_id, [episode], 3600)
            except EmitError:
                return Response.json(503, {"error": "unavailable"})
            if not new:
                return Response.json(200, {"ok": True, "deduplicated": True})
            return Response.json(200, {"ok": True})
        try:
            ctx.emit([episode])
        except EmitError:
            return Response.json(503, {"error": "unavailable"})
        ctx.dedup.mark_if_new(event_id, 3600)
        return Response.json(200, {"ok": True})


PULL = ConnectorSpec("demo", "pull", DemoPullConfig, DemoPull, "test pull kind")
PUSH = ConnectorSpec("demo", "push", DemoPushConfig, DemoPush, "test push kind")


def registry() -> Registry:
    return Registry([PULL, PUSH], builtins=False)
