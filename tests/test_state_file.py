"""The file backend: Node-format cursors.json, the SQLite beside it, the lock, recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from statewave_runner.errors import StateError, StateLockedError, StateVersionError
from statewave_runner.state import FileState, open_state

from .state_helpers import items

# Byte-for-byte what the Node runner writes: JSON.stringify(payload, null, 2),
# keys in insertion order, no trailing newline.
NODE_FILE = (
    "{\n"
    '  "version": 1,\n'
    '  "cursors": {\n'
    '    "slack/eng": "{\\"channels\\":{\\"C01\\":\\"1700000000.000100\\"}}",\n'
    '    "github/main": "2024-05-01T10:00:00.000Z"\n'
    "  }\n"
    "}"
)


def node_loads(text: str) -> dict[str, str]:
    """The Node runner's loadInitialState() checks, transcribed."""
    parsed = json.loads(text)
    assert parsed["version"] == 1 and type(parsed["version"]) is int
    assert isinstance(parsed["cursors"], dict)
    assert all(isinstance(v, str) for v in parsed["cursors"].values())
    return dict(parsed["cursors"])


def test_reads_a_node_runner_file_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "cursors.json"
    path.write_text(NODE_FILE)
    s = FileState(path)
    try:
        assert s.list_cursors() == {
            ("slack", "eng"): '{"channels":{"C01":"1700000000.000100"}}',
            ("github", "main"): "2024-05-01T10:00:00.000Z",
        }
        s.put(items("a"))  # no cursor change: the file is not rewritten
        assert path.read_text() == NODE_FILE
    finally:
        s.close()
    s = FileState(path)  # and a second open does not mistake it for an edit
    try:
        assert s.get_cursor("github", "main") == "2024-05-01T10:00:00.000Z"
    finally:
        s.close()


def test_writes_the_node_format(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cursors.json"
    s = FileState(path)
    try:
        s.set_cursor("github", "main", "c1")
        s.put_and_set_cursor(items("a"), "notion", "wiki", "ünï\n")
        text = path.read_text(encoding="utf-8")
        assert node_loads(text) == {"github/main": "c1", "notion/wiki": "ünï\n"}
        assert text.startswith('{\n  "version": 1,\n  "cursors": {\n')
        s.delete_cursor("github", "main")
        assert node_loads(path.read_text(encoding="utf-8")) == {"notion/wiki": "ünï\n"}
    finally:
        s.close()
    assert sorted(p.name for p in path.parent.iterdir() if ".tmp-" in p.name) == []


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ('{"version": 2, "cursors": {}}', StateVersionError, "unsupported version=2"),
        ('{"version": "1", "cursors": {}}', StateVersionError, 'unsupported version="1"'),
        ('{"version": true, "cursors": {}}', StateVersionError, "unsupported version=true"),
        ('{"cursors": {}}', StateVersionError, "unsupported version=null"),
        ('{"version": 1, "cursors": {', StateError, "not valid JSON"),
        ('{"version": 1}', StateError, "missing the .cursors map"),
        ('{"version": 1, "cursors": {"github/main": 5}}', StateError, "not a string"),
        ('{"version": 1, "cursors": {"nokind": "x"}}', StateError, "<kind>/<name>"),
        ("[1, 2]", StateError, "not a JSON object"),
    ],
)
def test_refuses_a_file_it_does_not_understand(
    tmp_path: Path, content: str, error: type[Exception], match: str
) -> None:
    path = tmp_path / "cursors.json"
    path.write_text(content)
    with pytest.raises(error, match=match) as info:
        FileState(path)
    assert str(path) in str(info.value)
    assert path.read_text() == content  # never overwritten
    assert not (tmp_path / "cursors.json.db").exists()
    # The lock was released: fixing the file is enough to start.
    path.write_text('{"version": 1, "cursors": {}}')
    FileState(path).close()


def test_second_opener_fails_fast_in_process_and_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "cursors.json"
    s = FileState(path)
    try:
        with pytest.raises(StateLockedError, match=f"pid {os.getpid()}"):
            FileState(path)
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\nfrom statewave_runner.state import FileState\n"
                "try:\n    FileState(sys.argv[1])\n"
                "except Exception as e:\n    print(type(e).__name__, e)\n",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert child.stdout.startswith("StateLockedError cursor state file")
        assert "in use by another process" in child.stdout
    finally:
        s.close()
    FileState(path).close()  # free again


def test_crash_between_commit_and_mirror_is_repaired_on_open(tmp_path: Path) -> None:
    path = tmp_path / "cursors.json"
    s = FileState(path)
    s.put_and_set_cursor(items("a"), "github", "main", "c1")
    s.close()
    # A real process dies (SIGKILL) after the SQLite commit, before the rename.
    child = textwrap.dedent(
        """
        import os, signal, sys
        from statewave_runner.state import FileState, OutboxItem
        s = FileState(sys.argv[1])
        s._write_mirror = lambda data: os.kill(os.getpid(), signal.SIGKILL)
        s.put_and_set_cursor([OutboxItem("b", "{}")], "github", "main", "c2")
        print("not reached")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == -signal.SIGKILL and "not reached" not in proc.stdout
    assert node_loads(path.read_text()) == {"github/main": "c1"}  # the old, complete file
    s = FileState(path)
    try:
        assert s.get_cursor("github", "main") == "c2"  # the database is the truth
        assert [i.key for i in s.peek(10)] == ["a", "b"]
        assert node_loads(path.read_text()) == {"github/main": "c2"}  # and the file caught up
    finally:
        s.close()


def test_an_edit_while_stopped_wins(tmp_path: Path) -> None:
    path = tmp_path / "cursors.json"
    s = FileState(path)
    s.set_cursor("github", "main", "c1")
    s.set_cursor("slack", "eng", "s1")
    s.close()
    path.write_text(json.dumps({"version": 1, "cursors": {"github/main": "rewound"}}))
    s = FileState(path)
    try:
        assert s.list_cursors() == {("github", "main"): "rewound"}
        s.set_cursor("slack", "eng", "s2")
        assert node_loads(path.read_text()) == {"github/main": "rewound", "slack/eng": "s2"}
    finally:
        s.close()


def test_a_deleted_file_is_rewritten_from_the_database(tmp_path: Path) -> None:
    path = tmp_path / "cursors.json"
    s = FileState(path)
    s.set_cursor("github", "main", "c1")
    s.close()
    path.unlink()
    s = FileState(path)
    try:
        assert s.get_cursor("github", "main") == "c1"
        assert node_loads(path.read_text()) == {"github/main": "c1"}
    finally:
        s.close()


def test_a_failed_mirror_write_is_reported_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "cursors.json"
    s = FileState(path)
    try:
        s.set_cursor("github", "main", "c1")

        def full_disk(data: bytes) -> None:
            raise OSError(28, "No space left on device")

        s._write_mirror = full_disk  # type: ignore[method-assign]
        # The change is committed in SQLite (the truth): the call succeeds.
        assert s.put_and_set_cursor(items("a"), "github", "main", "c2") == 1
        assert s.get_cursor("github", "main") == "c2"
        assert "stale" in s.health().detail and "No space left" in s.health().detail
        assert node_loads(path.read_text()) == {"github/main": "c1"}
        del s._write_mirror  # the disk has room again
        s.set_cursor("slack", "eng", "s1")
        assert node_loads(path.read_text()) == {"github/main": "c2", "slack/eng": "s1"}
        assert "stale" not in s.health().detail
    finally:
        s.close()


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "cursors.json"
    (tmp_path / "cursors.json.tmp-123").write_text("{")
    (tmp_path / "cursors.json.tmp-456-1700000000000").write_text("{")  # the Node runner's
    FileState(path).close()
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []


def test_open_state_file_defaults_to_state_dir(tmp_path: Path) -> None:
    s = open_state("file", state_dir=str(tmp_path / "var"))
    try:
        assert isinstance(s, FileState)
        s.set_cursor("github", "main", "c1")
        assert node_loads((tmp_path / "var" / "cursors.json").read_text()) == {"github/main": "c1"}
        assert s.describe() == {
            "kind": "file",
            "location": str(tmp_path / "var" / "cursors.json"),
            "database": str(tmp_path / "var" / "cursors.json.db"),
        }
    finally:
        s.close()
