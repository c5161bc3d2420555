"""The world the end-to-end tests run the real daemon in.

A :class:`World` owns a fake Statewave, a fake GitHub API, a directory of
Markdown files and a Slack signing secret, writes the daemon's TOML config for
them, and keeps the oracle: the idempotency key of every episode the upstream
data must produce, computed here from the Node connectors' key recipes
(``sha256("|".join(parts))[:32]``), not by calling the package.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .daemon import Daemon
from .fakes import FakeStatewave, RecordedRequest
from .fakes.github import FakeGitHub
from .fakes.slack import deliver, event_callback, message, signed_headers

API_KEY = "sk-e2e-statewave-key-91f3"
GH_TOKEN = "ghp_e2e_token_5c2d7a"
SIGNING_SECRET = "e2e-slack-signing-secret-7f3a"
OWNER, REPO = "acme", "widgets"
SUBJECT = f"repo:{OWNER}/{REPO}"
TEAM = "T01E2E"
CHANNEL = "C0E2E"
SECRETS = (API_KEY, GH_TOKEN, SIGNING_SECRET)
SUBJECTS = {"markdown/docs": SUBJECT, "github/widgets": SUBJECT, "slack/team": f"team:{TEAM}"}

WIRE_FIELDS = {
    "subject_id",
    "source",
    "type",
    "payload",
    "metadata",
    "provenance",
    "occurred_at",
    "idempotency_key",
}


def node_key(*parts: object) -> str:
    """The Node connectors' idempotency key (ints print the same in JS and Python)."""
    joined = "|".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:32]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


class World:
    """Fakes, upstream data, the config, and the expected keys (see module docstring)."""

    def __init__(self, tmp: Path, statewave: FakeStatewave, github: FakeGitHub) -> None:
        self.tmp = tmp
        self.statewave = statewave
        self.github = github
        self.docs = tmp / "docs"
        self.docs.mkdir(parents=True, exist_ok=True)
        self.expected: dict[str, str] = {}
        """idempotency key -> which source produced it (``kind/name``)."""
        self._slack_ts = 1_700_000_000
        self._event_ids = 0
        github.add_repo(OWNER, REPO)

    # ------------------------------------------------------------------ upstream data
    def add_doc(self, name: str, text: str | None = None) -> str:
        """Write ``docs/<name>`` (new or changed); the key its episode must carry."""
        body = text if text is not None else f"# {name}\n\nAbout {name}.\n"
        (self.docs / name).write_text(body, encoding="utf-8")
        sha16 = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
        key = node_key("markdown", SUBJECT, name, sha16)
        self.expected[key] = "markdown/docs"
        return key

    def add_issue(self, number: int, *, closed: bool = False, day: int = 1) -> str:
        created = f"2024-01-{day:02d}T00:00:00Z"
        self.github.add_issue(
            OWNER,
            REPO,
            number,
            title=f"Issue {number}",
            body=f"Body of {number}",
            created_at=created,
            state="closed" if closed else "open",
            closed_at=f"2024-01-{day:02d}T06:00:00Z" if closed else None,
        )
        kind = "github.issue.closed" if closed else "github.issue.opened"
        key = node_key("github", OWNER, REPO, "issue", number, kind)
        self.expected[key] = "github/widgets"
        return key

    def add_merged_pr(self, number: int, *, review_id: int, day: int = 2) -> list[str]:
        self.github.add_issue(
            OWNER,
            REPO,
            number,
            title=f"PR {number}",
            pull=True,
            created_at=f"2024-01-{day:02d}T00:00:00Z",
            state="closed",
            closed_at=f"2024-01-{day:02d}T09:00:00Z",
            merged_at=f"2024-01-{day:02d}T09:00:00Z",
        )
        self.github.add_review(OWNER, REPO, number, review_id=review_id, body="LGTM")
        keys = [
            node_key("github", OWNER, REPO, "pr", number, "github.pr.merged"),
            node_key("github", OWNER, REPO, "review", number, review_id),
        ]
        for key in keys:
            self.expected[key] = "github/widgets"
        return keys

    def add_comment(self, parent: int, comment_id: int, *, day: int = 3) -> str:
        self.github.add_comment(
            OWNER,
            REPO,
            parent,
            comment_id=comment_id,
            body=f"comment {comment_id}",
            created_at=f"2024-01-{day:02d}T00:00:00Z",
        )
        key = node_key("github", OWNER, REPO, "comment", "issue", parent, comment_id)
        self.expected[key] = "github/widgets"
        return key

    def add_release(self, release_id: int, tag: str) -> str:
        self.github.add_release(OWNER, REPO, tag, release_id=release_id, body="notes")
        key = node_key("github", OWNER, REPO, "release", release_id)
        self.expected[key] = "github/widgets"
        return key

    def seed(self, docs: int = 3) -> None:
        """A small repository and docs directory (every GitHub item kind once)."""
        for i in range(docs):
            self.add_doc(f"page-{i}.md")
        self.add_issue(1)
        self.add_issue(2, closed=True)
        self.add_merged_pr(3, review_id=9001)
        self.add_comment(1, 7001)
        self.add_release(5001, "v1.0.0")

    # ------------------------------------------------------------------ slack
    def slack_event(self, text: str = "hello", *, event_id: str | None = None) -> tuple[bytes, str]:
        """A new channel message delivery: ``(body, expected key)`` (key recorded)."""
        self._slack_ts += 1
        self._event_ids += 1
        ts = f"{self._slack_ts}.000100"
        body = event_callback(
            message(channel=CHANNEL, text=text, ts=ts),
            event_id=event_id or f"EvE2E{self._event_ids:06d}",
            team_id=TEAM,
        )
        key = node_key("slack", TEAM, CHANNEL, ts, "slack.message.posted")
        self.expected[key] = "slack/team"
        return body, key

    def post_slack(
        self, daemon: Daemon, body: bytes, *, retry_num: int | None = None
    ) -> tuple[int, Any]:
        """Deliver ``body`` to the daemon, freshly signed, over a real socket."""
        headers = signed_headers(SIGNING_SECRET, body, retry_num=retry_num)
        return deliver(f"{daemon.url}/slack/team/events", headers, body)

    # ------------------------------------------------------------------ config
    def config(
        self,
        *,
        state: str,
        pull: bool = True,
        push: bool = True,
        statewave: dict[str, Any] | None = None,
        runner: dict[str, Any] | None = None,
        name: str = "config.toml",
    ) -> Path:
        """Write the daemon's config; ``state`` is the body of ``[runner.state]``."""
        sw: dict[str, Any] = {
            "url": self.statewave.url,
            "api_key": API_KEY,
            "timeout": 5.0,
            "batch_size": 100,
            "concurrency": 1,
            "backoff_initial": 0.05,
            "backoff_max": 0.3,
            **(statewave or {}),
        }
        rn: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "stop_timeout": 3.0, **(runner or {})}
        lines = ["[statewave]", *_toml_items(sw), "", "[runner]", *_toml_items(rn)]
        lines += ["", "[runner.state]", state.strip(), ""]
        if pull:
            lines += [
                "[[pull.markdown]]",
                'name = "docs"',
                'schedule = "every 1s"',
                f"path = {json.dumps(str(self.docs))}",
                f'subject = "{SUBJECT}"',
                "",
                "[[pull.github]]",
                'name = "widgets"',
                'schedule = "*/1 * * * * *"',
                f'repo = "{OWNER}/{REPO}"',
                f'token = "{GH_TOKEN}"',
                f'api_url = "{self.github.url}"',
                "",
            ]
        if push:
            lines += [
                "[[push.slack]]",
                'name = "team"',
                f'signing_secret = "{SIGNING_SECRET}"',
                f'channels = ["{CHANNEL}"]',
                "",
            ]
        path = self.tmp / name
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ oracles
    def delivered(self) -> Counter[str]:
        """How many times each idempotency key reached Statewave."""
        return Counter(k for k in self.statewave.idempotency_keys() if k is not None)

    def wait_all_delivered(self, timeout: float = 20.0) -> None:
        def done() -> bool:
            return set(self.expected) <= set(self.delivered())

        try:
            wait_for(done, timeout, "every expected episode")
        except AssertionError:
            missing = {k: v for k, v in self.expected.items() if k not in self.delivered()}
            raise AssertionError(f"not delivered within {timeout}s: {missing}") from None

    def batch_requests(self) -> list[RecordedRequest]:
        return [r for r in self.statewave.requests if r.path == "/v1/episodes/batch"]


def _toml_items(values: dict[str, Any]) -> list[str]:
    return [f"{k} = {json.dumps(v)}" for k, v in values.items()]


def check_wire(
    requests: Iterable[RecordedRequest],
    connectors: dict[str, str],
    statuses: tuple[int | None, ...] = (201,),
) -> int:
    """Assert every batch request is in Statewave's wire format; the episodes checked.

    ``connectors`` maps idempotency key -> the ``kind/name`` that must have produced it;
    ``statuses``: what the fake may have answered (``None``: a request it dropped).
    """
    seen = 0
    for req in requests:
        assert req.method == "POST" and req.path == "/v1/episodes/batch"
        assert req.header("X-API-Key") == API_KEY
        assert req.header("Authorization") is None
        assert req.header("Content-Type") == "application/json"
        assert (req.header("User-Agent") or "").startswith("statewave-runner/")
        assert req.status in statuses, (req.status, req.body[:500])
        doc = req.json()
        assert set(doc) == {"episodes"} and 1 <= len(doc["episodes"]) <= 100
        for ep in doc["episodes"]:
            assert set(ep) <= WIRE_FIELDS, set(ep) - WIRE_FIELDS
            key = ep["idempotency_key"]
            assert ep["metadata"]["idempotency_key"] == key
            connector = connectors[key]
            assert ep["metadata"]["connector"] == connector
            assert ep["provenance"]["connector"] == connector
            assert ep["source"] == connector.split("/")[0]
            assert ep["subject_id"] == SUBJECTS[connector]
            assert ep["type"].startswith(connector.split("/")[0] + ".") or ep["type"].startswith(
                "docs."
            )
            payload = ep["payload"]
            assert isinstance(payload["text"], str) and payload["text"]
            assert payload["occurred_at"] == ep["occurred_at"]
            assert payload["source"]["type"] and payload["source"]["id"]
            seen += 1
    return seen
