"""Logging: JSON/text lines, context fields, redaction, idempotent setup."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from statewave_runner.errors import ConfigError
from statewave_runner.httptypes import Headers
from statewave_runner.log import (
    LOGGER_NAME,
    BackgroundHandler,
    RedactingFilter,
    bind,
    configure_logging,
)
from statewave_runner.redact import Redactor

SECRET = "xoxb-very-secret-token-123"
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes the process-wide statewave_runner logger: put it back."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    root_handlers = list(logging.getLogger().handlers)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    assert logging.getLogger().handlers == root_handlers, "the root logger must not be touched"


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _setup(fmt: str = "json", level: str = "info", secrets: tuple[str, ...] = ()) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(fmt=fmt, level=level, redactor=Redactor(secrets), stream=stream)
    return stream


def test_json_line_has_core_fields_then_context() -> None:
    out = _setup()
    log = logging.getLogger("statewave_runner.runner")
    log.info(
        "sync complete: %d episodes",
        3,
        extra={"kind": "github", "tick_id": "t-1", "episodes": 3, "duration_ms": 12.5},
    )
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert list(record)[:4] == ["ts", "level", "logger", "msg"]
    assert TS_RE.match(str(record["ts"]))
    assert record == {
        "ts": record["ts"],
        "level": "info",
        "logger": "statewave_runner.runner",
        "msg": "sync complete: 3 episodes",
        "kind": "github",
        "tick_id": "t-1",
        "episodes": 3,
        "duration_ms": 12.5,
    }


def test_levels_and_their_names() -> None:
    out = _setup(level="warn")
    log = logging.getLogger("statewave_runner.x")
    log.debug("no")
    log.info("no")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert [r["level"] for r in _json_lines(out)] == ["warn", "error", "critical"]
    out = _setup(level="DEBUG")
    log.debug("d")
    assert _json_lines(out)[0]["level"] == "debug"


def test_text_format() -> None:
    out = _setup(fmt="text")
    log = bind(logging.getLogger("statewave_runner.server"), request_id="r-9")
    log.info(
        "request",
        extra={
            "method": "POST",
            "path": "/slack/team/events",
            "status": 200,
            "duration_ms": 3.2,
            "remote": "10.0.0.1",
            "note": "two words",
        },
    )
    line = out.getvalue().rstrip("\n")
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  statewave_runner\.server: request  "
        r"request_id=r-9 method=POST path=/slack/team/events status=200 duration_ms=3\.2 "
        r'remote=10\.0\.0\.1 note="two words"$',
        line,
    ), line


def test_bind_carries_kind_and_name_which_extra_cannot() -> None:
    out = _setup()
    base = logging.getLogger("statewave_runner.pull")
    log = bind(base, kind="github", name="main-repo")
    log.info("tick", extra={"tick_id": "t-7"})
    log.bind(tick_id="t-8").info("tick")
    log.info("override", extra={"name": "other"})
    base.info("ctx dict", extra={"ctx": {"kind": "slack", "name": "team"}})
    with pytest.raises(KeyError):  # why bind() exists: LogRecord reserves "name"
        base.info("plain", extra={"name": "x"})
    rows = _json_lines(out)
    assert [(r.get("kind"), r.get("name"), r.get("tick_id")) for r in rows] == [
        ("github", "main-repo", "t-7"),
        ("github", "main-repo", "t-8"),
        ("github", "other", None),
        ("slack", "team", None),
    ]
    assert all(r["logger"] == "statewave_runner.pull" for r in rows)


def test_context_keys_never_overwrite_core_fields() -> None:
    out = _setup()
    logging.getLogger("statewave_runner.x").info("m", extra={"ts": "fake", "level": "fake"})
    (row,) = _json_lines(out)
    assert row["level"] == "info" and TS_RE.match(str(row["ts"]))
    assert row["ts_"] == "fake" and row["level_"] == "fake"


def test_exception_is_one_json_field_and_one_line() -> None:
    out = _setup()
    log = logging.getLogger("statewave_runner.x")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("sync failed", extra={"kind": "github"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["msg"] == "sync failed" and row["level"] == "error"
    exc = str(row["exc"])
    assert exc.startswith("Traceback (most recent call last):")
    assert exc.endswith("RuntimeError: boom\nsecond line")


def test_text_format_puts_traceback_after_the_line() -> None:
    out = _setup(fmt="text")
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("statewave_runner.x").exception("failed")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("statewave_runner.x: failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad value"


def test_secrets_are_scrubbed_everywhere() -> None:
    redactor = Redactor([SECRET])
    stream = io.StringIO()
    configure_logging(fmt="json", redactor=redactor, stream=stream)
    log = logging.getLogger("statewave_runner.slack")
    log.info("token is %s", SECRET)
    log.info(f"inline {SECRET}")
    log.info(
        "request",
        extra={
            "headers": Headers(
                [
                    ("Authorization", "Bearer abc.def"),
                    ("X-Hub-Signature-256", "sha256=deadbeef"),
                    ("X-Slack-Signature", "v0=cafe"),
                    ("Content-Type", "application/json"),
                ]
            ),
            "body": f'{{"token": "{SECRET}"}}'.encode(),
            "url": "https://user:hunter2@example.com/x",
            "nested": [{"deep": {"api_key": "k-1", "ok": f"x {SECRET} y"}}],
            "authorization": "Basic Zm9vOmJhcg==",
            "raw": "Authorization: Bearer zzz-top",
        },
    )
    try:
        raise ConnectionError(f"refused with {SECRET}")
    except ConnectionError:
        log.exception("failed")
    later = "refreshed-oauth-token-456"
    redactor.add(later)  # a token refreshed after logging was configured
    log.warning("new token %s", later, stack_info=True)

    text = stream.getvalue()
    leaks = (SECRET, "abc.def", "deadbeef", "cafe", "hunter2", "k-1", "Zm9vOmJhcg", "zzz-top")
    for leaked in (*leaks, later):
        assert leaked not in text, leaked
    rows = _json_lines(stream)
    assert rows[0]["msg"] == "token is ***"
    headers = rows[2]["headers"]
    assert isinstance(headers, dict)
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "***"
    assert rows[2]["url"] == "https://user:***@example.com/x"
    assert rows[2]["nested"] == [{"deep": {"api_key": "***", "ok": "x *** y"}}]
    assert "refused with ***" in str(rows[3]["exc"])
    assert "stack" in rows[4]


def test_bad_format_args_do_not_lose_the_line() -> None:
    out = _setup()
    logging.getLogger("statewave_runner.x").info("needs %d %d", 1)
    (row,) = _json_lines(out)
    assert "needs %d %d" in str(row["msg"])


def test_unserializable_context_values_become_strings() -> None:
    out = _setup()

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    logging.getLogger("statewave_runner.x").info("m", extra={"thing": Thing(), "n": None})
    (row,) = _json_lines(out)
    assert row["thing"] == "a thing" and row["n"] is None


def test_configure_twice_replaces_only_our_handler() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    mine = logging.StreamHandler(io.StringIO())
    logger.addHandler(mine)
    first = _setup()
    second = _setup(fmt="text")
    logging.getLogger("statewave_runner.x").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    ours = [h for h in logger.handlers if getattr(h, "_statewave_runner", False)]
    assert len(ours) == 1
    assert mine in logger.handlers


def test_root_logger_is_left_alone() -> None:
    root_stream = io.StringIO()
    root_handler = logging.StreamHandler(root_stream)
    root = logging.getLogger()
    root.addHandler(root_handler)
    try:
        out = _setup()
        logging.getLogger("statewave_runner.x").warning("ours")
        logging.getLogger("someone.else").warning("theirs")
        assert "ours" in out.getvalue() and "theirs" not in out.getvalue()
        assert "ours" not in root_stream.getvalue()  # no duplicate through propagation
        assert "theirs" in root_stream.getvalue()
    finally:
        root.removeHandler(root_handler)


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [({"fmt": "xml"}, "runner.log_format"), ({"level": "loud"}, "runner.log_level")],
)
def test_invalid_settings_are_config_errors(kwargs: dict[str, str], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        configure_logging(**kwargs)  # type: ignore[arg-type]
    assert path in str(info.value)


def test_filter_works_on_any_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(Redactor([SECRET])))
    log = logging.getLogger("embedder.app")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("x %s", SECRET)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert stream.getvalue() == "x ***\n"


def test_default_stream_is_stderr_of_a_real_process() -> None:
    code = (
        "import logging\n"
        "from statewave_runner.log import configure_logging\n"
        "from statewave_runner.redact import Redactor\n"
        f"configure_logging(redactor=Redactor([{SECRET!r}]))\n"
        f"logging.getLogger('statewave_runner.cli').info('hello %s', {SECRET!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == ""
    row = json.loads(result.stderr)
    assert row["msg"] == "hello ***" and row["logger"] == "statewave_runner.cli"


# --------------------------------------------------------------------------- background writing


def _background(fmt: str = "json", stream: Any = None) -> tuple[Any, BackgroundHandler]:
    out = stream if stream is not None else io.StringIO()
    configure_logging(fmt=fmt, redactor=Redactor([SECRET]), stream=out, background=True)
    (handler,) = [
        h for h in logging.getLogger(LOGGER_NAME).handlers if isinstance(h, BackgroundHandler)
    ]
    return out, handler


def test_background_lines_equal_the_direct_ones_in_order_from_many_threads() -> None:
    out, handler = _background()
    try:

        def write(t: int) -> None:
            log = bind(logging.getLogger("statewave_runner.bg"), kind="demo", name=f"t{t}")
            for i in range(200):
                log.info("line %d of %s with %s", i, f"t{t}", SECRET, extra={"n": i})

        threads = [threading.Thread(target=write, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        handler.flush()
        rows = _json_lines(out)
    finally:
        handler.close()
    assert len(rows) == 6 * 200
    for t in range(6):
        mine = [r for r in rows if r["name"] == f"t{t}"]
        assert [r["n"] for r in mine] == list(range(200))  # each thread's order kept
        assert mine[7]["msg"] == f"line 7 of t{t} with ***"  # redacted on the writer
        assert mine[7]["kind"] == "demo" and mine[7]["logger"] == "statewave_runner.bg"


def test_background_renders_mutable_arguments_when_logged() -> None:
    out, handler = _background()
    try:
        state = ["before"]
        logging.getLogger("statewave_runner.bg").info("state %s, %d", state, 3)
        state[0] = "after"
        handler.flush()
        (row,) = _json_lines(out)
    finally:
        handler.close()
    assert row["msg"] == "state ['before'], 3"


class BlockingStream(io.StringIO):
    """A stream whose writes wait for ``release`` (a full pipe, a slow terminal)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(10)
        return super().write(s)


def test_a_blocked_stream_does_not_block_the_logging_thread() -> None:
    stream = BlockingStream()
    _, handler = _background(stream=stream)
    try:
        logger = logging.getLogger("statewave_runner.bg")
        done = threading.Event()

        def log_three() -> None:
            for i in range(3):
                logger.warning("line %d", i)
            done.set()

        threading.Thread(target=log_three, daemon=True).start()
        assert done.wait(2), "logging waited for the stream"
        stream.release.set()
        handler.flush()
        assert [r["msg"] for r in _json_lines(stream)] == ["line 0", "line 1", "line 2"]
    finally:
        stream.release.set()
        handler.close()


def test_background_close_writes_the_queue_and_later_lines_directly() -> None:
    out, handler = _background(fmt="text")
    logger = logging.getLogger("statewave_runner.bg")
    for i in range(50):
        logger.info("queued %d", i)
    handler.close()
    handler.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 50 and lines[-1].endswith("statewave_runner.bg: queued 49")
    logger.info("after close %s", SECRET)
    assert out.getvalue().splitlines()[-1].endswith("after close ***")


def test_background_logging_of_a_real_process_is_flushed_at_exit() -> None:
    code = (
        "import logging\n"
        "from statewave_runner.log import configure_logging\n"
        "from statewave_runner.redact import Redactor\n"
        f"configure_logging(redactor=Redactor([{SECRET!r}]), background=True)\n"
        "log = logging.getLogger('statewave_runner.cli')\n"
        f"for i in range(1000): log.info('hello %d %s', i, {SECRET!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    rows = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["msg"] for r in rows] == [f"hello {i} ***" for i in range(1000)]
