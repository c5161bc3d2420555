"""open_state and check_driver: picking a backend, missing drivers, lazy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from statewave_runner.errors import DriverMissingError, StateError
from statewave_runner.state import MemoryState, check_driver, open_state


def test_missing_psycopg_has_the_exact_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes it unimportable
    with pytest.raises(DriverMissingError) as info:
        check_driver("postgres")
    assert str(info.value) == (
        "state kind \"postgres\" needs psycopg: pip install 'statewave-runner[postgres]'"
    )
    with pytest.raises(DriverMissingError, match="needs psycopg"):
        open_state("postgres", url="postgresql://u:secret@db.invalid/x")


def test_missing_pool_names_psycopg_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)
    with pytest.raises(DriverMissingError) as info:
        check_driver("postgres")
    assert str(info.value) == (
        "state kind \"postgres\" needs psycopg_pool: pip install 'statewave-runner[postgres]'"
    )


def test_missing_redis_has_the_exact_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(DriverMissingError) as info:
        check_driver("redis")
    assert str(info.value) == (
        "state kind \"redis\" needs redis: pip install 'statewave-runner[redis]'"
    )
    with pytest.raises(DriverMissingError):
        open_state("redis", url="redis://db.invalid:6379/0")


def test_drivers_present_and_builtin_kinds_need_nothing() -> None:
    for kind in ("memory", "file", "sqlite", "postgres", "redis"):
        check_driver(kind)


def test_unknown_kind_and_missing_url() -> None:
    with pytest.raises(StateError, match="unknown state kind 'mongo'"):
        check_driver("mongo")
    with pytest.raises(StateError, match="unknown state kind"):
        open_state("mongo")
    with pytest.raises(StateError, match='state kind "postgres" needs url'):
        open_state("postgres")
    with pytest.raises(StateError, match='state kind "redis" needs url'):
        open_state("redis")


def test_memory_is_memory() -> None:
    s = open_state("memory")
    assert isinstance(s, MemoryState)
    assert "nothing survives a restart" in s.describe()["location"]


def test_core_never_imports_the_drivers(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import statewave_runner
        from statewave_runner.state import open_state, check_driver
        for kind in ("postgres", "redis"):
            check_driver(kind)
        for kind in ("memory", "sqlite", "file"):
            s = open_state(kind, state_dir={str(tmp_path)!r})
            s.put_and_set_cursor([], "github", "main", "c")
            s.close()
        drivers = ("psycopg", "psycopg_pool", "redis")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in drivers)
        print(loaded)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_each_backend_imports_only_its_own_module(tmp_path: Path) -> None:
    # Idle resident memory: a SQLite daemon carries no memory.py, a memory one no sqlite3.
    code = textwrap.dedent(
        f"""
        import sys
        import statewave_runner
        from statewave_runner.state import open_state
        kind = sys.argv[1]
        s = open_state(kind, state_dir={str(tmp_path)!r})
        s.close()
        backends = ("memory", "sqlite", "file", "postgres", "redis")
        print(sorted(b for b in backends if "statewave_runner.state." + b in sys.modules))
        print("sqlite3" in sys.modules)
        """
    )

    def loaded(kind: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", code, kind],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.split("\n")[:2]

    assert loaded("memory") == ["['memory']", "False"]
    assert loaded("sqlite") == ["['sqlite']", "True"]
    assert loaded("file") == ["['file', 'sqlite']", "True"]
