"""The command line, run as real subprocesses (exit codes, output, signals)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from statewave_runner import __version__

from .daemon import REPO, Daemon, running
from .fakes.statewave import Delay, FakeStatewave


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statewave_runner", *args],
        cwd=str(cwd or REPO),
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def markdown_config(
    tmp_path: Path,
    *,
    state: str = 'kind = "sqlite"',
    url: str | None = None,
    schedule: str = "every 1s",
) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "a.md").write_text("# Alpha\n\nfirst page\n")
    (docs / "b.md").write_text("# Beta\n\nsecond page\n")
    sink = url or f"file:{tmp_path / 'episodes.jsonl'}"
    return write(
        tmp_path / "c.toml",
        f"""
[statewave]
url = "{sink}"
api_key = "sk_cli_secret_99"

[runner]
host = "127.0.0.1"
port = 0
log_format = "json"
stop_timeout = 20

[runner.state]
{state}
path = "{tmp_path / "state.db"}"

[[pull.markdown]]
name = "docs"
schedule = "{schedule}"
path = "{docs}"
subject = "repo:test"
""",
    )


def read_episodes(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# --------------------------------------------------------------------------- basics


def test_version_and_help() -> None:
    result = cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"statewave-runner {__version__}")
    result = cli()
    assert result.returncode == 1 and "COMMAND" in result.stderr


def test_usage_error_is_exit_1_without_traceback() -> None:
    result = cli("run", "--port", "notaport")
    assert result.returncode == 1
    assert "invalid int value" in result.stderr and "Traceback" not in result.stderr
    result = cli("frobnicate")
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_validate_ok_and_problems(tmp_path: Path) -> None:
    good = markdown_config(tmp_path)
    result = cli("validate", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"config OK: {good} [explicit]: 1 pull source(s), 0 push receiver(s)"
    )
    bad = write(
        tmp_path / "bad.toml",
        '[statewave]\nurl = "file:x"\n[runner]\nprot = 1\n[[pull.github]]\nname = "a"\nschedule = "every 5x"\nrepo = "smaramwbc"\n',
    )
    result = cli("validate", "--config", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"config error: 3 config problems in {bad}:"
    assert '  runner.prot: unknown key; did you mean "port"?' in lines
    assert any(
        line.startswith('  pull.github[0].schedule: "every 5x" is not a schedule') for line in lines
    )
    assert any(line.startswith("  pull.github[0].repo:") for line in lines)


def test_validate_missing_file_and_search(tmp_path: Path) -> None:
    result = cli("validate", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 1 and "config file not found" in result.stderr
    result = cli(
        "validate",
        cwd=tmp_path,
        env={"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "STATEWAVE_CONNECTORS_CONFIG": ""},
    )
    assert result.returncode == 1
    assert f"[cwd]: {tmp_path / 'statewave-connectors.toml'}" in result.stderr
    write(tmp_path / "statewave-connectors.toml", '[statewave]\nurl = "file:e.jsonl"\n')
    result = cli("validate", cwd=tmp_path)
    assert result.returncode == 0 and "[cwd]" in result.stdout


def test_validate_reports_a_missing_driver(tmp_path: Path) -> None:
    config = write(
        tmp_path / "pg.toml",
        '[statewave]\nurl = "file:e.jsonl"\n[runner.state]\nkind = "postgres"\nurl = "postgresql://u:hunter2@db/x"\n',
    )
    # -S: no site-packages, so psycopg is not importable (the core must not need it).
    result = subprocess.run(
        [sys.executable, "-S", "-m", "statewave_runner", "validate", "--config", str(config)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert (
        "state kind \"postgres\" needs psycopg: pip install 'statewave-runner[postgres]'"
        in result.stderr
    )
    assert "hunter2" not in result.stderr + result.stdout


def test_describe_redacts_and_lists_fire_times(tmp_path: Path) -> None:
    config = write(
        tmp_path / "d.toml",
        """
[statewave]
url = "https://sw.example.com"
api_key = "sk_describe_secret"
[runner.state]
kind = "redis"
url = "redis://:redispass@cache:6379/0"
[[pull.github]]
name = "main-repo"
schedule = "0 9 * * MON-FRI"
timezone = "Europe/London"
repo = "smaramwbc/statewave"
token = "ghp_describetoken"
[[push.slack]]
name = "team-events"
signing_secret = "slack_signing_zzz"
channels = ["C0123"]
""",
    )
    result = cli("describe", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    for secret in ("sk_describe_secret", "redispass", "ghp_describetoken", "slack_signing_zzz"):
        assert secret not in result.stdout
    info = json.loads(result.stdout)
    (pull,) = info["pull"]
    assert pull["timezone"] == "Europe/London" and len(pull["next_fires"]) == 3
    assert info["state"] == {"kind": "redis", "url": "redis://:***@cache:6379/0"}
    assert info["mounted"] == ["/healthz", "/readyz", "/metrics", "/slack/team-events/events"]
    text = cli("describe", "--config", str(config))
    assert text.returncode == 0
    assert "slack/team-events → /slack/team-events/events" in text.stdout
    assert "sk_describe_secret" not in text.stdout


def test_schedule_command() -> None:
    result = cli("schedule", "*/30 * * * * *", "-n", "3")
    assert result.returncode == 0
    assert len([ln for ln in result.stdout.splitlines() if ln.startswith("  ")]) == 3
    result = cli("schedule", "30 2 * * *", "--tz", "America/New_York", "-n", "1")
    assert result.returncode == 0 and "America/New_York" in result.stdout
    result = cli("schedule", "every 5x")
    assert result.returncode == 1 and "not a schedule" in result.stderr


def test_connectors_lists_kinds_with_keys() -> None:
    result = cli("connectors")
    assert result.returncode == 0
    out = result.stdout
    assert "[[pull.github]]" in out and "[[pull.markdown]]" in out and "[[push.slack]]" in out
    assert "token (string, default null, secret)" in out
    assert "signing_secret (string, required, secret)" in out


def test_state_cursors_and_outbox_commands(tmp_path: Path) -> None:
    config = markdown_config(tmp_path)
    assert (
        cli(
            "state", "--config", str(config), "cursors", "set", "markdown/docs", '{"a.md":"x"}'
        ).returncode
        == 0
    )
    got = cli("state", "--config", str(config), "cursors", "get", "markdown/docs")
    assert (got.returncode, got.stdout.strip()) == (0, '{"a.md":"x"}')
    listed = cli("state", "--config", str(config), "cursors", "list")
    assert "markdown/docs" in listed.stdout
    missing = cli("state", "--config", str(config), "cursors", "get", "markdown/none")
    assert missing.returncode == 1
    stats = cli("state", "--config", str(config), "outbox", "stats")
    assert stats.returncode == 0 and "depth" in stats.stdout
    assert cli("state", "--config", str(config)).returncode == 1


def test_sync_runs_one_tick_and_delivers(tmp_path: Path) -> None:
    config = markdown_config(tmp_path)
    result = cli("sync", "markdown/docs", "--config", str(config), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "markdown/docs: ok, 2 episode(s), 0 queued (dry run)" in result.stderr
    assert read_episodes(tmp_path / "episodes.jsonl") == []
    result = cli("sync", "markdown/docs", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert {p["source"]["id"] for p in printed} == {"a.md", "b.md"}
    assert len(read_episodes(tmp_path / "episodes.jsonl")) == 2
    # The cursor moved: a second sync finds nothing new.
    result = cli("sync", "markdown/docs", "--config", str(config))
    assert "ok, 0 episode(s)" in result.stderr
    assert cli("sync", "markdown/nope", "--config", str(config)).returncode == 2


# --------------------------------------------------------------------------- run


def test_run_banner_ticks_and_sigterm(tmp_path: Path) -> None:
    config = markdown_config(tmp_path)
    with running(config) as daemon:
        assert daemon.banner[0] == "statewave-runner run"
        assert daemon.banner[1] == f"config: {config} [explicit]"
        assert "pull schedules:" in daemon.banner
        assert "  markdown/docs (every 1s)" in daemon.banner
        assert daemon.banner[-2] == "health: /healthz, /readyz, metrics: /metrics"
        assert daemon.banner[-1] == "Ctrl-C to stop."
        with urllib.request.urlopen(daemon.url + "/readyz", timeout=5) as resp:
            assert resp.status == 200
        wait_for(lambda: len(read_episodes(tmp_path / "episodes.jsonl")) == 2)
        assert daemon.stop() == 0
    log = daemon.stderr
    assert "sk_cli_secret_99" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    ticks = [ln for ln in lines if ln.get("msg", "").startswith("tick complete")]
    assert ticks and ticks[0]["kind"] == "markdown" and ticks[0]["name"] == "docs"
    assert any(ln["msg"] == "runner stopped" for ln in lines)


def test_run_config_error_exit_1(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", '[statewave]\nurl = "ftp://x"\n')
    result = cli("run", "--config", str(bad))
    assert (
        result.returncode == 1
        and "statewave.url" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_run_port_in_use_is_exit_2(tmp_path: Path) -> None:
    config = markdown_config(tmp_path)
    with running(config) as first:
        result = cli("run", "--config", str(config), "--port", str(first.port))
        assert result.returncode == 2
        assert "cannot listen on" in result.stderr and "Traceback" not in result.stderr


def test_second_sigterm_during_drain_exits_at_once(tmp_path: Path) -> None:
    with FakeStatewave(api_key="sk_cli_secret_99") as sw:
        sw.persistent = Delay(60.0)  # every delivery hangs: stop() waits for the flush
        config = markdown_config(tmp_path, url=sw.url, state='kind = "sqlite"')
        with running(config) as daemon:
            wait_for(lambda: "tick complete" in daemon.stderr)
            time.sleep(1.0)  # the delivery worker has picked the episodes up and hangs
            daemon.signal(signal.SIGTERM)
            time.sleep(0.5)
            assert daemon.proc.poll() is None  # still draining
            started = time.monotonic()
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(10) == 2
            assert time.monotonic() - started < 5
        assert "exiting now" in daemon.stderr
        sw.persistent = None


def test_quickstart_command_from_the_readme(tmp_path: Path) -> None:
    """README's first command, on a copy of the checkout (it writes ./var)."""
    work = tmp_path / "checkout"
    shutil.copytree(
        REPO / "statewave_runner",
        work / "statewave_runner",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(REPO / "examples", work / "examples")
    shutil.copytree(REPO / "docs", work / "docs")
    with running(
        "examples/quickstart.toml", cwd=work, args=("--port", "0"), env={"PYTHONPATH": ""}
    ) as daemon:
        assert "state: sqlite ./var/quickstart/state.db" in daemon.banner
        assert any(
            line.startswith("sink: file ./var/quickstart/episodes.jsonl") for line in daemon.banner
        )
        episodes = work / "var" / "quickstart" / "episodes.jsonl"
        wait_for(lambda: len(read_episodes(episodes)) > 0, timeout=30)
        assert daemon.stop() == 0
    got = read_episodes(episodes)
    assert {e["subject_id"] for e in got} == {"repo:statewave-runner"}  # type: ignore[index]


def test_core_imports_only_the_standard_library(tmp_path: Path) -> None:
    probe = (
        "import sys, statewave_runner;"
        "bad = sorted(m for m in {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'statewave_runner', '__main__'} if not m.startswith('_sysconfigdata'));"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == ""
    # The running daemon with memory state: dump sys.modules at exit.
    out = tmp_path / "modules.json"
    config = write(
        tmp_path / "m.toml",
        f'[statewave]\nurl = "file:{tmp_path / "e.jsonl"}"\n[runner]\nhost = "127.0.0.1"\n[[pull.markdown]]\nname = "d"\nschedule = "every 1h"\npath = "{tmp_path}"\nsubject = "s"\n',
    )
    wrapper = (
        "import atexit, json, runpy, sys;"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))));"
        "sys.argv = ['statewave_runner'] + sys.argv[sys.argv.index('run'):];"
        "runpy.run_module('statewave_runner', run_name='__main__', alter_sys=True)"
    )
    # Daemon() appends ["-m", "statewave_runner", "run", ...]; the wrapper keeps from "run" on.
    proc = Daemon(config, python=(sys.executable, "-S", "-c", wrapper), args=("--port", "0"))
    assert proc.stop() == 0, proc.stderr
    modules = json.loads(out.read_text())
    # _sysconfigdata_<platform> is the stdlib's own generated module (sysconfig).
    third_party = sorted(
        m
        for m in {m.split(".")[0] for m in modules}
        - set(sys.stdlib_module_names)
        - {"statewave_runner", "__main__"}
        if not m.startswith("_sysconfigdata")
    )
    assert third_party == []
    assert "statewave_runner.runner" in modules
    # Idle resident memory: what this daemon (memory state, file sink, no
    # /metrics scrape yet, no HTTP source) never uses is not imported either.
    not_needed = {
        "ctypes.util",  # release_free_memory needs ctypes itself only
        "gzip",  # gzipped /metrics scrapes only
        "platform",  # python_info reads sys
        "sqlite3",
        "statewave_runner.state.sqlite",
        "statewave_runner.state.file",
        "statewave_runner.state.admin",
        "statewave_runner.connectors.github",
        "statewave_runner.connectors.slack",
        "zoneinfo",  # UTC schedules only
    }
    assert sorted(not_needed & set(modules)) == []


def test_release_free_memory_runs_malloc_trim_on_glibc() -> None:
    # In a child process, as the daemon calls it; True exactly where glibc is.
    probe = "from statewave_runner.cli import release_free_memory; print(release_free_memory())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    glibc = sys.platform == "linux" and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    assert out == str(glibc)
