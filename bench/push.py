"""Push bench: signed Slack Events API deliveries against the daemon, vs Starlette + Uvicorn.

    python bench/push.py                    # 5 s per case (quick)
    python bench/push.py --duration 20      # the full run (issue 8)
    python bench/push.py --client python    # without wrk
    python bench/push.py --only ours --profile prof.raw   # py-spy (on-CPU, --gil) the daemon

Two servers, each in its own process, each with SQLite (WAL, synchronous=FULL):

* ours: ``python -m statewave_runner run`` with one ``[[push.slack]]`` receiver
  and ``[runner.state] kind = "sqlite"``; every accepted delivery is durably
  queued (group commit) before its 200, and the delivery worker meanwhile
  sends the queue to the sink: ``--sink file`` (default; fsynced JSON Lines,
  in-process), ``statewave`` (the fake Statewave in another process) or
  ``down`` (nothing answers: delivery stalls, the queue only grows);
* peer: a minimal Starlette app on Uvicorn (one worker) doing the same
  signature check (HMAC-SHA256 over ``v0:{ts}:{body}``, 5-minute window,
  constant-time compare), a JSON parse and one SQLite ``INSERT OR IGNORE``
  keyed by ``event_id``, committed per request, in Starlette's thread pool.

Each server gets two cases with ``--connections`` (50) concurrent keep-alive
connections: unique event ids (every request is a new event: a durable write
each), and duplicate event ids (Slack retries of 100 events already taken,
carrying ``X-Slack-Retry-Num: 1`` as Slack's retries do, or without it with
``--dup-no-retry-header``: no new write either way). Requests are signed with
a fresh timestamp. The load generator is a separate process: ``wrk`` with a
Lua script replaying a pool of pre-signed requests (one unique event per
request, so nothing is deduplicated by accident; a run longer than the pool
says so), or a multi-process Python client that signs as it goes (CPU-hungry:
it competes with the server for the cores). Client and server share this
machine's cores: the report prints the CPU each used.

After each unique-id case the bench checks the server's database: every
request answered 200 is stored (ours: its idempotency key is in the outbox key
table, queued or already delivered; the peer: a row).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import re
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _load import (  # bench/_load.py (bench/ is sys.path[0])
    latency_summary,
    parse_wrk,
    take_response,
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-slack-signing-secret-0001"
CHANNEL = "CBENCH0001"
TEAM = "TBENCH"
DUP_EVENTS = 100
TARGET_RPS, TARGET_P99_MS = 4000.0, 25.0
NODE_RPS, NODE_P99 = 1900.0, "48-80"
PIN_CLIENT: list[str] = []
"""``taskset -c <other cpus>`` before the load generator when ``--pin`` is given."""


# --------------------------------------------------------------------------- payloads


def event_body(event_id: str, n: int) -> bytes:
    """A compact ``event_callback`` with one channel message, as Slack sends it.

    The message ``ts`` comes from ``n``, and the episode's idempotency key from
    the ``ts``: give every distinct event its own ``n`` (see :func:`event_number`).
    """
    ts = message_ts(n)
    return json.dumps(
        {
            "token": "unused",
            "team_id": TEAM,
            "api_app_id": "ABENCH",
            "event": {
                "type": "message",
                "channel": CHANNEL,
                "user": "UBENCH",
                "text": f"bench message {n}",
                "ts": ts,
                "event_ts": ts,
                "channel_type": "channel",
            },
            "type": "event_callback",
            "event_id": event_id,
            "event_time": 1_700_000_000,
        },
        separators=(",", ":"),
    ).encode()


def message_ts(n: int) -> str:
    return f"{1_700_000_000 + n // 1_000_000}.{n % 1_000_000:06d}"


def episode_key(n: int) -> str:
    """The idempotency key the Slack receiver gives message ``n`` (Node's recipe)."""
    parts = ["slack", TEAM, CHANNEL, message_ts(n), "slack.message.posted"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def event_number(run: int, worker: int, i: int) -> int:
    """A message number no other run/worker uses (runs are 1, 2, ...; 10^7 per worker)."""
    return run * 10**9 + worker * 10**7 + i


def sign(body: bytes, timestamp: str) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(SECRET.encode(), base, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    path: str
    db: Path
    log: Path
    extra: dict[str, object] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_fake_statewave(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", "--api-key", "bench-key", "--no-record"],
        cwd=str(ROOT),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit("fake Statewave did not start")
    return proc, url


def start_ours(work: Path, sink: str, sink_url: str | None, log_level: str) -> Server:
    db = work / "ours" / "state.db"
    db.parent.mkdir(parents=True)
    if sink == "file":
        statewave = f'url = "file:{work / "ours" / "episodes.jsonl"}"'
    elif sink == "statewave":
        statewave = f'url = "{sink_url}"\napi_key = "bench-key"'
    else:  # nothing listens there: delivery stalls and retries with backoff
        statewave = 'url = "http://127.0.0.1:9"\nbackoff_max = 5.0'
    config = work / "ours" / "config.toml"
    config.write_text(
        f"""[statewave]
{statewave}

[runner]
host = "127.0.0.1"
port = 0
log_level = "{log_level}"
stop_timeout = 10

[runner.state]
kind = "sqlite"
path = "{db}"

[[push.slack]]
name = "bench"
signing_secret = "{SECRET}"
channels = ["{CHANNEL}"]
"""
    )
    log = work / "ours" / "daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "statewave_runner", "run", "--config", str(config)],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )
    assert proc.stdout is not None
    port = 0
    for raw in proc.stdout:
        line = raw.decode()
        m = re.match(r"listening: http://[^:]+:(\d+)", line)
        if m:
            port = int(m[1])
        if line.startswith("Ctrl-C to stop."):
            break
    if not port:
        proc.kill()
        raise SystemExit(f"daemon did not start; see {log}:\n{log.read_text()[-2000:]}")
    return Server("ours", proc, port, "/slack/bench/events", db, log, {"sink": sink})


_PEER = r"""
import hashlib, hmac, json, os, socket, sqlite3, threading, time
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SECRET = {secret!r}.encode()
DB = {db!r}
_local = threading.local()

def _conn():
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(DB, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        _local.conn = conn
    return conn

setup = sqlite3.connect(DB, isolation_level=None)
setup.execute("PRAGMA journal_mode=WAL")
setup.execute("CREATE TABLE IF NOT EXISTS events "
              "(event_id TEXT PRIMARY KEY, body TEXT NOT NULL, received_at REAL NOT NULL)")
setup.close()

def store(event_id, body):
    cur = _conn().execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?)",
                          (event_id, body, time.time()))
    return cur.rowcount == 1

async def events(request: Request):
    body = await request.body()
    ts = request.headers.get("x-slack-request-timestamp", "")
    sig = request.headers.get("x-slack-signature", "")
    if not ts.isdigit() or not sig:
        return JSONResponse({{"error": "missing_headers"}}, status_code=401)
    if abs(time.time() - int(ts)) > 300:
        return JSONResponse({{"error": "stale_timestamp"}}, status_code=401)
    base = b"v0:" + ts.encode() + b":" + body
    expected = "v0=" + hmac.new(SECRET, base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        return JSONResponse({{"error": "bad_signature"}}, status_code=401)
    try:
        payload = json.loads(body)
    except ValueError:
        return JSONResponse({{"error": "invalid_json"}}, status_code=400)
    if payload.get("type") != "event_callback" or not payload.get("event_id"):
        return JSONResponse({{"ok": True, "ignored": True}})
    new = await run_in_threadpool(store, str(payload["event_id"]), body.decode())
    return JSONResponse({{"ok": True}} if new else {{"ok": True, "deduplicated": True}})

app = Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(2048)
os.write({fd}, b"%d\n" % sock.getsockname()[1])
config = uvicorn.Config(app, log_level="warning", access_log=False)
print("uvicorn loop/http:", config.loop, config.http, flush=True)
uvicorn.Server(config).run(sockets=[sock])
"""


def start_peer(work: Path) -> Server:
    db = work / "peer" / "events.db"
    db.parent.mkdir(parents=True)
    log = work / "peer" / "uvicorn.log"
    read_fd, write_fd = os.pipe()
    code = _PEER.format(secret=SECRET, db=str(db), fd=write_fd)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        pass_fds=(write_fd,),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        line = pipe.readline()
    if not line:
        proc.kill()
        raise SystemExit(f"peer did not start:\n{log.read_text()[-2000:]}")
    return Server("peer", proc, int(line), "/slack/events", db, log, _peer_stack())


def _peer_stack() -> dict[str, object]:
    import importlib.util
    from importlib.metadata import version

    return {
        "starlette": version("starlette"),
        "uvicorn": version("uvicorn"),
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "httptools": importlib.util.find_spec("httptools") is not None,
    }


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    requests: int = 0
    errors: int = 0
    server_cpu: float = 0.0
    """Server CPU seconds per wall second (1.0 = one core busy)."""
    client_cpu: float = 0.0
    note: str = ""
    sent: list[tuple[int, int]] = field(default_factory=list)
    """Message numbers that may have been sent: ``(first, count)`` ranges."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


_LUA = r"""
-- Replays pre-signed requests from a file: one line per request,
-- "<timestamp>\t<signature>\t<retry num or empty>\t<body>"; thread i takes every n-th line.
local path, target = __PATH__, __TARGET__
local threads, counter = {}, 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  local nthreads = tonumber(args[1])
  reqs = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == tid then
      local ts, sig, retry, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]*)\t(.*)$")
      local headers = {
        ["Content-Type"] = "application/json",
        ["X-Slack-Request-Timestamp"] = ts,
        ["X-Slack-Signature"] = sig,
      }
      if retry ~= "" then
        headers["X-Slack-Retry-Num"] = retry
      end
      reqs[#reqs + 1] = wrk.format("POST", target, headers, body)
    end
    i = i + 1
  end
  n = 0
end
function request()
  n = n + 1
  if n > #reqs then n = 1 end
  return reqs[n]
end
"""


def write_pool(path: Path, count: int, *, unique: bool, run: int, retry: str) -> None:
    """``count`` pre-signed requests; unique events, or the DUP_EVENTS primed ones.

    ``retry`` is the ``X-Slack-Retry-Num`` the duplicates carry ("" for none).
    """
    ts = str(int(time.time()))
    with path.open("w") as out:
        for i in range(count):
            if unique:
                n = event_number(run, 0, i)
                body = event_body(f"Ev{n}", n)
            else:
                n = event_number(0, 0, i % DUP_EVENTS)
                body = event_body(f"Ev{n}", n)
            out.write(f"{ts}\t{sign(body, ts)}\t{'' if unique else retry}\t{body.decode()}\n")


def run_wrk(
    server: Server,
    conns: int,
    duration: float,
    threads: int,
    unique: bool,
    work: Path,
    run: int,
    retry: str = "1",
) -> Result:
    # Enough unique events that the fastest plausible run does not wrap around.
    pool = int(max(20_000, duration * 15_000)) if unique else DUP_EVENTS * 10
    pool_file = work / f"pool-{run}.tsv"
    write_pool(pool_file, pool, unique=unique, run=run, retry=retry)
    script = work / f"replay-{run}.lua"
    script.write_text(
        _LUA.replace("__PATH__", json.dumps(str(pool_file))).replace(
            "__TARGET__", json.dumps(server.path)
        )
    )
    cmd = [
        *PIN_CLIENT,
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{duration:g}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{server.port}",
        "--",
        str(threads),
    ]
    before, cpu0, t0 = cpu_seconds(server.proc.pid), children_cpu(), time.perf_counter()
    stats = parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    wall = time.perf_counter() - t0
    result = Result(
        rps=stats.rps,
        p50_ms=stats.p50_ms,
        p99_ms=stats.p99_ms,
        requests=stats.requests,
        errors=stats.errors,
        server_cpu=(cpu_seconds(server.proc.pid) - before) / wall,
        client_cpu=(children_cpu() - cpu0) / wall,
        sent=[(event_number(run, 0, 0), pool)] if unique else [],
    )
    if unique and result.requests > pool:
        result.note = f"pool of {pool} wrapped: some requests were duplicates"
    pool_file.unlink()
    return result


def _py_worker(
    port: int,
    path: str,
    conns: int,
    duration: float,
    unique: bool,
    run: int,
    worker: int,
    retry: str,
    out: multiprocessing.Queue[object],
) -> None:
    """One load process: ``conns`` keep-alive connections, signing each request."""
    sel = selectors.DefaultSelector()
    latencies: list[float] = []
    errors = 0
    n = 0
    end = time.perf_counter() + duration
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"

    def next_request() -> bytes:
        nonlocal n
        n += 1
        k = event_number(run, worker, n) if unique else event_number(0, 0, n % DUP_EVENTS)
        body = event_body(f"Ev{k}", k)
        ts = str(int(time.time()))
        retry_header = f"X-Slack-Retry-Num: {retry}\r\n" if retry and not unique else ""
        return (
            head + f"X-Slack-Request-Timestamp: {ts}\r\nX-Slack-Signature: {sign(body, ts)}\r\n"
            f"{retry_header}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        st = {"buf": b"", "t0": time.perf_counter()}
        sel.register(s, selectors.EVENT_READ, st)
        s.sendall(next_request())
    while time.perf_counter() < end:
        for key, _ in sel.select(0.2):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            st = key.data
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                errors += 1
                sel.unregister(s)
                s.close()
                continue
            st["buf"] += data
            framed = take_response(st["buf"])
            if framed is None:
                continue
            need, ok = framed
            latencies.append(time.perf_counter() - st["t0"])
            if not ok:
                errors += 1
            st["buf"] = st["buf"][need:]
            st["t0"] = time.perf_counter()
            s.sendall(next_request())
    out.put((latencies, errors, n))


def run_python(
    server: Server,
    conns: int,
    duration: float,
    procs: int,
    unique: bool,
    run: int,
    retry: str = "1",
) -> Result:
    q: multiprocessing.Queue[object] = multiprocessing.Queue()
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    workers = [
        multiprocessing.Process(
            target=_py_worker,
            args=(server.port, server.path, k, duration, unique, run, i + 1, retry, q),
        )
        for i, k in enumerate(per)
    ]
    before, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
    for w in workers:
        w.start()
    latencies: list[float] = []
    errors = 0
    sent: list[tuple[int, int]] = []
    for _ in workers:
        lat, err, count = q.get()  # type: ignore[misc]
        latencies += lat
        errors += err
        sent.append(count)
    cpu0 = children_cpu()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    client_cpu = (children_cpu() - cpu0) / wall  # the load processes, once joined
    rps, p50, p99, k = latency_summary(latencies, duration)
    if not k:
        return Result(errors=errors)
    return Result(
        rps=rps,
        p50_ms=p50,
        p99_ms=p99,
        requests=k,
        errors=errors,
        server_cpu=(cpu_seconds(server.proc.pid) - before) / wall,
        client_cpu=client_cpu,
        # Worker i numbers its messages 1..count; the results queue is unordered,
        # so cover every worker up to the largest count.
        sent=[(event_number(run, i + 1, 1), max(sent) + 1) for i in range(procs)] if unique else [],
    )


# --------------------------------------------------------------------------- checks


def prime_duplicates(server: Server) -> None:
    """Deliver each of the DUP_EVENTS events once, so the duplicate case only retries."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for i in range(DUP_EVENTS):
        k = event_number(0, 0, i)
        body = event_body(f"Ev{k}", k)
        ts = str(int(time.time()))
        conn.request(
            "POST",
            server.path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-Slack-Request-Timestamp": ts,
                "X-Slack-Signature": sign(body, ts),
            },
        )
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"{server.name}: priming answered {resp.status}")
    conn.close()


def stored_events(server: Server, sent: list[tuple[int, int]]) -> int:
    """How many of the messages numbered in ``sent`` the server stored (after it stopped).

    Ours: their idempotency keys in the outbox key table (queued or already
    delivered: a key stays there for dedup_ttl). The peer: their event ids.
    """
    numbers = [n for first, count in sent for n in range(first, first + count)]
    conn = sqlite3.connect(server.db)
    try:
        if server.name == "peer":
            wanted = {f"Ev{n}" for n in numbers}
            rows = conn.execute("SELECT event_id FROM events")
            return sum(1 for (event_id,) in rows if event_id in wanted)
        keys = {episode_key(n) for n in numbers}
        return sum(1 for (key,) in conn.execute("SELECT key FROM outbox_keys") if key in keys)
    finally:
        conn.close()


# --------------------------------------------------------------------------- main


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of ``pid`` (threads it starts later inherit it) to ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # the thread ended
            os.sched_setaffinity(int(task.name), cpus)


def measure(server: Server, args: argparse.Namespace, client: str, work: Path) -> dict[str, object]:
    """Warm-up, the unique-id case, the duplicate-id case; stop the server; check its store."""

    retry = "" if args.dup_no_retry_header else "1"
    if args.pin is not None:
        pin(server.proc.pid, {args.pin})

    def load(unique: bool, run: int, duration: float) -> Result:
        if client == "wrk":
            return run_wrk(
                server, args.connections, duration, args.wrk_threads, unique, work, run, retry
            )
        return run_python(server, args.connections, duration, args.procs, unique, run, retry)

    try:
        time.sleep(0.5)
        load(True, 1, min(2.0, args.duration))  # warm-up
        spy = None
        if args.profile and server.name == "ours":
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(server.proc.pid),
                    "--format",
                    "raw",
                    "--output",
                    args.profile,
                    "--duration",
                    str(int(args.duration)),
                    "--gil",  # only the thread holding the GIL: where the CPU goes
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        unique = load(True, 2, args.duration)
        if spy is not None:
            spy.wait()
        prime_duplicates(server)
        dup = load(False, 0, args.duration)
    finally:
        server.stop()
    stored = stored_events(server, unique.sent)
    unique_doc, dup_doc = asdict(unique), asdict(dup)
    del unique_doc["sent"], dup_doc["sent"]
    return {
        "unique": unique_doc,
        "duplicate": dup_doc,
        "stored_unique_case": stored,
        **server.extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--duration", type=float, default=5.0, help="seconds per case (default 5; issue: 20)"
    )
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--procs", type=int, default=2, help="python client processes")
    ap.add_argument("--sink", choices=("file", "statewave", "down"), default="file")
    ap.add_argument("--log-level", default="info", help="the daemon's log level (default info)")
    ap.add_argument(
        "--dup-no-retry-header",
        action="store_true",
        help="duplicates without X-Slack-Retry-Num (copies, not Slack retries)",
    )
    ap.add_argument(
        "--pin",
        type=int,
        metavar="CPU",
        help="run each server on this one CPU (all its threads) and the load generator on "
        "the others: a GIL-bound server then hands the GIL over without waking another CPU",
    )
    ap.add_argument("--only", choices=("ours", "peer"), help="run one server only")
    ap.add_argument("--profile", metavar="FILE", help="py-spy record the daemon (unique case)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk); or use --client python")
    if args.profile and not shutil.which("py-spy"):
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    if args.pin is not None:
        others = sorted(os.sched_getaffinity(0) - {args.pin})
        if args.pin not in os.sched_getaffinity(0) or not others:
            raise SystemExit(f"--pin {args.pin}: needs that CPU and at least one other")
        if client == "wrk" and shutil.which("taskset"):
            PIN_CLIENT[:] = ["taskset", "-c", ",".join(map(str, others))]

    load_avg = os.getloadavg()
    print(
        f"signed Slack deliveries, {args.connections} keep-alive connections, "
        f"{args.duration:g}s per case, client={client}"
        f"{f' (-t{args.wrk_threads})' if client == 'wrk' else f' ({args.procs} procs)'}, "
        f"cpus={os.cpu_count()} "
        + (
            f"(servers pinned to CPU {args.pin}, client on the others), "
            if args.pin is not None
            else "shared by client and server, "
        )
        + f"load average before {load_avg[0]:.2f}, python={sys.version.split()[0]}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    results: dict[str, dict[str, object]] = {}
    fake = None
    try:
        sink_url = None
        if args.sink == "statewave":
            fake, sink_url = start_fake_statewave(work)
        for name in ("ours", "peer"):
            if args.only and name != args.only:
                continue
            server = (
                start_ours(work, args.sink, sink_url, args.log_level)
                if name == "ours"
                else start_peer(work)
            )
            results[name] = measure(server, args, client, work)
    finally:
        if fake is not None:
            fake.terminate()
            fake.wait()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{'server':6} {'event ids':10} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'requests':>9} {'errors':>6} {'srv cpu':>7} {'cli cpu':>7}"
    )
    for name, r in results.items():
        for case in ("unique", "duplicate"):
            x = r[case]
            assert isinstance(x, dict)
            print(
                f"{name:6} {case:10} {x['rps']:8.0f} {x['p50_ms']:7.2f} {x['p99_ms']:7.2f} "
                f"{x['requests']:9d} {x['errors']:6d} {x['server_cpu']:7.2f} {x['client_cpu']:7.2f}"
                + (f"  ({x['note']})" if x["note"] else "")
            )
    for name, r in results.items():
        u = r["unique"]
        assert isinstance(u, dict)
        answered = int(u["requests"]) - int(u["errors"])
        stored = int(r["stored_unique_case"])  # type: ignore[call-overload]
        # Requests still in flight when the load stopped may be stored too.
        verdict = "ok" if answered <= stored <= answered + args.connections else "MISMATCH"
        print(
            f"{name}: unique case: {stored} events stored for {answered} requests "
            f"answered 200 ({verdict})"
        )
    if "peer" in results:
        peer = results["peer"]
        fast = [m for m in ("uvloop", "httptools") if peer[m]]
        print(
            f"peer stack: starlette {peer['starlette']}, uvicorn {peer['uvicorn']}, "
            + (
                f"with {' + '.join(fast)}"
                if fast
                else "asyncio + h11 (uvloop/httptools not installed)"
            )
        )
    if "ours" in results and "peer" in results:
        for case in ("unique", "duplicate"):
            o, p = results["ours"][case], results["peer"][case]
            assert isinstance(o, dict) and isinstance(p, dict)
            ratio = o["rps"] / p["rps"] if p["rps"] else float("inf")
            print(
                f"ratio ours/peer {case}: throughput x{ratio:.2f}, "
                f"p99 {o['p99_ms']:.2f} ms vs {p['p99_ms']:.2f} ms"
            )
    if "ours" in results:
        u = results["ours"]["unique"]
        assert isinstance(u, dict)
        met = u["rps"] >= TARGET_RPS and u["p99_ms"] < TARGET_P99_MS
        print(
            f"target (>= {TARGET_RPS:.0f} req/s, p99 < {TARGET_P99_MS:.0f} ms, unique ids): "
            f"{'met' if met else 'NOT met'} ({u['rps']:.0f} req/s, p99 {u['p99_ms']:.2f} ms); "
            f"Node runner reference ~{NODE_RPS:.0f} req/s, p99 {NODE_P99} ms "
            f"-> ours/Node x{u['rps'] / NODE_RPS:.2f}"
        )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
