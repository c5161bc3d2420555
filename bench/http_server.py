"""HTTP server bench: /healthz throughput and latency, ours vs a naive ThreadingHTTPServer.

    python bench/http_server.py                      # 5 s per case (quick)
    python bench/http_server.py --duration 30        # the full run
    python bench/http_server.py --client python      # without wrk

For each server (statewave_runner.server.Server, and a plain
``ThreadingHTTPServer`` + ``BaseHTTPRequestHandler`` speaking HTTP/1.1) this
starts the server in its own process, measures its idle RSS, then drives
``GET /healthz`` with 50 concurrent connections, once with keep-alive and once
with ``Connection: close``, and prints req/s, p50/p99 latency, errors and the
ratio ours/naive. The load generator runs in a separate process: ``wrk`` when
installed (``apt-get install wrk``), else a multi-process Python client. On a
2-core machine both share the CPUs with the server: the numbers are
CPU-limited, and the Python client is slower than wrk (it may be the
bottleneck; the report says which client ran).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _load import (  # bench/_load.py (bench/ is sys.path[0])
    latency_summary,
    parse_wrk,
    take_response,
)

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- servers


# Each server runs in a fresh interpreter that imports only what it serves with,
# so its RSS is the server's, not this script's.
_OURS = """
import os, sys, time
sys.path.insert(0, {root!r})
if {access_log!r}:
    import logging
    logging.basicConfig(level=logging.DEBUG, stream=open(os.devnull, "w"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
from statewave_runner.server import Server
server = Server("127.0.0.1", 0)
server.start()
server.ready = True
os.write({fd}, b"%d\\n" % server.address[1])
while True:
    time.sleep(3600)
"""

_NAIVE = """
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = b'{{"status":"ok"}}'
class Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; with HTTP/1.0 every request reconnects
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, format, *args):
        pass  # the default writes a line per request to stderr
server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
server.daemon_threads = True
os.write({fd}, b"%d\\n" % server.server_address[1])
server.serve_forever()
"""


def start_server(kind: str, access_log: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    read_fd, write_fd = os.pipe()
    code = (_OURS if kind == "ours" else _NAIVE).format(
        root=str(ROOT), fd=write_fd, access_log=access_log
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], pass_fds=(write_fd,), stderr=subprocess.DEVNULL
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        line = pipe.readline()
    if not line:
        proc.kill()
        raise SystemExit(f"{kind} server did not start")
    return proc, int(line)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def run_wrk(port: int, conns: int, duration: float, close: bool, threads: int) -> Result:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}/healthz")
    stats = parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return Result(stats.rps, stats.p50_ms, stats.p99_ms, stats.requests, stats.errors)


_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
_REQUEST_CLOSE = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def _py_worker(
    port: int, conns: int, duration: float, close: bool, out: multiprocessing.Queue[object]
) -> None:
    """One load process: ``conns`` non-blocking connections, each request -> response -> next.

    Connects are non-blocking too, so a server with a tiny listen backlog
    (SYNs dropped, retried after 1 s) slows its own connections only.
    Latency runs from sending the request to the end of the response, as in wrk.
    """
    sel = selectors.DefaultSelector()
    latencies: list[float] = []
    errors = 0
    req = _REQUEST_CLOSE if close else _REQUEST
    end = time.perf_counter() + duration

    def open_conn() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE, {"buf": b"", "t0": 0.0})

    def send_request(s: socket.socket, st: dict[str, object]) -> None:
        st["t0"] = time.perf_counter()
        s.send(req)

    def drop(s: socket.socket) -> None:
        sel.unregister(s)
        s.close()
        open_conn()

    for _ in range(conns):
        open_conn()
    while time.perf_counter() < end:
        for key, events in sel.select(0.2):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            st = key.data
            if events & selectors.EVENT_WRITE:  # connect finished
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    errors += 1
                    drop(s)
                    continue
                sel.modify(s, selectors.EVENT_READ, st)
                send_request(s, st)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                errors += 1
                drop(s)
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
            if close:
                sel.unregister(s)
                s.close()
                open_conn()
            else:
                send_request(s, st)
    out.put((latencies, errors))


def run_python(port: int, conns: int, duration: float, close: bool, procs: int) -> Result:
    q: multiprocessing.Queue[object] = multiprocessing.Queue()
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    workers = [
        multiprocessing.Process(target=_py_worker, args=(port, n, duration, close, q)) for n in per
    ]
    for w in workers:
        w.start()
    latencies: list[float] = []
    errors = 0
    for _ in workers:
        lat, err = q.get()  # type: ignore[misc]
        latencies += lat
        errors += err
    for w in workers:
        w.join()
    rps, p50, p99, n = latency_summary(latencies, duration)
    return Result(rps, p50, p99, n, errors)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per case (default 5)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--procs", type=int, default=2, help="python client processes")
    ap.add_argument(
        "--access-log",
        action="store_true",
        help="ours writes an access log line per request (DEBUG level, to /dev/null)",
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), use --client python")

    def load(port: int, close: bool) -> Result:
        if client == "wrk":
            return run_wrk(port, args.connections, args.duration, close, args.wrk_threads)
        return run_python(port, args.connections, args.duration, close, args.procs)

    print(
        f"GET /healthz, {args.connections} connections, {args.duration:g}s per case, "
        f"client={client}, cpus={os.cpu_count()}, python={sys.version.split()[0]}, "
        f"access log={'on' if args.access_log else 'off (probes log at DEBUG)'}"
    )
    results: dict[str, dict[str, object]] = {}
    for kind in ("ours", "naive"):
        proc, port = start_server(kind, args.access_log)
        try:
            time.sleep(0.5)
            idle = rss_mb(proc.pid)
            load(port, False)  # warm-up, short runs are noisy
            ka = load(port, False)
            cl = load(port, True)
            results[kind] = {
                "idle_rss_mb": round(idle, 1),
                "rss_after_mb": round(rss_mb(proc.pid), 1),
                "threads_after": threads_of(proc.pid),
                "keepalive": ka.__dict__,
                "close": cl.__dict__,
            }
        finally:
            proc.kill()
            proc.wait()

    print(
        f"\n{'server':8} {'mode':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'requests':>9} {'errors':>7}"
    )
    for kind, r in results.items():
        for mode in ("keepalive", "close"):
            x = r[mode]
            assert isinstance(x, dict)
            print(
                f"{kind:8} {mode:10} {x['rps']:9.0f} {x['p50_ms']:8.2f} {x['p99_ms']:8.2f} "
                f"{x['requests']:9d} {x['errors']:7d}"
            )
    naive_close = results["naive"]["close"]
    if client == "wrk" and isinstance(naive_close, dict) and naive_close["errors"]:
        print(
            "(naive close errors are wrk read errors: that server closes without sending "
            "Connection: close, so wrk's next write on the connection fails and it reconnects)"
        )
    for kind, r in results.items():
        print(
            f"{kind}: idle RSS {r['idle_rss_mb']} MB, after load {r['rss_after_mb']} MB, "
            f"{r['threads_after']} threads"
        )
    for mode in ("keepalive", "close"):
        ours, naive = results["ours"][mode], results["naive"][mode]
        assert isinstance(ours, dict) and isinstance(naive, dict)
        ratio = ours["rps"] / naive["rps"] if naive["rps"] else float("inf")
        print(
            f"ratio ours/naive {mode}: throughput x{ratio:.2f}, "
            f"p99 {ours['p99_ms']:.2f} ms vs {naive['p99_ms']:.2f} ms"
        )
    ka = results["ours"]["keepalive"]
    assert isinstance(ka, dict)
    print(
        f"target (>= 8000 keep-alive req/s, p99 < 15 ms): "
        f"{'met' if ka['rps'] >= 8000 and ka['p99_ms'] < 15 else 'NOT met'} "
        f"({ka['rps']:.0f} req/s, p99 {ka['p99_ms']:.2f} ms); Node reference ~30k req/s "
        f"-> ours/Node ~ {ka['rps'] / 30000:.2f}"
    )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
