"""End-to-end delivery throughput: put() -> outbox -> worker -> Statewave acknowledgement.

Two runs in one invocation, same state backend, same fake Statewave:

* batched: our DeliveryWorker, POST /v1/episodes/batch with up to 100 episodes;
* per-episode: one POST /v1/episodes per episode, one at a time - the Node
  runner's way (``for (const ep of episodes) await ingest(ep)``), here through
  the same outbox and keep-alive connection so only the batching differs.

The clock starts before the first put() and stops when the sink has
acknowledged the last episode (the worker acked it). The fake Statewave runs
in a subprocess by default so it does not share our GIL; it validates every
episode like the real server. Afterwards the fake's own count is checked:
every episode stored exactly once.

    python bench/ingest.py                         # short run (default)
    python bench/ingest.py --episodes 50000 --per-episode-episodes 5000
    python bench/ingest.py --backend memory        # or sqlite (default when available)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from statewave_runner.connectors.base import SourcePointer, make_episode  # noqa: E402
from statewave_runner.ingest import HttpSink  # noqa: E402
from statewave_runner.outbox import DeliveryObserver, DeliveryWorker, outbox_item  # noqa: E402
from statewave_runner.state.base import ClaimedItem, OutboxItem, StateBackend  # noqa: E402
from statewave_runner.state.memory import MemoryState  # noqa: E402

KEY = "bench-key"


def open_backend(kind: str, directory: Path, run: str) -> StateBackend:
    if kind == "memory":
        return MemoryState()
    try:
        from statewave_runner.state import open_state  # type: ignore[attr-defined]

        return open_state("sqlite", path=str(directory / f"{run}.db"))  # type: ignore[no-any-return]
    except (ImportError, TypeError):
        from statewave_runner.state.sqlite import SqliteState  # type: ignore[import-not-found]

        return SqliteState(str(directory / f"{run}.db"))  # type: ignore[no-any-return]


def sqlite_available() -> bool:
    try:
        import statewave_runner.state.sqlite  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def fake_statewave(mode: str) -> Iterator[str]:
    if mode == "thread":
        from tests.fakes import FakeStatewave

        with FakeStatewave(KEY, record=False) as fake:
            yield fake.url
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", "--api-key", KEY, "--no-record"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit(f"fake Statewave did not start: {url!r}")
        yield url
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def fake_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


class Done(DeliveryObserver):
    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.requests = 0
        self.finished = threading.Event()
        self.end = 0.0
        self._lock = threading.Lock()

    def attempt(self, outcome: str, batch_size: int, seconds: float) -> None:
        with self._lock:
            self.requests += 1

    def delivered(self, items: Sequence[ClaimedItem]) -> None:
        with self._lock:
            self.count += len(items)
            if self.count >= self.total and not self.finished.is_set():
                self.end = time.perf_counter()
                self.finished.set()


def make_items(count: int, run: str) -> list[list[OutboxItem]]:
    """Pages of 100 episodes, like a pull connector's checkpoints."""
    pages: list[list[OutboxItem]] = []
    for start in range(0, count, 100):
        page = []
        for n in range(start, min(start + 100, count)):
            episode = make_episode(
                subject=f"bench:{n % 50}",
                kind="bench.event",
                text=f"benchmark event {n} " + "lorem ipsum " * 20,
                source=SourcePointer("bench.event", str(n), f"https://example.com/e/{n}"),
                occurred_at=1_700_000_000_000 + n,
                key_parts=[run, n],
                metadata={"n": n, "tags": ["a", "b"]},
            )
            page.append(outbox_item(dataclasses.replace(episode), "bench/run"))
        pages.append(page)
    return pages


def run_once(
    name: str,
    url: str,
    backend: str,
    directory: Path,
    count: int,
    batched: bool,
    args: argparse.Namespace,
) -> tuple[float, int]:
    state = open_backend(backend, directory, name)
    sink = HttpSink(url, api_key=KEY, timeout=30, batch=batched)
    done = Done(count)
    worker = DeliveryWorker(
        state,
        sink,
        batch_size=args.batch_size if batched else 1,
        concurrency=args.concurrency if batched else 1,
        poll_interval=0.05,
        observer=done,
    )
    pages = make_items(count, name)  # built before the clock starts
    before = fake_stats(url)["episodes"]
    worker.start()
    start = time.perf_counter()
    for page in pages:
        state.put(page)
        worker.wake()
    if not done.finished.wait(args.timeout):
        worker.stop(1)
        raise SystemExit(f"{name}: only {done.count}/{count} delivered within {args.timeout}s")
    elapsed = done.end - start
    worker.stop(5)
    sink.close()
    close = getattr(state, "close", None)
    if close is not None:
        close()
    stats = fake_stats(url)
    stored = stats["episodes"] - before
    if stored != count:
        raise SystemExit(f"{name}: the fake stored {stored}, expected {count}")
    return count / elapsed, done.requests


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=5000, help="batched run size")
    parser.add_argument(
        "--per-episode-episodes", type=int, default=1000, help="per-episode run size (slower)"
    )
    parser.add_argument("--backend", choices=["auto", "memory", "sqlite"], default="auto")
    parser.add_argument("--fake", choices=["subprocess", "thread"], default="subprocess")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    backend = args.backend
    if backend == "auto":
        backend = "sqlite" if sqlite_available() else "memory"
    elif backend == "sqlite" and not sqlite_available():
        raise SystemExit("--backend sqlite: statewave_runner.state.sqlite is not in this tree yet")

    print(
        f"backend={backend} fake={args.fake} batch_size={args.batch_size} "
        f"concurrency={args.concurrency}"
    )
    with tempfile.TemporaryDirectory() as tmp, fake_statewave(args.fake) as url:
        directory = Path(tmp)
        fast, fast_requests = run_once(
            "batched", url, backend, directory, args.episodes, True, args
        )
        print(
            f"batched      {args.episodes:>7} episodes {fast_requests:>6} requests "
            f"{fast:>10.0f} episodes/s"
        )
        slow, slow_requests = run_once(
            "per-episode", url, backend, directory, args.per_episode_episodes, False, args
        )
        print(
            f"per-episode  {args.per_episode_episodes:>7} episodes {slow_requests:>6} requests "
            f"{slow:>10.0f} episodes/s   (one POST per episode, the Node runner's way)"
        )
    print(f"ratio batched / per-episode: {fast / slow:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
