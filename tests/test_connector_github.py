from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from statewave_runner.connectors.base import Checkpoint, Episode, SyncRequest
from statewave_runner.connectors.github import (
    SPEC,
    GithubConfig,
    GithubConnector,
    comment_parent_number,
    resolve_groups,
)
from statewave_runner.httpclient import (
    AuthFailedError,
    HttpClient,
    NetworkError,
    NotFoundError,
    RateLimitedError,
)
from tests.fakes.github import FakeGitHub

TOKEN = "ghp_faketoken0123456789"
OWNER, R = "smaramwbc", "statewave"
LOG = logging.getLogger("test.github")


class Clock:
    def __init__(self) -> None:
        self.now = 1_717_000_000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gh(clock: Clock) -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, clock=clock.time) as fake:
        fake.add_repo(OWNER, R)
        yield fake


@pytest.fixture
def http(clock: Clock) -> Iterator[HttpClient]:
    client = HttpClient(sleep=clock.sleep, clock=clock.time, trust_env=False)
    yield client
    client.close()


def config(gh: FakeGitHub, **kw: Any) -> GithubConfig:
    kw.setdefault("token", TOKEN)
    return GithubConfig(name="gh", schedule="every 5m", repo=f"{OWNER}/{R}", api_url=gh.url, **kw)


class Run:
    """Drives ticks like the runner: keeps the last cursor, collects episodes."""

    def __init__(self, connector: GithubConnector, http: HttpClient):
        self.connector = connector
        self.http = http
        self.cursor: str | None = None
        self.episodes: list[Episode] = []
        self.stop = threading.Event()

    def tick(self, **kw: Any) -> list[Checkpoint]:
        req = SyncRequest(
            kind="github",
            name="gh",
            cursor=self.cursor,
            subject=kw.pop("subject", None),
            max_items=kw.pop("max_items", None),
            dry_run=False,
            stop=self.stop,
            http=self.http,
            log=LOG,
        )
        checkpoints: list[Checkpoint] = []
        gen = self.connector.sync(req)
        try:
            for cp in gen:
                checkpoints.append(cp)
                self.episodes.extend(cp.episodes)
                if cp.cursor is not None:
                    self.cursor = cp.cursor
        finally:
            self.last = checkpoints
        return checkpoints

    def keys(self) -> list[str]:
        return [e.idempotency_key for e in self.episodes]


def seed_basic(gh: FakeGitHub) -> None:
    gh.add_issue(
        OWNER,
        R,
        42,
        title="Crash on start",
        body="  Steps:\n1. run  ",
        user="alice",
        labels=["bug"],
        milestone="v1",
        created_at="2024-05-01T10:00:00Z",
    )
    gh.add_issue(
        OWNER,
        R,
        7,
        title="Add feature",
        body="",
        user="bob",
        pull=True,
        state="closed",
        created_at="2024-05-02T10:00:00Z",
        closed_at="2024-05-03T10:00:00Z",
        merged_at="2024-05-03T10:00:00Z",
    )
    gh.add_review(
        OWNER,
        R,
        7,
        review_id=99,
        state="APPROVED",
        body="LGTM",
        user="carol",
        submitted_at="2024-05-02T12:00:00Z",
    )
    gh.add_review(OWNER, R, 7, review_id=100, state="PENDING", submitted_at=None)
    gh.add_comment(
        OWNER,
        R,
        7,
        comment_id=1234567,
        body="nice work",
        user="dave",
        on_pull=True,
        created_at="2024-05-02T11:00:00Z",
    )
    gh.add_release(
        OWNER,
        R,
        "v1.0.0",
        release_id=555,
        name=None,
        body="Notes\n",
        author="erin",
        created_at="2024-05-04T00:00:00Z",
        published_at="2024-05-04T00:00:00Z",
    )
    gh.add_release(OWNER, R, "v2.0.0-draft", draft=True, published_at=None)


# --------------------------------------------------------------------------- Node parity


def test_mapping_and_keys_match_the_node_connector(gh: FakeGitHub, http: HttpClient) -> None:
    seed_basic(gh)
    run = Run(GithubConnector(config(gh)), http)
    run.tick()
    by_kind = {e.kind: e for e in run.episodes}
    assert list(by_kind) == [
        "github.issue.opened",
        "github.pr.merged",
        "github.pr.review",
        "github.pr.comment",
        "github.release.published",
    ]
    # Keys computed by hand from packages/github/src/mapper.ts idempotency_parts:
    # sha256("github|smaramwbc|statewave|issue|42|github.issue.opened")[:32], etc.
    issue = by_kind["github.issue.opened"]
    assert issue.idempotency_key == "5ef6d1b5bf8e950296972fd3ccdbaa92"
    assert issue.text == "alice opened issue #42: Crash on start\n\nSteps:\n1. run"
    assert issue.subject == "repo:smaramwbc/statewave"
    assert issue.occurred_at == "2024-05-01T10:00:00.000Z"
    assert (issue.source.type, issue.source.id, issue.source.url) == (
        "github.issue",
        "smaramwbc/statewave#42",
        "https://github.com/smaramwbc/statewave/issues/42",
    )
    assert issue.metadata == {
        "repo_owner": OWNER,
        "repo_name": R,
        "issue_number": 42,
        "author": "alice",
        "labels": ["bug"],
        "milestone": "v1",
        "state": "open",
        "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:00Z",
    }
    pr = by_kind["github.pr.merged"]
    assert pr.idempotency_key == "e4e2611d3b1215cebe56754423dd5897"
    assert pr.text == "bob merged PR #7: Add feature"  # empty body: header only
    assert pr.occurred_at == "2024-05-03T10:00:00.000Z"
    assert pr.metadata["merged"] is True
    assert pr.metadata["related_subjects"] == ["pr:7", "author:bob"]
    review = by_kind["github.pr.review"]
    assert review.idempotency_key == "8dd92e7232f3a17ef95490f755135aa0"
    assert review.text == "carol reviewed PR #7 (APPROVED)\n\nLGTM"
    assert review.source.id == "smaramwbc/statewave#7/review/99"
    comment = by_kind["github.pr.comment"]
    assert comment.idempotency_key == "80bd1ef12871298513a03936ba6e749d"
    assert comment.text == "nice work"
    assert comment.source.type == "github.pr.comment"
    assert comment.source.id == "smaramwbc/statewave#7/1234567"
    release = by_kind["github.release.published"]
    assert release.idempotency_key == "e32452446f19685486937a55ba53b9b1"
    assert release.text == "erin published release v1.0.0 — v1.0.0\n\nNotes"
    assert release.source.id == "smaramwbc/statewave@v1.0.0"
    assert release.metadata == {
        "repo_owner": OWNER,
        "repo_name": R,
        "tag": "v1.0.0",
        "author": "erin",
    }


def test_request_headers_and_parameters(gh: FakeGitHub, http: HttpClient) -> None:
    seed_basic(gh)
    Run(GithubConnector(config(gh)), http).tick()
    first = gh.requests[0]
    assert first.path == f"/repos/{OWNER}/{R}/issues"
    assert first.query == {"state": "all", "sort": "updated", "direction": "asc", "per_page": "100"}
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert first.headers["accept"] == "application/vnd.github+json"
    assert first.headers["x-github-api-version"] == "2022-11-28"
    paths = [r.path for r in gh.requests]
    assert paths == [
        f"/repos/{OWNER}/{R}/issues",
        f"/repos/{OWNER}/{R}/pulls/7/reviews",
        f"/repos/{OWNER}/{R}/issues/comments",
        f"/repos/{OWNER}/{R}/releases",
    ]


def test_issue_closed_and_pr_states(gh: FakeGitHub, http: HttpClient) -> None:
    gh.add_issue(
        OWNER,
        R,
        42,
        state="closed",
        user=None,
        created_at="2024-01-01T00:00:00Z",
        closed_at="2024-02-01T00:00:00Z",
    )
    gh.add_issue(
        OWNER,
        R,
        8,
        pull=True,
        state="closed",
        created_at="2024-01-01T00:00:00Z",
        closed_at="2024-01-05T00:00:00Z",
    )
    gh.add_issue(OWNER, R, 9, pull=True, body="Body", created_at="2024-01-06T00:00:00Z")
    run = Run(GithubConnector(config(gh, include=["issues", "prs"])), http)
    run.tick()
    got = {(e.kind, e.source.id, e.occurred_at, e.text) for e in run.episodes}
    assert got == {
        (
            "github.issue.closed",
            f"{OWNER}/{R}#42",
            "2024-02-01T00:00:00.000Z",
            "unknown closed issue #42: item 42",
        ),
        (
            "github.pr.closed",
            f"{OWNER}/{R}#8",
            "2024-01-05T00:00:00.000Z",
            "octocat closed PR #8: item 8",
        ),
        (
            "github.pr.opened",
            f"{OWNER}/{R}#9",
            "2024-01-06T00:00:00.000Z",
            "octocat opened PR #9: item 9\n\nBody",
        ),
    }
    closed = next(e for e in run.episodes if e.kind == "github.issue.closed")
    assert closed.idempotency_key == "778014cc787d62f5d92d133e18421bb0"
    assert "author" not in closed.metadata


def test_comment_parent_number() -> None:
    api = "https://api.github.com/repos"
    assert comment_parent_number(f"{api}/o/r/issues/123") == 123
    # Node's first-/digits rule would answer 42 here.
    assert comment_parent_number(f"{api}/42/r/issues/7") == 7
    assert comment_parent_number("https://ghe.example.com/api/v3/repos/o/r/issues/5") == 5
    assert comment_parent_number("nonsense") == 0


# --------------------------------------------------------------------------- incremental


def test_pagination_checkpoints_per_page(gh: FakeGitHub, http: HttpClient) -> None:
    for n in range(1, 251):
        gh.add_issue(OWNER, R, n, created_at=f"2024-01-01T00:{n // 60:02d}:{n % 60:02d}Z")
    run = Run(GithubConnector(config(gh, include=["issues"])), http)
    checkpoints = run.tick()
    # Each keyset page re-reads the item(s) at the mark, so pages 2 and 3 bring 98 and 52 new.
    assert [len(c.episodes) for c in checkpoints] == [100, 98, 52]
    assert len(set(run.keys())) == 250
    issue_requests = [r for r in gh.requests if r.path.endswith("/issues")]
    assert len(issue_requests) == 3
    # Pages 2 and 3 are asked by keyset (since = the mark), not page number.
    assert "since" not in issue_requests[0].query
    assert issue_requests[1].query["since"] == "2024-01-01T00:01:39Z"
    assert "page" not in issue_requests[1].query


def test_unchanged_repo_costs_no_rate_limit(gh: FakeGitHub, http: HttpClient) -> None:
    seed_basic(gh)
    run = Run(GithubConnector(config(gh)), http)
    run.tick()
    run.tick()  # settles each list's ETag at the new high-water mark
    assert len(run.episodes) == 5
    counted = gh.counted_requests()
    before = len(gh.requests)
    assert run.tick() == []
    new = gh.requests[before:]
    assert [r.status for r in new] == [304, 304, 304]
    assert all("if-none-match" in r.headers for r in new)
    assert gh.counted_requests() == counted


def test_only_new_events_are_emitted(gh: FakeGitHub, http: HttpClient) -> None:
    seed_basic(gh)
    run = Run(GithubConnector(config(gh)), http)
    run.tick()
    first = list(run.keys())
    # An old issue gets a comment (updated, still open): no new "opened" episode.
    gh.touch_issue(OWNER, R, 42, "2024-06-01T00:00:00Z")
    gh.add_comment(OWNER, R, 42, comment_id=2, body="me too", created_at="2024-06-01T00:00:00Z")
    # A new issue, closed right away; a new review on the PR; an edited old comment.
    gh.add_issue(
        OWNER,
        R,
        50,
        state="closed",
        created_at="2024-06-02T00:00:00Z",
        closed_at="2024-06-03T00:00:00Z",
    )
    gh.add_review(
        OWNER, R, 7, review_id=101, state="COMMENTED", submitted_at="2024-06-04T00:00:00Z"
    )
    gh.touch_issue(OWNER, R, 7, "2024-06-04T00:00:00Z")
    gh.repos[(OWNER, R)].comments[1234567]["updated_at"] = "2024-06-05T00:00:00Z"
    gh.add_release(
        OWNER,
        R,
        "v1.1.0",
        release_id=556,
        created_at="2024-06-06T00:00:00Z",
        published_at="2024-06-06T00:00:00Z",
    )
    run.tick()
    new = run.episodes[len(first) :]
    assert [(e.kind, e.source.id) for e in new] == [
        ("github.issue.closed", f"{OWNER}/{R}#50"),
        ("github.pr.review", f"{OWNER}/{R}#7/review/101"),
        ("github.issue.comment", f"{OWNER}/{R}#42/2"),
        ("github.release.published", f"{OWNER}/{R}@v1.1.0"),
    ]
    assert len(set(run.keys())) == len(run.keys())


def test_items_updated_during_a_scan_are_not_skipped(gh: FakeGitHub, http: HttpClient) -> None:
    for n in range(1, 251):
        gh.add_issue(OWNER, R, n, created_at=f"2024-01-01T00:{n // 60:02d}:{n % 60:02d}Z")
    touched = threading.Event()

    def bump(rec: Any) -> None:
        # After the first page, an issue from that page is updated: with page
        # numbers, every later item would shift left and #101 would be skipped.
        if rec.path.endswith("/issues") and not touched.is_set():
            touched.set()
            gh.touch_issue(OWNER, R, 5, "2024-02-01T00:00:00Z")

    gh.after_request = bump
    run = Run(GithubConnector(config(gh, include=["issues"])), http)
    run.tick()
    assert {e.source.id for e in run.episodes} == {f"{OWNER}/{R}#{n}" for n in range(1, 251)}
    # #5 is read twice in this first pass (same key: the outbox absorbs it).
    assert len(set(run.keys())) == 250


def test_since_default_limits_the_first_sync(gh: FakeGitHub, http: HttpClient) -> None:
    seed_basic(gh)
    run = Run(GithubConnector(config(gh, since_default="2024-05-02T11:30:00Z")), http)
    run.tick()
    assert [e.kind for e in run.episodes] == [
        "github.pr.merged",
        "github.pr.review",
        "github.release.published",
    ]
    assert gh.requests[0].query["since"] == "2024-05-02T11:29:59Z"


def test_include_and_exclude_groups(gh: FakeGitHub, http: HttpClient) -> None:
    seed_basic(gh)
    run = Run(GithubConnector(config(gh, exclude=["reviews", "releases", "comments"])), http)
    run.tick()
    assert [e.kind for e in run.episodes] == ["github.issue.opened", "github.pr.merged"]
    assert all("/releases" not in r.path and "/reviews" not in r.path for r in gh.requests)
    assert resolve_groups(["issues"], None) == frozenset({"issues"})
    assert resolve_groups(None, ["prs"]) == frozenset({"issues", "comments", "reviews", "releases"})


def test_max_items_resumes_and_never_splits_a_pull_request(
    gh: FakeGitHub, http: HttpClient
) -> None:
    seed_basic(gh)
    run = Run(GithubConnector(config(gh)), http)
    sizes = []
    for _ in range(6):
        run.tick(max_items=1)
        sizes.append(len(run.last and [e for c in run.last for e in c.episodes]))
    assert sizes[:4] == [1, 2, 1, 1]  # the PR comes with its review
    assert len(run.episodes) == 5
    assert len(set(run.keys())) == 5


def test_stop_between_pages(gh: FakeGitHub, http: HttpClient) -> None:
    for n in range(1, 251):
        gh.add_issue(OWNER, R, n, created_at=f"2024-01-01T00:{n // 60:02d}:{n % 60:02d}Z")
    run = Run(GithubConnector(config(gh, include=["issues"])), http)
    gen = run.connector.sync(
        SyncRequest("github", "gh", None, None, None, False, run.stop, http, LOG)
    )
    first = next(gen)
    run.stop.set()
    rest = list(gen)
    assert len(first.episodes) == 100 and rest == []
    run.cursor = first.cursor
    run.stop.clear()
    run.tick()
    assert len(run.episodes) == 150


# --------------------------------------------------------------------------- failures


def test_rate_limit_reset_far_away_ends_the_tick_and_resumes(
    gh: FakeGitHub, http: HttpClient, clock: Clock
) -> None:
    for n in range(1, 251):
        gh.add_issue(OWNER, R, n, created_at=f"2024-01-01T00:{n // 60:02d}:{n % 60:02d}Z")
    gh.limit = gh.remaining = 2  # two pages, then 403 until the reset in an hour
    run = Run(GithubConnector(config(gh, include=["issues"])), http)
    with pytest.raises(RateLimitedError) as info:
        run.tick()
    assert info.value.retry_at == gh.reset_at + 1
    assert clock.sleeps == []  # no worker held
    assert len(run.episodes) == 198  # both pages (100 + 98 new) checkpointed before the error
    # Before the reset, the connector does not even ask.
    before = len(gh.requests)
    clock.now += 60
    with pytest.raises(RateLimitedError):
        run.tick()
    assert len(gh.requests) == before
    clock.now = gh.reset_at + 2
    run.tick()
    assert len(run.episodes) == 250
    assert len(set(run.keys())) == 250


def test_secondary_rate_limit(gh: FakeGitHub, http: HttpClient, clock: Clock) -> None:
    seed_basic(gh)
    gh.secondary_limit(1, retry_after=5)  # short: waited in-line
    run = Run(GithubConnector(config(gh)), http)
    run.tick()
    assert clock.sleeps == [5.0] and len(run.episodes) == 5

    gh2_run = Run(GithubConnector(config(gh)), http)
    gh.secondary_limit(1, retry_after=None)  # no header: GitHub says wait a minute
    with pytest.raises(RateLimitedError) as info:
        gh2_run.tick()
    assert info.value.retry_at == pytest.approx(clock.now + 60)


def test_5xx_is_retried_and_persistent_5xx_raises_after_checkpointing(
    gh: FakeGitHub, http: HttpClient, clock: Clock
) -> None:
    seed_basic(gh)
    gh.fail_next(2, status=502)
    run = Run(GithubConnector(config(gh)), http)
    run.tick()
    assert len(run.episodes) == 5 and len(clock.sleeps) == 2

    gh.add_issue(OWNER, R, 60, created_at="2024-07-01T00:00:00Z")
    run2 = Run(GithubConnector(config(gh, include=["issues"])), http)
    run2.cursor = run.cursor
    gh.fail_next(4, status=503)  # the first try and three retries
    with pytest.raises(NetworkError) as info:
        run2.tick()
    assert info.value.status == 503
    run2.tick()
    assert [e.source.id for e in run2.episodes] == [f"{OWNER}/{R}#60"]


def test_bad_token_and_missing_repo(gh: FakeGitHub, http: HttpClient) -> None:
    seed_basic(gh)
    bad = Run(GithubConnector(config(gh, token="wrong-token-value")), http)
    with pytest.raises(AuthFailedError) as info:
        bad.tick()
    assert info.value.reason == "auth_failed"
    assert "wrong-token-value" not in str(info.value)
    missing = GithubConfig(
        name="gh", schedule="every 5m", repo=f"{OWNER}/nope", api_url=gh.url, token=TOKEN
    )
    with pytest.raises(NotFoundError):
        Run(GithubConnector(missing), http).tick()


def test_github_enterprise_api_url(clock: Clock, http: HttpClient) -> None:
    with FakeGitHub(token=TOKEN, prefix="/api/v3", clock=clock.time) as ghe:
        ghe.add_issue(OWNER, R, 1, created_at="2024-01-01T00:00:00Z")
        run = Run(GithubConnector(config(ghe, include=["issues"])), http)
        run.tick()
        assert [e.source.id for e in run.episodes] == [f"{OWNER}/{R}#1"]
        assert ghe.requests[0].path == f"/api/v3/repos/{OWNER}/{R}/issues"


def test_cursor_of_another_repo_is_ignored(gh: FakeGitHub, http: HttpClient) -> None:
    seed_basic(gh)
    run = Run(GithubConnector(config(gh)), http)
    run.cursor = json.dumps({"v": 1, "repo": "other/repo", "api": gh.url, "issues": {"mark": "x"}})
    run.tick()
    assert len(run.episodes) == 5


# --------------------------------------------------------------------------- config


def test_config_keys_and_checks(gh: FakeGitHub) -> None:
    assert (SPEC.kind, SPEC.mode, SPEC.config_class) == ("github", "pull", GithubConfig)
    fields = {f.name: f for f in dataclasses.fields(GithubConfig)}
    node_keys = {
        "name",
        "schedule",
        "subject",
        "max_items",
        "dry_run",
        "repo",
        "token",
        "since_default",
        "include",
        "exclude",
    }
    assert node_keys <= set(fields)
    assert fields["token"].metadata["secret"] is True
    assert fields["api_url"].default == "https://api.github.com"
    assert list(config(gh).check()) == []
    bad = GithubConfig(
        name="g",
        schedule="every 1m",
        repo="a/b/c",
        api_url="ftp://x",
        since_default="soon",
        include=["wiki"],
    )
    assert [k for k, _ in bad.check()] == ["repo", "api_url", "since_default", "include"]
    ok = GithubConfig(name="g", schedule="every 1m", repo="a/b", since_default="30d")
    assert list(ok.check()) == []
    assert isinstance(SPEC.factory(ok), GithubConnector)


def test_registry_resolves_the_builtin() -> None:
    from statewave_runner.connectors.registry import Registry

    assert Registry().get("pull", "github") is SPEC
