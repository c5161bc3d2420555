"""Logging: JSON or text lines for the ``statewave_runner`` logger tree, secrets scrubbed.

Standard library ``logging`` only. :func:`configure_logging` installs one
handler on the ``statewave_runner`` logger (never on the root logger: the
runner is a library too, and an embedding application owns the root). Every
record passing that handler goes through :class:`RedactingFilter` first.

A JSON line carries ``ts level logger msg``, then the record's context fields,
then ``exc`` (the whole traceback as one string) when there is one::

    {"ts":"2026-01-02T03:04:05.678Z","level":"info","logger":"statewave_runner.runner",
     "msg":"sync complete","kind":"github","name":"main","tick_id":"t-17","episodes":3}

Context fields come from ``extra=``. ``name`` (like ``msg`` or ``module``) is
a reserved ``LogRecord`` attribute that ``extra=`` cannot set, so pass context
through :func:`bind` (``bind(log, kind="github", name="main").info(...)``) or
as ``extra={"ctx": {"name": ...}}``; both end up as top-level fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import sys
import threading
import time
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

from .errors import ConfigError, Issue
from .redact import MASK, Redactor

__all__ = [
    "LOGGER_NAME",
    "BackgroundHandler",
    "ContextAdapter",
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "bind",
    "configure_logging",
]

LOGGER_NAME = "statewave_runner"
CTX = "ctx"
"""The record attribute holding bound context (a dict), flattened into the output."""

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_CORE = ("ts", "level", "logger", "msg")

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",  # as the Node runner writes it, so log pipelines keep matching
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Keys whose values are credentials whatever they hold (header names, config keys).
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-n8n-api-key",
        "x-statewave-token",
    }
)
_SECRET_KEY_PARTS = ("signature", "secret", "password", "passwd", "token", "api_key", "api-key")
_MAX_DEPTH = 6


_SECRET_KEY_CACHE: dict[str, bool] = {}


def _is_secret_key(key: str) -> bool:
    # Field names repeat on every line (method, path, kind, ...): remember the
    # answer for the first thousand of them.
    known = _SECRET_KEY_CACHE.get(key)
    if known is not None:
        return known
    k = key.lower()
    secret = k in _SECRET_KEYS or any(part in k for part in _SECRET_KEY_PARTS)
    if len(_SECRET_KEY_CACHE) < 1024:
        _SECRET_KEY_CACHE[key] = secret
    return secret


# --------------------------------------------------------------------------- redaction


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a record's message, args, context fields and exception text.

    Known secret values (``redactor``), credential headers
    (``Authorization: ...``, signature headers) and URL passwords are masked
    with ``***``; a context field or mapping key named like a credential
    (``authorization``, ``x-hub-signature-256``, ``token``, ``password`` ...)
    has its whole value masked. The record is rewritten in place, so every
    handler after this filter sees the scrubbed record. Attach it to handlers
    (a logger's filters do not see records of its child loggers).
    """

    def __init__(self, redactor: Redactor | None = None):
        super().__init__()
        self.redactor = redactor if redactor is not None else Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_sw_redacted", False):
            return True
        scrub = self.redactor.scrub
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: keep what we can rather than lose the line
            message = f"{record.msg!s} {record.args!r}"
        record.msg = scrub(message)
        record.args = ()
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = scrub(text.rstrip("\n"))
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        fields = record.__dict__
        for key in [k for k in fields if k not in _RESERVED and k[:1] != "_"]:
            if key != CTX and _is_secret_key(key):
                fields[key] = MASK
            else:
                fields[key] = _scrub_value(fields[key], self.redactor, 0)
        record._sw_redacted = True
        return True


def _scrub_value(value: object, redactor: Redactor, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        return redactor.scrub(value)  # type: ignore[arg-type]
    if kind is int or kind is float or value is None:
        return value
    if isinstance(value, str):
        return redactor.scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= _MAX_DEPTH:
        return redactor.scrub(str(value))
    if isinstance(value, Mapping):
        return {
            str(k): MASK if _is_secret_key(str(k)) else _scrub_value(v, redactor, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, redactor, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return redactor.scrub(bytes(value).decode("utf-8", "replace"))
    return redactor.scrub(str(value))


# --------------------------------------------------------------------------- formatters


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """Bound context first, then other ``extra=`` fields, in the order given."""
    raw = record.__dict__
    bound = raw.get(CTX)
    fields: dict[str, Any] = dict(bound) if isinstance(bound, Mapping) else {}
    fields.update({k: raw[k] for k in raw if k not in _RESERVED and k != CTX and k[:1] != "_"})
    return fields


_last_second: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    global _last_second
    second, stamp = _last_second  # one tuple: read and replaced atomically
    if math.floor(record.created) != second:
        second = math.floor(record.created)  # gmtime() floors too
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, stamp)
    return f"{stamp}.{int(record.msecs):03d}Z"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return record.exc_text
    if record.exc_info and record.exc_info[0] is not None:
        return formatter.formatException(record.exc_info)
    return None


# json.dumps() with options builds an encoder per call; these are built once.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))
_TEXT_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts level logger msg``, context fields, ``exc``, ``stack``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _context(record).items():
            out[f"{key}_" if key in _CORE or key in ("exc", "stack") else key] = value
        exc = _exception_text(self, record)
        if exc:
            out["exc"] = exc
        if record.stack_info:
            out["stack"] = record.stack_info
        return _LINE_ENCODER.encode(out)


def _text_value(value: object) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' "=\n\t\\'):
        return value
    return _TEXT_ENCODER.encode(value)


class TextFormatter(logging.Formatter):
    """``<ts> <level> <logger>: <msg> key=value ...`` with the traceback on following lines."""

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        line = f"{_timestamp(record)} {level:<5} {record.name}: {record.getMessage()}"
        fields = _context(record)
        if fields:
            line += "  " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        exc = _exception_text(self, record)
        if exc:
            line += "\n" + exc
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


# --------------------------------------------------------------------------- context


class ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger carrying context fields (``kind``, ``name``, ``tick_id`` ...) on every record.

    Per-call ``extra=`` adds to (and overrides) the bound fields; reserved
    names such as ``name`` are allowed here because context travels in the
    record's ``ctx`` attribute.
    """

    def __init__(self, logger: logging.Logger, context: Mapping[str, object]):
        super().__init__(logger, dict(context))

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        ctx = dict(self.extra or {})
        call_extra = dict(kwargs.get("extra") or {})
        inner = call_extra.pop(CTX, None)
        if isinstance(inner, Mapping):
            ctx.update(inner)
        # Keys a LogRecord reserves go into ctx; the rest stay plain extras.
        for key in [k for k in call_extra if k in _RESERVED]:
            ctx[key] = call_extra.pop(key)
        ctx.update({k: call_extra.pop(k) for k in list(call_extra)})
        kwargs["extra"] = {CTX: ctx}
        return msg, kwargs

    def bind(self, **context: object) -> ContextAdapter:
        """A child adapter with more context."""
        return ContextAdapter(self.logger, {**(self.extra or {}), **context})


def bind(logger: logging.Logger | ContextAdapter, **context: object) -> ContextAdapter:
    """``logger`` with ``context`` fields attached to every record it writes."""
    if isinstance(logger, ContextAdapter):
        return logger.bind(**context)
    return ContextAdapter(logger, context)


# --------------------------------------------------------------------------- background writing

# Argument types a record may keep unrendered until the writer thread formats
# it: they cannot change in the meantime.
_IMMUTABLE = (str, int, float, bool, type(None))
_STOP = object()
# Lines formatted per write at most: formatting holds the GIL, and a long
# batch would hold it past the switch interval while requests wait.
_MAX_BATCH = 64


class BackgroundHandler(logging.Handler):
    """Filters, formats and writes records on one thread of its own, in logging order.

    The logging thread only appends the record to a queue: no lock, no
    formatting, no system call. The writer thread takes whatever has queued
    up, runs this handler's filters (the redaction) and formatter over it and
    writes it with one ``write`` and one ``flush`` per 64 lines: under load
    many lines per system call, and no request thread ever waits for a lock
    or for another thread's write.

    A record's message is rendered on the logging thread when an argument is
    mutable (a list, a dict, an object), so the line shows what was true when
    it was logged. :meth:`flush` waits until everything logged so far is
    written; :meth:`close` (``logging.shutdown()`` calls both) writes what is
    queued and stops the thread; a record logged after that is written by the
    logging thread itself. A process killed with SIGKILL loses the lines still
    queued (a few milliseconds' worth).
    """

    def __init__(self, stream: TextIO, *, linger: float = 0.002):
        super().__init__()
        self.stream = stream
        self._linger = linger
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="statewave-log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # Filters run on the writer thread (_write_batch); Handler.handle
        # would run them here, under a lock every logging thread shares.
        if self._closed:  # after logging.shutdown(): write it here and now
            with self.lock:  # type: ignore[union-attr]
                self._write_batch([record])
            return True
        args = record.args
        if args and not (isinstance(args, tuple) and all(isinstance(a, _IMMUTABLE) for a in args)):
            # Bad %-args raise here: leave them to RedactingFilter, which keeps
            # what it can of the line.
            with contextlib.suppress(Exception):
                record.msg = record.getMessage()
                record.args = ()
        self._queue.put(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        cap = _MAX_BATCH
        while True:
            batch = [get()]
            if self._linger > 0:
                # Let a burst queue up: one write for many lines.
                time.sleep(self._linger)
            while True:
                while len(batch) < cap:
                    try:
                        batch.append(get_nowait())
                    except queue.Empty:
                        break
                if self._write_batch(batch):
                    return
                if len(batch) < cap:
                    break
                # More may be queued: the write gave other threads the GIL;
                # go on without sleeping.
                batch = []

    def _write_batch(self, batch: list[Any]) -> bool:
        lines: list[str] = []
        done: list[threading.Event] = []
        stop = False
        for item in batch:
            if isinstance(item, threading.Event):
                done.append(item)
                continue
            if item is _STOP:
                stop = True
                continue
            try:
                if self.filter(item):
                    lines.append(self.format(item))
            except Exception:
                self.handleError(item)
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except Exception:
                self.handleError(batch[0])
        for event in done:
            event.set()
        return stop

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` seconds) until every record logged so far is written."""
        if not self._thread.is_alive():
            return
        written = threading.Event()
        self._queue.put(written)
        written.wait(timeout)

    def close(self) -> None:
        """Write what is queued, stop the thread. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join(5.0)
        super().close()


# --------------------------------------------------------------------------- setup


def configure_logging(
    *,
    fmt: str = "json",
    level: str = "info",
    redactor: Redactor | None = None,
    stream: TextIO | None = None,
    background: bool = False,
) -> None:
    """Send the ``statewave_runner`` logger tree to ``stream`` (default stderr).

    ``fmt`` is ``"json"`` or ``"text"``; ``level`` one of ``debug info warn
    warning error critical``. Calling it again replaces the handler it
    installed before (never duplicates it) and leaves other handlers alone.
    The tree stops propagating to the root logger, so a line is not printed
    twice when the application has configured the root too. ``background``
    redacts, formats and writes on a thread of its own
    (:class:`BackgroundHandler`): what the daemon does, so that a request
    never waits for a log line.
    """
    issues = []
    if fmt not in ("json", "text"):
        issues.append(Issue("runner.log_format", f'expected "json" or "text", got {fmt!r}'))
    lvl = _LEVELS.get(level.lower()) if isinstance(level, str) else None
    if lvl is None:
        issues.append(
            Issue("runner.log_level", f"expected one of {', '.join(_LEVELS)}, got {level!r}")
        )
    if issues or lvl is None:
        raise ConfigError("invalid logging settings", issues)
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        if getattr(old, "_statewave_runner", False):
            logger.removeHandler(old)
            old.close()
    out = stream if stream is not None else sys.stderr
    handler: logging.Handler = BackgroundHandler(out) if background else logging.StreamHandler(out)
    handler._statewave_runner = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(redactor))
    logger.addHandler(handler)
    logger.setLevel(lvl)
    logger.propagate = False
