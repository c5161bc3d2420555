"""Pull connector ``github``: issues, pull requests (+ reviews), comments and releases.

Episode mapping and idempotency keys are the Node connector's
(``@statewavedev/connectors-github``). What we do differently:

* incremental: issues and comments are listed ``sort=updated&direction=asc``
  with ``since``; the cursor keeps, per list, the ``updated_at`` high-water
  mark (plus the ids already processed at exactly that second) and the
  *floor* of the current pass, so an item is re-read only when it changed and
  an event is emitted only once (events older than the floor were emitted by an
  earlier pass);
* every page is read (Node reads one page of 100 per list); pages are fetched
  by keyset (``since`` = the mark) so an item updated during a long backfill
  cannot shift past the scan, and ``Link: rel="next"`` is followed when a page
  made no progress (a whole page sharing one second);
* the first request of each list carries ``If-None-Match``: an unchanged repo
  answers 304, which costs no rate limit;
* a rate limit that lifts later than the HTTP client waits in-line ends the
  tick with a checkpoint and raises :class:`RateLimitedError` (``retry_at``);
  the next tick before that time raises at once without a request;
* a checkpoint per page, ``stop`` checked between pages, ``max_items`` honoured
  item by item; ``api_url`` for GitHub Enterprise; ``since_default``,
  ``include`` and ``exclude`` (accepted but ignored by Node) are implemented;
* merged pull requests are ``github.pr.merged``: the issues list reports the
  merge under ``pull_request.merged_at``, which Node never reads (so Node maps
  every merged PR as ``github.pr.closed``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from ..httpclient import (
    BadResponseError,
    HttpClient,
    HttpError,
    HttpResponse,
    PermissionDeniedError,
    RateLimitedError,
)
from ._js import js_trim
from .base import (
    Checkpoint,
    ConnectorSpec,
    Episode,
    MappingError,
    PullConfig,
    SourcePointer,
    SyncRequest,
    iso_utc,
    make_episode,
    option,
)

GROUPS = ("issues", "prs", "comments", "reviews", "releases")
DEFAULT_API_URL = "https://api.github.com"
PER_PAGE = 100
CURSOR_VERSION = 1
# GitHub's documented advice for a secondary limit without Retry-After.
SECONDARY_LIMIT_WAIT = 60.0
USER_AGENT = "statewave-runner-github"
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class GithubConfig(PullConfig):
    """``[[pull.github]]``: one repository through the REST API."""

    repo: str = option(
        doc="owner/name of the repository", pattern=r"[^/\s]+/[^/\s]+", example="acme/widgets"
    )
    token: str | None = option(
        None,
        secret=True,
        doc="personal access / app installation token (repo read scope); without it only "
        "public repos, at 60 requests an hour",
        example="${GITHUB_TOKEN}",
    )
    api_url: str = option(
        DEFAULT_API_URL,
        doc="REST API base URL; GitHub Enterprise Server: https://HOST/api/v3",
        example="https://github.example.com/api/v3",
    )
    since_default: str | None = option(
        None,
        doc="where the first sync starts: an ISO-8601 date/time or an age such as 30d "
        "(default: the whole history); Node accepts this key but ignores it",
        example="2024-01-01",
    )
    include: list[str] | None = option(
        None,
        doc="groups to sync: issues, prs, comments, reviews, releases (default all); "
        "Node accepts this key but ignores it",
        example='["issues", "prs"]',
    )
    exclude: list[str] | None = option(
        None,
        doc="groups to leave out; Node accepts this key but ignores it",
        example='["releases"]',
    )

    def check(self) -> Iterable[tuple[str, str]]:
        try:
            parse_repo(self.repo)
        except ValueError as exc:
            yield ("repo", str(exc))
        url = urlsplit(self.api_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            yield ("api_url", f"must be an http(s) URL, got {self.api_url!r}")
        if self.since_default is not None:
            try:
                resolve_since(self.since_default, time.time())
            except ValueError as exc:
                yield ("since_default", str(exc))
        for key, groups in (("include", self.include), ("exclude", self.exclude)):
            for group in groups or ():
                if group not in GROUPS:
                    yield (key, f"unknown group {group!r}; expected one of {', '.join(GROUPS)}")


def parse_repo(spec: str) -> tuple[str, str]:
    """``"owner/name"`` -> ``("owner", "name")``; exactly two non-empty parts, as in Node."""
    parts = spec.split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"invalid repo {spec!r}, expected owner/name")
    return parts[0], parts[1]


def resolve_since(value: str, now: float) -> str:
    """An ISO-8601 date/time, or an age like ``30d``, as a normalized ISO timestamp."""
    match = _RELATIVE.match(value)
    if match:
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        return iso_utc(datetime.fromtimestamp(now - seconds, UTC))
    try:
        return iso_utc(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither an ISO-8601 date/time nor an age such as 30d"
        ) from None


def resolve_groups(include: list[str] | None, exclude: list[str] | None) -> frozenset[str]:
    """Node's rule: ``include`` (or every group) minus ``exclude``."""
    base = set(include) if include else set(GROUPS)
    return frozenset(base - set(exclude or ()))


# --------------------------------------------------------------------------- mapping


def _login(user: Any) -> str | None:
    if isinstance(user, dict) and isinstance(user.get("login"), str):
        return str(user["login"])
    return None


def _with_body(header: str, body: Any) -> str:
    return f"{header}\n\n{js_trim(body)}" if isinstance(body, str) and body else header


def _labels(item: dict[str, Any]) -> list[Any]:
    return [label.get("name") for label in item.get("labels") or [] if isinstance(label, dict)]


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    # Node builds metadata with `undefined` for absent values and JSON drops them.
    return {k: v for k, v in data.items() if v is not None}


def merged_at(item: dict[str, Any]) -> str | None:
    """When a PR was merged: ``pull_request.merged_at`` in the issues list, else top-level."""
    pr = item.get("pull_request")
    if isinstance(pr, dict) and pr.get("merged_at"):
        return str(pr["merged_at"])
    value = item.get("merged_at")
    return str(value) if value else None


@dataclass(frozen=True, slots=True)
class Repo:
    owner: str
    name: str

    @property
    def full(self) -> str:
        return f"{self.owner}/{self.name}"


def _base_metadata(repo: Repo) -> dict[str, Any]:
    return {"repo_owner": repo.owner, "repo_name": repo.name}


def issue_event(item: dict[str, Any]) -> tuple[str, str]:
    """``(kind, occurred_at)`` of an issue as the Node mapper decides them."""
    closed = item.get("state") == "closed"
    kind = "github.issue.closed" if closed else "github.issue.opened"
    occurred = item.get("closed_at") if closed and item.get("closed_at") else item.get("created_at")
    return kind, str(occurred)


def pr_event(item: dict[str, Any]) -> tuple[str, str]:
    """``(kind, occurred_at)`` of a pull request: merged, closed or opened."""
    merged = merged_at(item)
    if merged:
        return "github.pr.merged", merged
    if item.get("state") == "closed" and item.get("closed_at"):
        return "github.pr.closed", str(item["closed_at"])
    return "github.pr.opened", str(item.get("created_at"))


def map_issue(item: dict[str, Any], repo: Repo, subject: str) -> Episode:
    kind, occurred = issue_event(item)
    number = item["number"]
    author = _login(item.get("user"))
    verb = "closed" if item.get("state") == "closed" else "opened"
    header = f"{author or 'unknown'} {verb} issue #{number}: {item.get('title')}"
    milestone = item.get("milestone")
    return make_episode(
        subject=subject,
        kind=kind,
        text=_with_body(header, item.get("body")),
        occurred_at=occurred,
        source=SourcePointer("github.issue", f"{repo.full}#{number}", item.get("html_url")),
        key_parts=["github", repo.owner, repo.name, "issue", number, kind],
        metadata=_drop_none(
            {
                **_base_metadata(repo),
                "issue_number": number,
                "author": author,
                "labels": _labels(item),
                "milestone": milestone.get("title") if isinstance(milestone, dict) else None,
                "state": item.get("state"),
                "created_at": item.get("created_at"),
                "updated_at": item.get("updated_at"),
            }
        ),
    )


def map_pull_request(item: dict[str, Any], repo: Repo, subject: str) -> Episode:
    kind, occurred = pr_event(item)
    number = item["number"]
    author = _login(item.get("user"))
    merged = merged_at(item) is not None
    verb = "merged" if merged else "closed" if item.get("state") == "closed" else "opened"
    header = f"{author or 'unknown'} {verb} PR #{number}: {item.get('title')}"
    milestone = item.get("milestone")
    base, head = item.get("base"), item.get("head")
    return make_episode(
        subject=subject,
        kind=kind,
        text=_with_body(header, item.get("body")),
        occurred_at=occurred,
        source=SourcePointer("github.pull_request", f"{repo.full}#{number}", item.get("html_url")),
        key_parts=["github", repo.owner, repo.name, "pr", number, kind],
        metadata=_drop_none(
            {
                **_base_metadata(repo),
                "pr_number": number,
                "author": author,
                "labels": _labels(item),
                "milestone": milestone.get("title") if isinstance(milestone, dict) else None,
                "state": item.get("state"),
                "merged": merged,
                "base": base.get("ref") if isinstance(base, dict) else None,
                "head": head.get("ref") if isinstance(head, dict) else None,
                "created_at": item.get("created_at"),
                "updated_at": item.get("updated_at"),
                "related_subjects": [f"pr:{number}"] + ([f"author:{author}"] if author else []),
            }
        ),
    )


_ISSUES_SEGMENT = re.compile(r"/issues/(\d+)(?:[/?#]|$)")
_NODE_TRAILING_NUMBER = re.compile(r"/(\d+)(?:[/?]|$)")


def comment_parent_number(issue_url: str) -> int:
    """The issue/PR number a comment belongs to, from its ``issue_url``.

    Node takes the first ``/<digits>`` path segment, which is wrong for an
    all-digit owner name; we read the segment after ``/issues/`` and fall
    back to Node's rule.
    """
    match = _ISSUES_SEGMENT.search(issue_url) or _NODE_TRAILING_NUMBER.search(issue_url)
    return int(match.group(1)) if match else 0


def map_comment(item: dict[str, Any], repo: Repo, subject: str) -> Episode:
    html_url = str(item.get("html_url") or "")
    parent = "pull_request" if "/pull/" in html_url else "issue"
    parent_number = comment_parent_number(str(item.get("issue_url") or ""))
    kind = "github.pr.comment" if parent == "pull_request" else "github.issue.comment"
    body = item.get("body")
    return make_episode(
        subject=subject,
        kind=kind,
        text=body if isinstance(body, str) else "",
        occurred_at=item.get("created_at"),
        source=SourcePointer(kind, f"{repo.full}#{parent_number}/{item['id']}", html_url or None),
        key_parts=["github", repo.owner, repo.name, "comment", parent, parent_number, item["id"]],
        metadata=_drop_none(
            {
                **_base_metadata(repo),
                "parent": parent,
                "parent_number": parent_number,
                "author": _login(item.get("user")),
                "created_at": item.get("created_at"),
                "updated_at": item.get("updated_at"),
            }
        ),
    )


def map_review(item: dict[str, Any], pr_number: int, repo: Repo, subject: str) -> Episode:
    author = _login(item.get("user"))
    header = f"{author or 'unknown'} reviewed PR #{pr_number} ({item.get('state')})"
    return make_episode(
        subject=subject,
        kind="github.pr.review",
        text=_with_body(header, item.get("body")),
        occurred_at=item.get("submitted_at"),
        source=SourcePointer(
            "github.pr.review", f"{repo.full}#{pr_number}/review/{item['id']}", item.get("html_url")
        ),
        key_parts=["github", repo.owner, repo.name, "review", pr_number, item["id"]],
        metadata=_drop_none(
            {
                **_base_metadata(repo),
                "pr_number": pr_number,
                "author": author,
                "state": item.get("state"),
            }
        ),
    )


def map_release(item: dict[str, Any], repo: Repo, subject: str) -> Episode:
    author = _login(item.get("author"))
    tag = item.get("tag_name")
    name = item.get("name")
    title = name if name is not None else tag
    header = f"{author or 'unknown'} published release {tag} — {title}"
    return make_episode(
        subject=subject,
        kind="github.release.published",
        text=_with_body(header, item.get("body")),
        occurred_at=item.get("published_at"),
        source=SourcePointer("github.release", f"{repo.full}@{tag}", item.get("html_url")),
        key_parts=["github", repo.owner, repo.name, "release", item["id"]],
        metadata=_drop_none({**_base_metadata(repo), "tag": tag, "name": name, "author": author}),
    )


# --------------------------------------------------------------------------- cursor


@dataclass(slots=True)
class ListState:
    """Progress through one list (issues, comments or releases)."""

    floor: str | None = None
    """Events before this time were emitted by an earlier pass (None: emit all)."""
    floor_done: list[str] = field(default_factory=list)
    """Items whose events at exactly ``floor`` were emitted by the earlier pass."""
    mark: str | None = None
    """``updated_at`` (releases: ``published_at``) of the last processed item."""
    done: list[str] = field(default_factory=list)
    """Ids processed whose timestamp equals ``mark``."""
    etag: str | None = None
    etag_url: str | None = None
    """The first-page URL ``etag`` belongs to."""

    def to_json(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "floor_done": self.floor_done,
            "mark": self.mark,
            "done": self.done,
            "etag": self.etag,
            "etag_url": self.etag_url,
        }

    @classmethod
    def from_json(cls, data: Any, default_floor: str | None) -> ListState:
        if not isinstance(data, dict):
            return cls(floor=default_floor, mark=default_floor)

        def opt(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        def ids(key: str) -> list[str]:
            value = data.get(key)
            return [str(v) for v in value] if isinstance(value, list) else []

        return cls(
            floor=opt("floor"),
            floor_done=ids("floor_done"),
            mark=opt("mark"),
            done=ids("done"),
            etag=opt("etag"),
            etag_url=opt("etag_url"),
        )

    def seen(self, stamp: str, item_id: str) -> bool:
        """Already processed in an earlier page or tick."""
        if self.mark is None:
            return False
        return stamp < self.mark or (stamp == self.mark and item_id in self.done)

    def advance(self, stamp: str, item_id: str) -> None:
        if self.mark is None or stamp > self.mark:
            self.mark = stamp
            self.done = [item_id]
        elif stamp == self.mark and item_id not in self.done:
            self.done.append(item_id)

    def wants(self, event_time: str | None, item_id: str) -> bool:
        """Whether an event of item ``item_id`` at ``event_time`` is new in this pass."""
        if event_time is None:
            return False
        if self.floor is None or event_time > self.floor:
            return True
        return event_time == self.floor and item_id not in self.floor_done

    def finish_pass(self) -> None:
        """The list was read to its end: later passes emit only newer events."""
        if self.mark is not None:
            self.floor = self.mark
            self.floor_done = list(self.done)


def _norm(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return iso_utc(value)
    except ValueError:
        return None


def _since_param(mark: str) -> str:
    # One second early: GitHub's `since` has second precision and we do not
    # rely on it being inclusive; items at the mark are skipped by id.
    dt = datetime.fromisoformat(mark.replace("Z", "+00:00")) - timedelta(seconds=1)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- connector


class _Stop(Exception):
    """Internal: the tick ends early (stop requested or max_items reached)."""


@dataclass(slots=True)
class _Tick:
    request: SyncRequest
    subject: str
    states: dict[str, ListState]
    pending: list[Episode] = field(default_factory=list)
    last_cursor: str = ""
    emitted: int = 0
    skipped: int = 0

    def full(self) -> bool:
        limit = self.request.max_items
        return limit is not None and self.emitted + len(self.pending) >= limit


class GithubConnector:
    """One repository. Reused across ticks; holds nothing but the rate-limit block."""

    def __init__(self, config: GithubConfig, *, clock: Callable[[], float] | None = None):
        self.config = config
        owner, name = parse_repo(config.repo)
        self.repo = Repo(owner, name)
        self.api = config.api_url.rstrip("/")
        self.groups = resolve_groups(config.include, config.exclude)
        # None: the HTTP client's clock, so one injected clock drives both.
        self._clock_override = clock
        self._clock: Callable[[], float] = clock or time.time
        self._blocked_until = 0.0

    # ------------------------------------------------------------------ plumbing

    def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": USER_AGENT,
        }
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        return headers

    def _url(self, path: str, params: dict[str, Any]) -> str:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.api}/repos/{self.repo.owner}/{self.repo.name}{path}?{query}"

    def _get(self, http: HttpClient, url: str, etag: str | None = None) -> HttpResponse:
        headers = self._headers()
        if etag:
            headers["If-None-Match"] = etag
        try:
            return http.request("GET", url, headers=headers)
        except PermissionDeniedError as exc:
            text = exc.body.decode("utf-8", "replace").lower()
            if "secondary rate limit" in text or "abuse" in text:
                raise RateLimitedError(
                    f"{exc} (secondary rate limit)",
                    status=exc.status,
                    url=exc.url,
                    retry_at=self._clock() + SECONDARY_LIMIT_WAIT,
                ) from None
            raise

    def _cursor_doc(self, states: dict[str, ListState]) -> str:
        doc = {
            "v": CURSOR_VERSION,
            "repo": self.repo.full,
            "api": self.api,
            **{name: state.to_json() for name, state in states.items()},
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    def _load(self, raw: str | None) -> dict[str, ListState]:
        default_floor = (
            resolve_since(self.config.since_default, self._clock())
            if self.config.since_default
            else None
        )
        doc: Any = None
        if raw:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
        if (
            not isinstance(doc, dict)
            or doc.get("v") != CURSOR_VERSION
            or doc.get("repo") != self.repo.full
            or doc.get("api") != self.api
        ):
            doc = {}
        return {
            name: ListState.from_json(doc.get(name), default_floor)
            for name in ("issues", "comments", "releases")
        }

    def _checkpoint(self, tick: _Tick) -> Checkpoint:
        episodes, tick.pending = tick.pending, []
        tick.emitted += len(episodes)
        tick.last_cursor = self._cursor_doc(tick.states)
        return Checkpoint(episodes, tick.last_cursor)

    def _unsaved(self, tick: _Tick) -> bool:
        return bool(tick.pending) or self._cursor_doc(tick.states) != tick.last_cursor

    # ------------------------------------------------------------------ sync

    def sync(self, request: SyncRequest) -> Iterator[Checkpoint]:
        """Walk issues/PRs (+ reviews), comments, releases; a checkpoint per page."""
        self._clock = self._clock_override or request.http.now
        now = self._clock()
        if now < self._blocked_until:
            raise RateLimitedError(
                f"github {self.repo.full}: rate limited until "
                f"{iso_utc(datetime.fromtimestamp(self._blocked_until, UTC))}",
                retry_at=self._blocked_until,
            )
        subject = request.subject or self.config.subject or f"repo:{self.repo.full}"
        tick = _Tick(request, subject, self._load(request.cursor))
        tick.last_cursor = self._cursor_doc(tick.states)
        try:
            if self.groups & {"issues", "prs"}:
                yield from self._scan_issues(tick)
            if "comments" in self.groups:
                yield from self._scan_comments(tick)
            if "releases" in self.groups:
                yield from self._scan_releases(tick)
        except _Stop:
            pass
        except HttpError as exc:
            if isinstance(exc, RateLimitedError) and exc.retry_at is not None:
                self._blocked_until = exc.retry_at
            # Keep what this tick already got, then let the runner count the error.
            if self._unsaved(tick):
                yield self._checkpoint(tick)
            raise
        if self._unsaved(tick):
            yield self._checkpoint(tick)
        if tick.skipped:
            request.log.warning(
                "github %s: %d items could not be mapped", self.repo.full, tick.skipped
            )

    def _keyset_scan(
        self,
        tick: _Tick,
        name: str,
        path: str,
        extra: dict[str, Any],
        handle: Callable[[dict[str, Any], ListState], list[Episode]],
    ) -> Iterator[Checkpoint]:
        """Read a ``since``-capable list oldest-update-first, resuming at the state's mark."""
        state = tick.states[name]
        params = {**extra, "sort": "updated", "direction": "asc", "per_page": PER_PAGE}
        first_url = self._url(
            path, {**params, "since": _since_param(state.mark) if state.mark else None}
        )
        url = first_url
        first = True
        http = tick.request.http
        while True:
            if tick.request.stopping():
                raise _Stop
            etag = state.etag if first and state.etag_url == first_url else None
            resp = self._get(http, url, etag)
            if resp.status == 304:
                return
            items = resp.json()
            if not isinstance(items, list):
                raise BadResponseError(f"github {path}: expected a JSON array")
            if first:
                state.etag, state.etag_url = resp.headers.get("etag"), first_url
                first = False
            progressed = False
            for item in items:
                if not isinstance(item, dict):
                    tick.skipped += 1
                    continue
                stamp = _norm(item.get("updated_at"))
                item_id = str(item.get("id"))
                if stamp is None:
                    tick.skipped += 1
                    continue
                if state.seen(stamp, item_id):
                    continue
                if tick.full():
                    raise _Stop
                try:
                    episodes = handle(item, state)
                except (MappingError, KeyError, TypeError, ValueError) as exc:
                    tick.request.log.warning(
                        "github %s: skipping %s %s: %s", self.repo.full, name, item_id, exc
                    )
                    tick.skipped += 1
                    episodes = []
                taken = tick.emitted + len(tick.pending)
                limit = tick.request.max_items
                if limit is not None and taken and taken + len(episodes) > limit:
                    # Leave the whole item (a PR and its reviews) to the next
                    # tick rather than emit part of it and lose the rest.
                    raise _Stop
                tick.pending.extend(episodes)
                state.advance(stamp, item_id)
                progressed = True
            next_url = resp.links().get("next")
            if next_url is None:
                state.finish_pass()
            yield from self._page_done(tick)
            if next_url is None:
                return
            # Keyset: ask again from the mark, so concurrent updates cannot
            # shift unseen items into pages already read. A page that made no
            # progress (all one second) is continued by its Link instead.
            url = (
                next_url
                if not progressed or state.mark is None
                else self._url(path, {**params, "since": _since_param(state.mark)})
            )

    def _page_done(self, tick: _Tick) -> Iterator[Checkpoint]:
        """Checkpoint what the page produced; end the tick here if asked to."""
        if tick.pending:
            yield self._checkpoint(tick)
        if tick.full() or tick.request.stopping():
            raise _Stop

    def _scan_issues(self, tick: _Tick) -> Iterator[Checkpoint]:
        repo, subject, http = self.repo, tick.subject, tick.request.http

        def handle(item: dict[str, Any], state: ListState) -> list[Episode]:
            out: list[Episode] = []
            if "pull_request" in item and item["pull_request"] is not None:
                if "prs" not in self.groups:
                    return out
                item_id = str(item.get("id"))
                _, occurred = pr_event(item)
                if state.wants(_norm(occurred), item_id):
                    out.append(map_pull_request(item, repo, subject))
                if "reviews" in self.groups:
                    for review in self._reviews(http, int(item["number"])):
                        submitted = _norm(review.get("submitted_at"))
                        if state.wants(submitted, item_id):
                            out.append(map_review(review, int(item["number"]), repo, subject))
                return out
            if "issues" not in self.groups:
                return out
            _, occurred = issue_event(item)
            if state.wants(_norm(occurred), str(item.get("id"))):
                out.append(map_issue(item, repo, subject))
            return out

        yield from self._keyset_scan(tick, "issues", "/issues", {"state": "all"}, handle)

    def _reviews(self, http: HttpClient, number: int) -> list[dict[str, Any]]:
        url: str | None = self._url(f"/pulls/{number}/reviews", {"per_page": PER_PAGE})
        out: list[dict[str, Any]] = []
        while url is not None:
            resp = self._get(http, url)
            items = resp.json()
            if not isinstance(items, list):
                raise BadResponseError(f"github reviews of #{number}: expected a JSON array")
            out.extend(i for i in items if isinstance(i, dict))
            url = resp.links().get("next")
        return out

    def _scan_comments(self, tick: _Tick) -> Iterator[Checkpoint]:
        repo, subject = self.repo, tick.subject

        def handle(item: dict[str, Any], state: ListState) -> list[Episode]:
            # An edit re-lists a comment; its key has no version, so only a
            # comment created in this pass is new.
            if state.wants(_norm(item.get("created_at")), str(item.get("id"))):
                return [map_comment(item, repo, subject)]
            return []

        yield from self._keyset_scan(tick, "comments", "/issues/comments", {}, handle)

    def _scan_releases(self, tick: _Tick) -> Iterator[Checkpoint]:
        """Releases have no ``since``: newest first, stop at the first page older than the floor."""
        state = tick.states["releases"]
        first_url = self._url("/releases", {"per_page": PER_PAGE})
        url: str | None = first_url
        first = True
        fresh: list[tuple[str, str, dict[str, Any]]] = []
        while url is not None:
            if tick.request.stopping():
                raise _Stop
            etag = state.etag if first and state.etag_url == first_url else None
            resp = self._get(tick.request.http, url, etag)
            if resp.status == 304:
                return
            items = resp.json()
            if not isinstance(items, list):
                raise BadResponseError("github /releases: expected a JSON array")
            if first:
                state.etag, state.etag_url = resp.headers.get("etag"), first_url
                first = False
            recent = False
            for item in items:
                if not isinstance(item, dict):
                    continue
                published = _norm(item.get("published_at"))
                created = _norm(item.get("created_at"))
                if state.floor is None or any(
                    t is not None and t >= state.floor for t in (published, created)
                ):
                    recent = True
                item_id = str(item.get("id"))
                if item.get("draft") or not state.wants(published, item_id):
                    continue
                if published is None or state.seen(published, item_id):
                    continue
                fresh.append((published, item_id, item))
            if not recent:
                # Newest first: a page with nothing at or after the floor ends it.
                break
            url = resp.links().get("next")
        # Oldest first, so the mark only moves forward and a cut resumes cleanly.
        fresh.sort(key=lambda t: (t[0], t[1]))
        for published, item_id, item in fresh:
            if tick.full():
                break
            try:
                tick.pending.append(map_release(item, self.repo, tick.subject))
            except (MappingError, KeyError, TypeError, ValueError) as exc:
                tick.request.log.warning(
                    "github %s: skipping release %s: %s", self.repo.full, item_id, exc
                )
                tick.skipped += 1
            state.advance(published, item_id)
        else:
            state.finish_pass()
        yield from self._page_done(tick)


def _factory(config: GithubConfig) -> GithubConnector:
    return GithubConnector(config)


SPEC = ConnectorSpec(
    kind="github",
    mode="pull",
    config_class=GithubConfig,
    factory=_factory,
    summary="GitHub issues, pull requests (+ reviews), comments and releases over the REST API",
)
