"""Pull connector ``markdown``: a directory (or glob) of Markdown files, one episode per file.

Mapping, kinds, titles and idempotency keys are those of the Node connector
(``@statewavedev/connectors-markdown``), so a migration does not duplicate
history. Unlike Node, the cursor remembers each file's content hash: a tick
emits only new and changed files instead of every file every time.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConnectorError
from ._js import LINE_TERMINATORS, NOT_LT, WS, js_str, js_trim
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

# Directory names the Node scanner never descends into.
IGNORED_DIRS = frozenset(
    {"node_modules", ".git", ".next", "dist", "build", "coverage", ".turbo", ".cache"}
)
EXTENSIONS = (".md", ".mdx")
CHECKPOINT_EVERY = 100
CURSOR_VERSION = 1
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True, kw_only=True)
class MarkdownConfig(PullConfig):
    """``[[pull.markdown]]``: Markdown files on the local filesystem."""

    path: str = option(
        doc="directory walked recursively, a single file, or a glob (docs/**/*.md); "
        "relative paths resolve against the working directory",
        example="./docs",
    )
    include: list[str] | None = option(
        None,
        doc="keep only files whose relative path contains one of these strings "
        "(or matches it, when it has * ? [); Node accepts this key but ignores it",
        example='["adr/", "*.mdx"]',
    )
    exclude: list[str] | None = option(
        None,
        doc="drop files whose relative path contains/matches one of these; "
        "Node accepts this key but ignores it",
        example='["drafts/"]',
    )

    def check(self) -> Iterable[tuple[str, str]]:
        if not self.subject:
            yield (
                "subject",
                "required for markdown: the subject the documents are about, "
                'e.g. subject = "repo:acme/widgets"',
            )
        if not self.path.strip():
            yield ("path", "must not be empty")
        for key, patterns in (("include", self.include), ("exclude", self.exclude)):
            if patterns is not None and any(not p for p in patterns):
                yield (key, "entries must be non-empty strings")


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True, slots=True)
class MarkdownFile:
    """One scanned file: what the mapper needs."""

    absolute_path: str
    relative_path: str
    content: str
    hash: str
    size: int
    mtime: str


def locate(path: str) -> tuple[str, list[str]] | None:
    """The base directory and the sorted relative paths of the Markdown files ``path`` names.

    ``None`` when ``path`` does not exist (and is not a glob).
    """
    absolute = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(absolute):
        found: list[str] = []
        _walk(absolute, absolute, found)
        return absolute, _sorted(found)
    if os.path.isfile(absolute):
        base = os.path.dirname(absolute)
        name = os.path.basename(absolute)
        return base, [name] if name.lower().endswith(EXTENSIONS) else []
    if not _GLOB_CHARS.search(path):
        return None
    base = _glob_base(absolute)
    found = []
    for match in glob.iglob(absolute, recursive=True):
        if os.path.islink(match) or not os.path.isfile(match):
            continue
        if not match.lower().endswith(EXTENSIONS):
            continue
        rel = os.path.relpath(match, base).replace(os.sep, "/")
        if any(part in IGNORED_DIRS for part in rel.split("/")[:-1]):
            continue
        found.append(rel)
    return base, _sorted(found)


def _glob_base(pattern: str) -> str:
    parts = pattern.split(os.sep)
    fixed: list[str] = []
    for part in parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or os.sep


def _walk(root: str, directory: str, out: list[str]) -> None:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name in IGNORED_DIRS:
            continue
        # Symlinks are skipped, as in Node (Dirent.isFile/isDirectory are false
        # for them); it also keeps a link loop from recursing forever.
        if entry.is_dir(follow_symlinks=False):
            _walk(root, entry.path, out)
        elif entry.is_file(follow_symlinks=False) and entry.name.lower().endswith(EXTENSIONS):
            out.append(os.path.relpath(entry.path, root).replace(os.sep, "/"))


def _sorted(paths: list[str]) -> list[str]:
    # Node sorts with localeCompare; case-insensitive order approximates it.
    return sorted(paths, key=lambda p: (p.casefold(), p))


def read_file(base: str, relative_path: str) -> MarkdownFile:
    """Read and hash one file (raises ``OSError``)."""
    absolute = os.path.join(base, *relative_path.split("/"))
    with open(absolute, "rb") as fh:
        st = os.fstat(fh.fileno())
        raw = fh.read()
    # Node reads the file as a UTF-8 string (invalid bytes become U+FFFD) and
    # hashes that string: identical to the raw bytes for valid UTF-8.
    content = raw.decode("utf-8", "replace")
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
    return MarkdownFile(
        absolute_path=absolute,
        relative_path=relative_path,
        content=content,
        hash=digest,
        size=st.st_size,
        mtime=iso_utc(st.st_mtime_ns // 1_000_000),
    )


# --------------------------------------------------------------------------- mapping

_FRONTMATTER = re.compile(r"---\r?\n([\s\S]*?)\r?\n---\r?\n?([\s\S]*)\Z")
_ADR = (re.compile(r"(?:^|/)adrs?(?:/|[-_])"), re.compile(r"(?:^|/)adr-?\d"))
_RFC = (re.compile(r"(?:^|/)rfcs?(?:/|[-_])"), re.compile(r"(?:^|/)rfc-?\d"))
# JS /^\s*#\s+(.+?)\s*$/m, with JS's notion of ^, $, . and \s.
_HEADING = re.compile(
    rf"(?:\A|(?<=[{LINE_TERMINATORS}]))[{WS}]*#[{WS}]+({NOT_LT}+?)[{WS}]*"
    rf"(?=[{LINE_TERMINATORS}]|\Z)"
)
_LIST_QUOTES = re.compile(r"^['\"]|['\"]$")


def detect_kind(relative_path: str) -> str:
    """``docs.adr`` / ``docs.rfc`` / ``docs.decision`` / ``docs.page`` from the path."""
    lower = relative_path.lower()
    if any(p.search(lower) for p in _ADR):
        return "docs.adr"
    if any(p.search(lower) for p in _RFC):
        return "docs.rfc"
    if "decision" in lower or "architecture" in lower:
        return "docs.decision"
    return "docs.page"


def parse_frontmatter(content: str) -> tuple[dict[str, Any], str]:
    """Flat ``key: value`` frontmatter (quotes stripped, ``[a, b]`` lists) and the body."""
    match = _FRONTMATTER.match(content)
    if not match:
        return {}, content
    data: dict[str, Any] = {}
    for line in re.split(r"\r?\n", match.group(1)):
        trimmed = js_trim(line)
        if not trimmed or trimmed.startswith("#"):
            continue
        idx = trimmed.find(":")
        if idx == -1:
            continue
        key = js_trim(trimmed[:idx])
        value = js_trim(trimmed[idx + 1 :])
        if (value.startswith('"') and value.endswith('"')) or (
            value.startswith("'") and value.endswith("'")
        ):
            value = value[1:-1]
        elif value.startswith("[") and value.endswith("]"):
            items = [_LIST_QUOTES.sub("", js_trim(v)) for v in value[1:-1].split(",")]
            data[key] = [v for v in items if v]
            continue
        data[key] = value
    return data, match.group(2)


def derive_title(body: str, fallback: str) -> str:
    """The first ``# `` heading of the body, else ``fallback``."""
    match = _HEADING.search(body)
    return js_trim(match.group(1)) if match else fallback


def compose_text(title: str, body: str) -> str:
    """Body trimmed; the title alone if empty; prefixed ``# title`` unless it starts so."""
    trimmed = js_trim(body)
    if not trimmed:
        return title
    if trimmed.startswith(f"# {title}"):
        return trimmed
    return f"# {title}\n\n{trimmed}"


def map_file(
    file: MarkdownFile, subject: str, warn: Callable[[str], None] | None = None
) -> Episode:
    """The Node mapping of one file to an episode."""
    data, body = parse_frontmatter(file.content)
    raw_title = data.get("title")
    title = js_str(raw_title) if raw_title is not None else derive_title(body, file.relative_path)
    occurred = file.mtime
    raw_date = data.get("date")
    if raw_date is not None and js_str(raw_date) != "":
        try:
            occurred = iso_utc(js_str(raw_date))
        except (ValueError, OverflowError):
            # Node would fail the whole tick on an unparseable date; one bad
            # frontmatter should not cost every other file its sync.
            if warn is not None:
                warn(
                    f"{file.relative_path}: frontmatter date {js_str(raw_date)!r} is not "
                    "ISO-8601; using the file's modification time"
                )
    metadata: dict[str, Any] = {
        "path": file.relative_path,
        "hash": file.hash,
        "size": file.size,
        "title": raw_title if raw_title is not None else title,
    }
    if data:
        metadata["frontmatter"] = data
    return make_episode(
        subject=subject,
        kind=detect_kind(file.relative_path),
        text=compose_text(title, body),
        occurred_at=occurred,
        source=SourcePointer("markdown", file.relative_path, f"file://{file.absolute_path}"),
        key_parts=["markdown", subject, file.relative_path, file.hash],
        metadata=metadata,
    )


# --------------------------------------------------------------------------- cursor


def _load_cursor(raw: str | None, subject: str, root: str) -> dict[str, str]:
    """The ``{relative_path: hash}`` of the last tick, if it was for this subject and root."""
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    if (
        not isinstance(doc, dict)
        or doc.get("v") != CURSOR_VERSION
        or doc.get("subject") != subject
        or doc.get("root") != root
        or not isinstance(doc.get("files"), dict)
    ):
        # Another subject or root means other idempotency keys: start over.
        return {}
    return {str(k): str(v) for k, v in doc["files"].items()}


def _dump_cursor(files: dict[str, str], subject: str, root: str) -> str:
    return json.dumps(
        {"v": CURSOR_VERSION, "subject": subject, "root": root, "files": files},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )


def _matches(relative_path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if _GLOB_CHARS.search(pattern):
            if fnmatch.fnmatchcase(relative_path, pattern):
                return True
        elif pattern in relative_path:
            return True
    return False


# --------------------------------------------------------------------------- connector


class MarkdownConnector:
    """Emits an episode for every new or changed Markdown file."""

    def __init__(self, config: MarkdownConfig):
        self.config = config

    def sync(self, request: SyncRequest) -> Iterator[Checkpoint]:
        subject = request.subject or self.config.subject
        if not subject:
            raise ConnectorError(
                f"markdown/{request.name}: subject is required", reason="config_invalid"
            )
        located = locate(self.config.path)
        if located is None:
            # Leave the cursor alone: an unmounted volume must not look like
            # "every file was deleted".
            request.log.warning(
                "markdown path %s does not exist; nothing to sync", self.config.path
            )
            return
        base, relative_paths = located
        root = os.path.abspath(os.path.expanduser(self.config.path))
        previous = _load_cursor(request.cursor, subject, root)
        state = dict(previous)
        present: set[str] = set()
        batch: list[Episode] = []
        emitted = 0
        complete = True

        for rel in relative_paths:
            if self.config.include and not _matches(rel, self.config.include):
                continue
            if self.config.exclude and _matches(rel, self.config.exclude):
                continue
            if request.max_items is not None and emitted >= request.max_items:
                complete = False
                break
            if request.stopping():
                complete = False
                break
            try:
                file = read_file(base, rel)
            except OSError as exc:
                # Vanished or unreadable since the scan: keep what we knew.
                request.log.warning("markdown: cannot read %s: %s", rel, exc)
                if rel in previous:
                    present.add(rel)
                continue
            present.add(rel)
            if previous.get(rel) == file.hash:
                continue
            try:
                episode = map_file(file, subject, warn=request.log.warning)
            except MappingError as exc:
                request.log.warning("markdown: skipping %s: %s", rel, exc)
                continue
            batch.append(episode)
            state[rel] = file.hash
            emitted += 1
            if len(batch) >= CHECKPOINT_EVERY:
                yield Checkpoint(batch, _dump_cursor(state, subject, root))
                batch = []

        if complete:
            for rel in list(state):
                if rel not in present:
                    del state[rel]
        if batch or state != previous:
            yield Checkpoint(batch, _dump_cursor(state, subject, root))


def _factory(config: MarkdownConfig) -> MarkdownConnector:
    return MarkdownConnector(config)


SPEC = ConnectorSpec(
    kind="markdown",
    mode="pull",
    config_class=MarkdownConfig,
    factory=_factory,
    summary="Markdown/MDX files from a directory or glob; one episode per new or changed file",
)
