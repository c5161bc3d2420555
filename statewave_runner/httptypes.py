"""Plain request/response values shared by the HTTP server and push receivers.

They carry no I/O, so a receiver can be tested by building a :class:`Request`
by hand and a server can be swapped without touching receivers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

# json.dumps() with options builds an encoder per call; this one is built once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class Headers(Mapping[str, str]):
    """Case-insensitive, order-preserving, immutable HTTP headers.

    ``headers["x-slack-signature"]`` finds ``X-Slack-Signature``; a repeated
    header returns its first value from ``[]`` and all values from
    :meth:`get_all`.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()):
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        self._items: tuple[tuple[str, str], ...] = tuple(pairs)
        index: dict[str, str] = {}
        for name, value in self._items:
            index.setdefault(name.lower(), value)
        self._index = index

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def get_all(self, name: str) -> list[str]:
        """Every value of a repeated header, in arrival order."""
        key = name.lower()
        return [v for n, v in self._items if n.lower() == key]

    def items_raw(self) -> tuple[tuple[str, str], ...]:
        """The headers as received: original case, repeats kept."""
        return self._items

    def __repr__(self) -> str:
        # Values may be secrets (Authorization, signatures): names only.
        return f"Headers({sorted(self._index)})"


@dataclass(frozen=True, slots=True)
class Request:
    """One buffered HTTP request as a receiver sees it."""

    method: str
    path: str
    query: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    remote_addr: str = ""
    request_id: str = ""

    def query_params(self) -> dict[str, list[str]]:
        """The query string parsed; blank values are kept (``?token=`` -> ``[""]``)."""
        return parse_qs(self.query, keep_blank_values=True)


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler answers. ``headers`` never needs Content-Length: the server sets it."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls,
        status: int,
        obj: Any,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """A JSON response (``Content-Type: application/json``)."""
        body = _ENCODER.encode(obj).encode()
        return cls(status, body, (("Content-Type", "application/json"), *headers))

    @classmethod
    def text(
        cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8"
    ) -> Response:
        """A text response."""
        return cls(status, text.encode(), (("Content-Type", content_type),))

    def header(self, name: str) -> str | None:
        """The first value of a response header, case-insensitively."""
        key = name.lower()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None
