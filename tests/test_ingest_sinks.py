"""FileSink, CallableSink, as_sink and make_sink."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from statewave_runner.connectors.base import Episode, SourcePointer, make_episode
from statewave_runner.errors import PermanentError, RetryableError
from statewave_runner.ingest import (
    CallableSink,
    FileSink,
    HttpSink,
    Sink,
    as_sink,
    episode_to_wire,
    make_sink,
)


def ep(n: int, **changes: object) -> Episode:
    base = make_episode(
        subject="team:core",
        kind="slack.message",
        text=f"message {n}",
        source=SourcePointer("slack.message", f"C1/{n}"),
        occurred_at=1_700_000_000_000 + n,
    )
    fields: dict[str, object] = {"connector": "slack/eng", **changes}
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_file_sink_appends_the_wire_documents(tmp_path: Path) -> None:
    path = tmp_path / "out" / "episodes.jsonl"  # parent created
    sink = FileSink(path)
    sink.ingest([ep(1), ep(2)])
    sink.ingest([ep(3, text="nul\x00")])
    sink.close()
    docs = lines(path)
    assert docs == [episode_to_wire(e)[0] for e in (ep(1), ep(2), ep(3, text="nul"))]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_file_sink_survives_reopen_and_repairs_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    FileSink(path).ingest([ep(1)])
    with open(path, "ab") as handle:
        handle.write(b'{"subject_id": "torn')  # a crash mid-write
    sink = FileSink(path)
    sink.ingest([ep(2)])
    sink.close()
    raw = path.read_text().splitlines()
    assert len(raw) == 3
    assert json.loads(raw[0])["payload"]["text"] == "message 1"
    assert raw[1] == '{"subject_id": "torn'
    assert json.loads(raw[2])["payload"]["text"] == "message 2"


def test_file_sink_write_failure_is_retryable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises((RetryableError, OSError)):
        FileSink(blocker / "episodes.jsonl").ingest([ep(1)])
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        (ro / "e.jsonl").write_text("")
        os.chmod(ro / "e.jsonl", 0o400)
        with pytest.raises(RetryableError, match="cannot append"):
            FileSink(ro / "e.jsonl").ingest([ep(1)])


def test_file_sink_rejects_unsendable_episode_by_index(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    with pytest.raises(PermanentError) as info:
        FileSink(path).ingest([ep(1), ep(2, kind="")])
    assert info.value.index == 1
    assert not path.exists() or path.read_text() == ""


def test_callable_sink_passes_delivery_errors_and_wraps_others() -> None:
    seen: list[list[str]] = []

    def fn(episodes: Sequence[Episode]) -> None:
        seen.append([e.idempotency_key for e in episodes])
        if len(seen) == 2:
            raise PermanentError("bad one", index=0)
        if len(seen) == 3:
            raise KeyError("boom")

    sink = CallableSink(fn)
    sink.ingest([ep(1)])
    with pytest.raises(PermanentError):
        sink.ingest([ep(2)])
    with pytest.raises(RetryableError, match="KeyError"):
        sink.ingest([ep(3)])
    assert len(seen) == 3
    assert sink.describe()["kind"] == "callable"


def test_as_sink_accepts_sinks_and_callables(tmp_path: Path) -> None:
    file_sink = FileSink(tmp_path / "x.jsonl")
    assert as_sink(file_sink) is file_sink
    wrapped = as_sink(lambda episodes: None)
    assert isinstance(wrapped, CallableSink) and isinstance(wrapped, Sink)
    with pytest.raises(TypeError):
        as_sink(42)  # type: ignore[arg-type]


def test_make_sink_picks_by_url(tmp_path: Path) -> None:
    assert isinstance(make_sink("http://127.0.0.1:9", "k"), HttpSink)
    sink = make_sink("file:out/e.jsonl", base_dir=tmp_path)
    assert isinstance(sink, FileSink)
    assert sink.path == tmp_path / "out" / "e.jsonl"
    absolute = make_sink(f"file://{tmp_path}/abs.jsonl", base_dir="/elsewhere")
    assert isinstance(absolute, FileSink) and absolute.path == tmp_path / "abs.jsonl"
    with pytest.raises(ValueError, match="credentials"):
        make_sink("https://u:p@host")
    with pytest.raises(ValueError, match="timeout"):
        make_sink("http://host", timeout=0)
