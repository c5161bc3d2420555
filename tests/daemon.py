"""Run the real daemon (``python -m statewave_runner run``) as a child process."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class Daemon:
    """A child ``statewave_runner run`` process; banner parsed, stderr collected."""

    def __init__(
        self,
        config: str | os.PathLike[str],
        *,
        args: Sequence[str] = ("--port", "0"),
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        python: Sequence[str] = (sys.executable,),
        start_timeout: float = 20.0,
    ):
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(
            [*python, "-m", "statewave_runner", "run", "--config", str(config), *args],
            cwd=str(cwd or REPO),
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stderr: list[str] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.banner: list[str] = []
        self.port = 0
        deadline = time.monotonic() + start_timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.banner.append(line.rstrip("\n"))
            match = re.match(r"listening: http://[^:]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
            if line.startswith("Ctrl-C to stop."):
                return
        self.proc.kill()
        self.proc.wait(5)
        raise RuntimeError(
            f"daemon did not start (exit {self.proc.returncode}):\n"
            + "\n".join(self.banner)
            + "\n"
            + self.stderr
        )

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        """Everything the daemon logged so far."""
        return "".join(self._stderr)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far, parsed (``log_format = "json"``, the default)."""
        out = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_log(
        self, match: str | Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        """The first JSON log record whose ``msg`` contains ``match`` (or satisfying it).

        Raises ``AssertionError`` with the log so far on timeout or if the daemon exits.
        """
        test = (lambda r: match in str(r.get("msg", ""))) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if test(record):
                    return record
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"no log record matching {match!r} within {timeout}s "
                    f"(exit {self.proc.poll()}):\n{self.stderr[-4000:]}"
                )
            time.sleep(0.05)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """``GET path`` on the daemon over a real socket: ``(status, body)``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._stderr_thread.join(5)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._stderr_thread.join(5)


@contextlib.contextmanager
def running(config: str | os.PathLike[str], **kwargs: object) -> Iterator[Daemon]:
    """A daemon for the duration of a ``with`` block (killed if still alive)."""
    daemon = Daemon(config, **kwargs)  # type: ignore[arg-type]
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
