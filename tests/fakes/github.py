"""A local fake of the GitHub REST API, speaking its wire format on 127.0.0.1.

Enough of the API for the ``github`` pull connector, with the behaviours that
matter for a correct client:

* ``GET /repos/{o}/{r}/issues`` (``state``, ``sort``, ``direction``, ``since``,
  ``per_page``, ``page``), ``/issues/comments`` (same), ``/pulls/{n}/reviews``,
  ``/releases`` - items shaped as GitHub returns them (PRs in the issues list
  carry ``pull_request.merged_at``);
* pagination with ``Link`` (``next``/``last``/``first``/``prev``), absolute URLs;
* weak ``ETag`` on every 200 and ``If-None-Match`` -> 304; a 304 does not count
  against the rate limit;
* a primary rate limit (``X-RateLimit-Limit/Remaining/Used/Reset/Resource``
  on every answer, 403 + ``X-RateLimit-Remaining: 0`` when spent, refilled at
  the reset time by the fake's clock), a secondary limit (403 + ``Retry-After``
  or, with ``retry_after=None``, only the documented message) and injected 5xx;
* bearer/token auth (401 ``Bad credentials``), unknown repo -> 404, an
  optional path prefix (``/api/v3``) for GitHub Enterprise.

Usage::

    with FakeGitHub(token="t") as gh:
        gh.add_issue("o", "r", 1, title="Bug", created_at="2024-01-01T00:00:00Z")
        ... HttpClient().get(gh.url + "/repos/o/r/issues") ...
        gh.requests  # what the client sent

Thread-safe; data can be changed while a client is paging.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


def ts(value: str | datetime) -> str:
    """GitHub's timestamp format: ``2024-01-01T00:00:00Z``."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0


@dataclass
class _Repo:
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    releases: dict[int, dict[str, Any]] = field(default_factory=dict)


class FakeGitHub:
    """See the module docstring."""

    def __init__(
        self,
        *,
        token: str | None = None,
        prefix: str = "",
        rate_limit: int = 5000,
        clock: Callable[[], float] = time.time,
    ):
        self.token = token
        self.prefix = prefix.rstrip("/")
        self.clock = clock
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[Recorded] = []
        self.limit = rate_limit
        self.remaining = rate_limit
        self.reset_at = int(clock()) + 3600
        self._fail: list[int] = []
        self._secondary: list[float | None] = []
        self._next_id = 10_000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.after_request: Callable[[Recorded], None] | None = None
        """Called (outside the lock) after each answer: lets a test change data mid-scan."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """The API base URL (what ``api_url`` should be set to)."""
        return self.origin + self.prefix

    # ------------------------------------------------------------------ data

    def _repo(self, owner: str, name: str) -> _Repo:
        return self.repos.setdefault((owner, name), _Repo())

    def add_repo(self, owner: str, name: str) -> None:
        """Make an empty repository exist (unknown repositories answer 404)."""
        with self.lock:
            self._repo(owner, name)

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def add_issue(
        self,
        owner: str,
        repo: str,
        number: int,
        *,
        title: str = "",
        body: str | None = None,
        user: str | None = "octocat",
        state: str = "open",
        created_at: str = "2024-01-01T00:00:00Z",
        updated_at: str | None = None,
        closed_at: str | None = None,
        labels: list[str] | None = None,
        milestone: str | None = None,
        pull: bool = False,
        merged_at: str | None = None,
    ) -> dict[str, Any]:
        """Add or replace an issue (``pull=True``: a pull request as the issues list shows it)."""
        kind = "pull" if pull else "issues"
        base = f"https://github.com/{owner}/{repo}/{kind}/{number}"
        item: dict[str, Any] = {
            "id": self._id(),
            "number": number,
            "title": title or f"item {number}",
            "body": body,
            "state": state,
            "user": {"login": user, "id": 1} if user else None,
            "labels": [{"name": n} for n in (labels or [])],
            "milestone": {"title": milestone, "number": 1} if milestone else None,
            "html_url": base,
            "url": f"{self.url}/repos/{owner}/{repo}/issues/{number}",
            "created_at": ts(created_at),
            "updated_at": ts(updated_at or closed_at or merged_at or created_at),
            "closed_at": ts(closed_at) if closed_at else None,
        }
        if pull:
            item["pull_request"] = {
                "url": f"{self.url}/repos/{owner}/{repo}/pulls/{number}",
                "html_url": base,
                "merged_at": ts(merged_at) if merged_at else None,
            }
        with self.lock:
            self._repo(owner, repo).issues[number] = item
        return item

    def touch_issue(
        self, owner: str, repo: str, number: int, updated_at: str, **changes: Any
    ) -> None:
        """Change an issue's fields and its ``updated_at``."""
        with self.lock:
            item = self._repo(owner, repo).issues[number]
            item.update(changes)
            item["updated_at"] = ts(updated_at)

    def add_comment(
        self,
        owner: str,
        repo: str,
        parent: int,
        *,
        body: str = "a comment",
        user: str | None = "octocat",
        created_at: str = "2024-01-01T00:00:00Z",
        updated_at: str | None = None,
        comment_id: int | None = None,
        on_pull: bool = False,
    ) -> dict[str, Any]:
        cid = comment_id if comment_id is not None else self._id()
        kind = "pull" if on_pull else "issues"
        item = {
            "id": cid,
            "body": body,
            "user": {"login": user} if user else None,
            "html_url": f"https://github.com/{owner}/{repo}/{kind}/{parent}#issuecomment-{cid}",
            "issue_url": f"{self.url}/repos/{owner}/{repo}/issues/{parent}",
            "created_at": ts(created_at),
            "updated_at": ts(updated_at or created_at),
        }
        with self.lock:
            self._repo(owner, repo).comments[cid] = item
        return item

    def add_review(
        self,
        owner: str,
        repo: str,
        pr: int,
        *,
        state: str = "APPROVED",
        body: str | None = "",
        user: str | None = "reviewer",
        submitted_at: str | None = "2024-01-01T00:00:00Z",
        review_id: int | None = None,
    ) -> dict[str, Any]:
        rid = review_id if review_id is not None else self._id()
        item = {
            "id": rid,
            "user": {"login": user} if user else None,
            "state": state,
            "body": body,
            "html_url": f"https://github.com/{owner}/{repo}/pull/{pr}#pullrequestreview-{rid}",
            "submitted_at": ts(submitted_at) if submitted_at else None,
        }
        with self.lock:
            self._repo(owner, repo).reviews.setdefault(pr, []).append(item)
        return item

    def add_release(
        self,
        owner: str,
        repo: str,
        tag: str,
        *,
        name: str | None = None,
        body: str | None = None,
        author: str | None = "octocat",
        created_at: str = "2024-01-01T00:00:00Z",
        published_at: str | None = "2024-01-01T00:00:00Z",
        draft: bool = False,
        release_id: int | None = None,
    ) -> dict[str, Any]:
        rid = release_id if release_id is not None else self._id()
        item = {
            "id": rid,
            "tag_name": tag,
            "name": name,
            "body": body,
            "author": {"login": author} if author else None,
            "html_url": f"https://github.com/{owner}/{repo}/releases/tag/{tag}",
            "created_at": ts(created_at),
            "published_at": ts(published_at) if published_at else None,
            "draft": draft,
        }
        with self.lock:
            self._repo(owner, repo).releases[rid] = item
        return item

    # ------------------------------------------------------------------ faults

    def fail_next(self, count: int = 1, status: int = 502) -> None:
        """The next ``count`` requests answer ``status`` (a 5xx)."""
        with self.lock:
            self._fail.extend([status] * count)

    def secondary_limit(self, count: int = 1, retry_after: float | None = 60) -> None:
        """The next ``count`` requests hit the secondary rate limit."""
        with self.lock:
            self._secondary.extend([retry_after] * count)

    def exhaust(self, reset_in: float = 3600) -> None:
        """Spend the primary rate limit; it refills ``reset_in`` seconds from now."""
        with self.lock:
            self.remaining = 0
            self.reset_at = int(self.clock() + reset_in)

    def counted_requests(self) -> int:
        """Requests that cost rate limit (not 304s, not refused ones)."""
        with self.lock:
            return sum(1 for r in self.requests if r.status == 200)

    # ------------------------------------------------------------------ serving

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        rec = Recorded(method, parts.path, query, headers)
        with self.lock:
            self.requests.append(rec)
            status, out_headers, body = self._route(method, parts.path, query, headers, raw_path)
            rec.status = status
        hook = self.after_request
        if hook is not None:
            hook(rec)
        return status, out_headers, body

    def _rate_headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Used": str(self.limit - self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
            "X-RateLimit-Resource": "core",
        }

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: str
    ) -> tuple[int, dict[str, str], bytes]:
        if self.clock() >= self.reset_at:
            self.remaining = self.limit
            self.reset_at = int(self.clock()) + 3600
        if self._fail:
            return self._fail.pop(0), {}, b'{"message":"Server Error"}'
        if self.token is not None:
            auth = headers.get("authorization", "")
            if auth not in (f"Bearer {self.token}", f"token {self.token}"):
                return 401, {}, _json({"message": "Bad credentials"})
        if self._secondary:
            retry_after = self._secondary.pop(0)
            extra = {} if retry_after is None else {"Retry-After": str(int(retry_after))}
            msg = "You have exceeded a secondary rate limit. Please wait a few minutes."
            return 403, {**self._rate_headers(), **extra}, _json({"message": msg})
        if self.remaining <= 0:
            msg = "API rate limit exceeded for user ID 1."
            return 403, self._rate_headers(), _json({"message": msg})
        if method != "GET":
            return 404, {}, _json({"message": "Not Found"})
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return 404, {}, _json({"message": "Not Found"})
            path = path[len(self.prefix) :]
        segs = path.strip("/").split("/")
        if len(segs) < 4 or segs[0] != "repos" or (segs[1], segs[2]) not in self.repos:
            return 404, {}, _json({"message": "Not Found"})
        repo = self.repos[(segs[1], segs[2])]
        rest = segs[3:]
        items: list[dict[str, Any]]
        if rest == ["issues"]:
            items = self._issues(repo, query)
        elif rest == ["issues", "comments"]:
            items = self._comments(repo, query)
        elif len(rest) == 3 and rest[0] == "pulls" and rest[2] == "reviews" and rest[1].isdigit():
            items = list(repo.reviews.get(int(rest[1]), []))
        elif rest == ["releases"]:
            items = sorted(
                repo.releases.values(), key=lambda r: (r["created_at"], r["id"]), reverse=True
            )
        else:
            return 404, {}, _json({"message": "Not Found"})
        return self._page(items, query, headers, raw)

    def _issues(self, repo: _Repo, q: dict[str, str]) -> list[dict[str, Any]]:
        state = q.get("state", "open")
        items = [i for i in repo.issues.values() if state == "all" or i["state"] == state]
        return self._sort_since(items, q, default_sort="created", default_dir="desc")

    def _comments(self, repo: _Repo, q: dict[str, str]) -> list[dict[str, Any]]:
        return self._sort_since(
            list(repo.comments.values()), q, default_sort="created", default_dir="asc"
        )

    @staticmethod
    def _sort_since(
        items: list[dict[str, Any]], q: dict[str, str], *, default_sort: str, default_dir: str
    ) -> list[dict[str, Any]]:
        if "since" in q:
            since = _parse(q["since"])
            items = [i for i in items if _parse(i["updated_at"]) >= since]
        field_name = "updated_at" if q.get("sort", default_sort) == "updated" else "created_at"
        reverse = q.get("direction", default_dir) == "desc"
        return sorted(items, key=lambda i: (i[field_name], i["id"]), reverse=reverse)

    def _page(
        self, items: list[dict[str, Any]], q: dict[str, str], headers: dict[str, str], raw: str
    ) -> tuple[int, dict[str, str], bytes]:
        per_page = max(1, min(100, int(q.get("per_page", "30") or 30)))
        page = max(1, int(q.get("page", "1") or 1))
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        body = _json(chunk)
        etag = 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        out = {"ETag": etag, "Content-Type": "application/json; charset=utf-8"}
        if headers.get("if-none-match") == etag:
            return 304, {**out, **self._rate_headers()}, b""
        self.remaining -= 1
        links = []
        parts = urlsplit(raw)

        def link(p: int, rel: str) -> str:
            query = dict(q)
            query["page"] = str(p)
            return f'<{self.origin}{parts.path}?{urlencode(query)}>; rel="{rel}"'

        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        if links:
            out["Link"] = ", ".join(links)
        return 200, {**out, **self._rate_headers()}, body


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeGitHub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out, body = self.owner.handle(self.command, self.path, headers)
        self.send_response(status)
        for k, v in out.items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)

    do_GET = do_POST = _serve
