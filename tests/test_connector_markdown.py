from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from statewave_runner.connectors.base import Checkpoint, Episode, SyncRequest
from statewave_runner.connectors.markdown import (
    SPEC,
    MarkdownConfig,
    MarkdownConnector,
    compose_text,
    derive_title,
    detect_kind,
    parse_frontmatter,
)
from statewave_runner.httpclient import HttpClient

LOG = logging.getLogger("test.markdown")


def cfg(path: Path | str, **kw: Any) -> MarkdownConfig:
    kw.setdefault("subject", "docs:x")
    return MarkdownConfig(name="docs", schedule="every 1m", path=str(path), **kw)


def request(cursor: str | None = None, **kw: Any) -> SyncRequest:
    base: dict[str, Any] = {
        "kind": "markdown",
        "name": "docs",
        "cursor": cursor,
        "subject": "docs:x",
        "max_items": None,
        "dry_run": False,
        "stop": threading.Event(),
        "http": HttpClient(),
        "log": LOG,
    }
    base.update(kw)
    return SyncRequest(**base)


def run(
    conn: MarkdownConnector, cursor: str | None = None, **kw: Any
) -> tuple[list[Episode], str | None, list[Checkpoint]]:
    checkpoints = list(conn.sync(request(cursor, **kw)))
    episodes = [e for c in checkpoints for e in c.episodes]
    final = cursor
    for c in checkpoints:
        if c.cursor is not None:
            final = c.cursor
    return episodes, final, checkpoints


def write(root: Path, rel: str, text: str | bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8", newline="")
    return p


# --------------------------------------------------------------------------- Node parity


def test_node_verified_example_and_pinned_key(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "# Hello\n")
    (ep,), _, _ = run(MarkdownConnector(cfg(tmp_path)))
    assert ep.kind == "docs.page"
    assert ep.text == "# Hello"
    assert ep.subject == "docs:x"
    assert ep.source.type == "markdown"
    assert ep.source.id == "a.md"
    assert ep.source.url == f"file://{tmp_path / 'a.md'}"
    # sha256("# Hello\n")[:16] = 90f8ec5669cd3418;
    # key = sha256("markdown|docs:x|a.md|90f8ec5669cd3418")[:32], computed by hand.
    assert ep.metadata["hash"] == "90f8ec5669cd3418"
    assert ep.idempotency_key == "30ec110052be6d8505bf54c78bcf387a"
    assert ep.metadata == {"path": "a.md", "hash": "90f8ec5669cd3418", "size": 8, "title": "Hello"}


def test_node_readme_adr_example(tmp_path: Path) -> None:
    body = (
        "---\ntitle: Use Redis for caching\ndate: 2026-05-18\n---\n"
        "We will use Redis as the cache layer for session data.\n"
    )
    write(tmp_path, "docs/adr/0007-caching.md", body)
    conn = MarkdownConnector(cfg(tmp_path, subject="repo:acme/widgets"))
    (ep,), _, _ = run(conn, subject="repo:acme/widgets")
    assert ep.kind == "docs.adr"
    assert ep.occurred_at == "2026-05-18T00:00:00.000Z"
    assert ep.text == (
        "# Use Redis for caching\n\nWe will use Redis as the cache layer for session data."
    )
    assert ep.source.id == "docs/adr/0007-caching.md"
    assert ep.metadata["frontmatter"] == {"title": "Use Redis for caching", "date": "2026-05-18"}
    assert ep.idempotency_key == "a01b6f0dc29e1e0bdd9206a0dd09787c"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("docs/adr/0001-x.md", "docs.adr"),
        ("adrs/x.md", "docs.adr"),
        ("docs/ADR-0001-use-x.md", "docs.adr"),
        ("docs/adr_x.md", "docs.adr"),
        ("docs/adr7.md", "docs.adr"),
        ("rfcs/12.md", "docs.rfc"),
        ("RFC-12-foo.md", "docs.rfc"),
        ("notes/decision-log.md", "docs.decision"),
        ("Architecture/overview.md", "docs.decision"),
        ("docs/padr/x.md", "docs.page"),
        ("guide.md", "docs.page"),
    ],
)
def test_kind_rules(path: str, kind: str) -> None:
    assert detect_kind(path) == kind


def test_frontmatter_parsing() -> None:
    data, body = parse_frontmatter(
        "---\r\n# comment\r\ntitle: 'Quoted: yes'\r\ntags: [a, 'b', \"c\", ]\r\n"
        "empty:\r\nnocolon\r\nurl: http://x:1\r\n---\r\nBody\r\n"
    )
    assert data == {
        "title": "Quoted: yes",
        "tags": ["a", "b", "c"],
        "empty": "",
        "url": "http://x:1",
    }
    assert body == "Body\r\n"
    assert parse_frontmatter("no frontmatter") == ({}, "no frontmatter")
    assert parse_frontmatter("---\n---\n")[0] == {}  # the JS regex needs a line between


def test_title_and_text_rules() -> None:
    assert derive_title("intro\n#   Spaced Title  \nmore", "f.md") == "Spaced Title"
    assert derive_title("#NoSpace\n", "f.md") == "f.md"
    assert derive_title("", "f.md") == "f.md"
    # JS \s also matches newlines, so "#" alone on a line takes the next line.
    assert derive_title("#\nNext", "f.md") == "Next"
    assert derive_title("\ufeff# Bom\r\n", "f.md") == "Bom"
    assert compose_text("T", "  \n ") == "T"
    assert compose_text("T", "# T\n\nx") == "# T\n\nx"
    assert compose_text("T", "\ufeffplain ") == "# T\n\nplain"


def test_title_fallback_to_path_and_empty_body(tmp_path: Path) -> None:
    write(tmp_path, "notes/empty.md", "")
    write(tmp_path, "notes/plain.md", "just text\n")
    episodes, _, _ = run(MarkdownConnector(cfg(tmp_path)))
    by_id = {e.source.id: e for e in episodes}
    assert by_id["notes/empty.md"].text == "notes/empty.md"
    assert by_id["notes/plain.md"].text == "# notes/plain.md\n\njust text"


def test_occurred_at_is_mtime_without_date_and_on_a_bad_date(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = write(tmp_path, "a.md", "x")
    q = write(tmp_path, "b.md", "---\ndate: next tuesday\n---\ny")
    os.utime(p, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    os.utime(q, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    with caplog.at_level(logging.WARNING):
        episodes, _, _ = run(MarkdownConnector(cfg(tmp_path)))
    assert [e.occurred_at for e in episodes] == [
        "2023-11-14T22:13:20.123Z",
        "2020-09-13T12:26:40.000Z",
    ]
    assert "next tuesday" in caplog.text


def test_invalid_utf8_is_hashed_like_node(tmp_path: Path) -> None:
    raw = b"# Caf\xe9\n"
    write(tmp_path, "a.md", raw)
    (ep,), _, _ = run(MarkdownConnector(cfg(tmp_path)))
    expected = hashlib.sha256("# Caf\ufffd\n".encode()).hexdigest()[:16]
    assert ep.metadata["hash"] == expected
    assert ep.text == "# Caf\ufffd"


# --------------------------------------------------------------------------- scanning


def test_walk_skips_ignored_dirs_other_extensions_and_symlinks(tmp_path: Path) -> None:
    write(tmp_path, "b.md", "b")
    write(tmp_path, "A.MDX", "a")
    write(tmp_path, "sub/c.md", "c")
    write(tmp_path, ".hidden/d.md", "d")
    write(tmp_path, "node_modules/x.md", "x")
    write(tmp_path, ".git/y.md", "y")
    write(tmp_path, "deep/build/z.md", "z")
    write(tmp_path, "notes.txt", "t")
    (tmp_path / "link.md").symlink_to(tmp_path / "b.md")
    (tmp_path / "loop").symlink_to(tmp_path)
    episodes, _, _ = run(MarkdownConnector(cfg(tmp_path)))
    assert [e.source.id for e in episodes] == [".hidden/d.md", "A.MDX", "b.md", "sub/c.md"]


def test_glob_and_single_file_paths(tmp_path: Path) -> None:
    write(tmp_path, "docs/a.md", "a")
    write(tmp_path, "docs/sub/b.md", "b")
    write(tmp_path, "docs/sub/c.txt", "c")
    write(tmp_path, "docs/node_modules/d.md", "d")
    write(tmp_path, "README.md", "# Readme")
    episodes, _, _ = run(MarkdownConnector(cfg(f"{tmp_path}/docs/**/*.md")))
    assert [e.source.id for e in episodes] == ["a.md", "sub/b.md"]
    episodes, _, _ = run(MarkdownConnector(cfg(f"{tmp_path}/docs/sub/*.md")))
    assert [e.source.id for e in episodes] == ["b.md"]
    episodes, _, _ = run(MarkdownConnector(cfg(tmp_path / "README.md")))
    assert [(e.source.id, e.text) for e in episodes] == [("README.md", "# Readme")]


def test_include_and_exclude(tmp_path: Path) -> None:
    for rel in ("adr/1.md", "adr/drafts/2.md", "guide.mdx", "x.md"):
        write(tmp_path, rel, rel)
    conn = MarkdownConnector(cfg(tmp_path, include=["adr/", "*.mdx"], exclude=["drafts/"]))
    episodes, _, _ = run(conn)
    assert [e.source.id for e in episodes] == ["adr/1.md", "guide.mdx"]


# --------------------------------------------------------------------------- cursor


def test_cursor_emits_only_new_and_changed_files(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "a1")
    write(tmp_path, "b.md", "b1")
    conn = MarkdownConnector(cfg(tmp_path))
    first, cursor, _ = run(conn)
    assert [e.source.id for e in first] == ["a.md", "b.md"]
    assert cursor is not None
    assert json.loads(cursor)["files"] == {
        "a.md": hashlib.sha256(b"a1").hexdigest()[:16],
        "b.md": hashlib.sha256(b"b1").hexdigest()[:16],
    }

    again, cursor2, checkpoints = run(conn, cursor)
    assert again == [] and checkpoints == [] and cursor2 == cursor

    write(tmp_path, "a.md", "a2")
    write(tmp_path, "c.md", "c1")
    changed, cursor3, _ = run(conn, cursor)
    assert [e.source.id for e in changed] == ["a.md", "c.md"]
    assert changed[0].idempotency_key != first[0].idempotency_key

    (tmp_path / "b.md").unlink()
    deleted, cursor4, checkpoints = run(conn, cursor3)
    assert deleted == [] and len(checkpoints) == 1
    assert cursor4 is not None and "b.md" not in json.loads(cursor4)["files"]

    write(tmp_path, "b.md", "b1")  # back with the same content: same key as before
    (back,), _, _ = run(conn, cursor4)
    assert back.idempotency_key == first[1].idempotency_key


def test_subject_or_root_change_starts_over(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "a")
    _, cursor, _ = run(MarkdownConnector(cfg(tmp_path)))
    other = MarkdownConnector(cfg(tmp_path, subject="docs:y"))
    (ep,), _, _ = run(other, cursor, subject="docs:y")
    assert ep.subject == "docs:y"
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    (ep2,), _, _ = run(MarkdownConnector(cfg(moved)), cursor)
    assert ep2.source.id == "a.md"


def test_max_items_and_checkpoints_resume_without_duplicates(tmp_path: Path) -> None:
    for i in range(250):
        write(tmp_path, f"f{i:03d}.md", f"file {i}")
    conn = MarkdownConnector(cfg(tmp_path))
    eps, cursor, checkpoints = run(conn, max_items=120)
    assert len(eps) == 120
    assert [len(c.episodes) for c in checkpoints] == [100, 20]
    # Deletions are not applied on an incomplete scan, and the rest follows.
    rest, cursor, checkpoints = run(conn, cursor)
    assert len(rest) == 130
    assert [len(c.episodes) for c in checkpoints] == [100, 30]
    assert len({e.idempotency_key for e in eps + rest}) == 250
    assert cursor is not None and len(json.loads(cursor)["files"]) == 250


def test_stop_is_honoured_between_files(tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path, f"f{i}.md", str(i))
    stop = threading.Event()
    conn = MarkdownConnector(cfg(tmp_path))
    gen = conn.sync(request(stop=stop))
    stop.set()
    assert list(gen) == []
    stop.clear()
    eps, _, _ = run(conn, stop=stop)
    assert len(eps) == 5


def test_missing_path_leaves_cursor_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _eps, cursor, checkpoints = run(MarkdownConnector(cfg(tmp_path / "nope")), "kept")
    assert checkpoints == [] and cursor == "kept"
    assert "does not exist" in caplog.text


def test_garbage_cursor_means_from_scratch(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "a")
    for bad in ("{", "[]", '{"v": 99}', json.dumps({"v": 1, "files": []})):
        eps, _, _ = run(MarkdownConnector(cfg(tmp_path)), bad)
        assert len(eps) == 1


# --------------------------------------------------------------------------- config


def test_spec_and_config_validation(tmp_path: Path) -> None:
    assert SPEC.kind == "markdown" and SPEC.mode == "pull"
    assert SPEC.config_class is MarkdownConfig
    assert isinstance(SPEC.factory(cfg(tmp_path)), MarkdownConnector)
    fields = {f.name: f for f in dataclasses.fields(MarkdownConfig)}
    assert {
        "name",
        "schedule",
        "subject",
        "max_items",
        "dry_run",
        "path",
        "include",
        "exclude",
    } <= (set(fields))
    assert fields["path"].default is dataclasses.MISSING
    no_subject = MarkdownConfig(name="d", schedule="every 1m", path="docs")
    assert [k for k, _ in no_subject.check()] == ["subject"]
    assert list(cfg(tmp_path).check()) == []
    bad = MarkdownConfig(name="d", schedule="every 1m", path=" ", subject="s", include=[""])
    assert [k for k, _ in bad.check()] == ["path", "include"]


def test_registry_resolves_the_builtin() -> None:
    from statewave_runner.connectors.registry import Registry

    assert Registry().get("pull", "markdown") is SPEC
