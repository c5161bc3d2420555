"""Optional drivers: find them without importing them, import them only when used."""

from __future__ import annotations

import importlib
import importlib.util
import re
from types import ModuleType

from ..errors import DriverMissingError, StateError
from ..redact import Redactor, redact_url

KINDS = ("memory", "file", "sqlite", "postgres", "redis")

# kind -> (module, extra) in the order they are needed; the first is the one
# the operator knows by name ("needs psycopg").
_DRIVERS: dict[str, tuple[tuple[str, str], ...]] = {
    "postgres": (("psycopg", "postgres"), ("psycopg_pool", "postgres")),
    "redis": (("redis", "redis"),),
}


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_driver(kind: str) -> None:
    """Fail fast when the driver a state kind needs is missing (``validate``, start).

    Raises :class:`DriverMissingError` with the exact ``pip install`` line, or
    ``StateError`` for an unknown kind. Imports nothing.
    """
    if kind not in KINDS:
        raise StateError(f"unknown state kind {kind!r}; expected one of: {', '.join(KINDS)}")
    if kind in ("file", "sqlite") and not _present("sqlite3"):
        raise StateError(
            f'state kind "{kind}" needs the sqlite3 module, which this Python was built without; '
            'use kind = "postgres" or "redis", or a Python with sqlite3'
        )
    for module, extra in _DRIVERS.get(kind, ()):
        if not _present(module):
            raise DriverMissingError(kind, module, extra)


def import_driver(kind: str) -> tuple[ModuleType, ...]:
    """Import the driver modules of ``kind`` (``DriverMissingError`` if absent or broken)."""
    modules = []
    for module, extra in _DRIVERS[kind]:
        try:
            modules.append(importlib.import_module(module))
        except ImportError:
            raise DriverMissingError(kind, module, extra) from None
    return tuple(modules)


def safe_url(url: str) -> str:
    """``url`` with its password masked; also handles libpq ``key=value`` strings."""
    if "://" in url:
        return redact_url(url)
    return re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)


def url_redactor(url: str) -> Redactor:
    """A redactor that masks the password inside ``url`` wherever a driver echoes it."""
    secrets: list[str] = []
    if "://" in url:
        from urllib.parse import unquote, urlsplit

        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            secrets += [password, unquote(password)]
    else:
        match = re.search(r"(?i)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url)
        if match:
            secrets.append(match.group(1).strip("'"))
    return Redactor(secrets)


def first_line(text: str) -> str:
    """The first non-empty line of a driver message (libpq adds hints below it)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip()
