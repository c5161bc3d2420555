"""Idle RSS of the daemon: ``python -m statewave_runner run``, against a bare interpreter.

    python bench/idle_rss.py                 # 3 runs of each, 25 s after start
    python bench/idle_rss.py --runs 5 --wait 60
    python bench/idle_rss.py --python python3   # another interpreter (site-packages count)

Three processes per run, started together and measured after ``--wait``
seconds (the quickstart has ticked and delivered by then):

* bare: ``python -c 'import time; time.sleep(...)'``, the floor;
* memory: the daemon with memory state, a file sink and the quickstart's
  markdown source (``./docs`` every 10 s);
* quickstart: ``examples/quickstart.toml`` as the README runs it (SQLite
  state, file sink), in a scratch directory whose ``docs`` links to ours.

Prints the median VmRSS (and RssAnon / RssFile, threads) of each from
``/proc/PID/status`` and checks the issue's target: < 30 MB. RSS is not
load-sensitive, so this needs no quiet machine. Linux only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_MB = 30.0

MEMORY_CONFIG = """\
[statewave]
url = "file:{dir}/episodes.jsonl"
[runner]
port = 0
log_format = "text"
[[pull.markdown]]
name = "docs"
schedule = "every 10s"
path = "./docs"
subject = "repo:statewave-runner"
"""


def status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            out[key] = int(value.split()[0])
    return out


def start(python: str, kind: str, scratch: Path) -> subprocess.Popen[bytes]:
    if kind == "bare":
        cmd = [python, "-c", "import time; time.sleep(3600)"]
    else:
        if kind == "memory":
            config = scratch / "memory.toml"
            config.write_text(MEMORY_CONFIG.format(dir=scratch))
        else:
            config = ROOT / "examples" / "quickstart.toml"
        cmd = [python, "-m", "statewave_runner", "run", "--config", str(config), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        cmd, cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--wait", type=float, default=25.0, help="seconds after start (default 25)")
    ap.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    args = ap.parse_args()

    kinds = ("bare", "memory", "quickstart")
    samples: dict[str, list[dict[str, int]]] = {k: [] for k in kinds}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            procs = {}
            for kind in kinds:
                scratch = Path(tmp) / kind
                scratch.mkdir()
                (scratch / "docs").symlink_to(ROOT / "docs")
                procs[kind] = start(args.python, kind, scratch)
            try:
                time.sleep(args.wait)
                for kind, proc in procs.items():
                    if proc.poll() is not None:
                        raise SystemExit(f"{kind} exited early with {proc.returncode}")
                    samples[kind].append(status(proc.pid))
            finally:
                for proc in procs.values():
                    proc.terminate()
                for proc in procs.values():
                    proc.wait(30)

    version = subprocess.run(
        [args.python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"idle RSS, {args.runs} run(s), {args.wait:g} s after start, {args.python} ({version})")
    print(f"{'process':11} {'VmRSS MB':>9} {'anon':>6} {'file':>6} {'threads':>8}  runs (MB)")
    medians: dict[str, float] = {}
    for kind in kinds:
        rows = samples[kind]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        medians[kind] = med["VmRSS"] / 1024
        runs = ", ".join(f"{r['VmRSS'] / 1024:.1f}" for r in rows)
        print(
            f"{kind:11} {med['VmRSS'] / 1024:9.1f} {med['RssAnon'] / 1024:6.1f} "
            f"{med['RssFile'] / 1024:6.1f} {med['Threads']:8.0f}  {runs}"
        )
    for kind in ("memory", "quickstart"):
        mb = medians[kind]
        print(
            f"{kind}: {mb:.1f} MB, {mb - medians['bare']:.1f} MB over bare python; "
            f"target < {TARGET_MB:g} MB: {'met' if mb < TARGET_MB else 'NOT met'}; "
            f"Node runner ~71 MB"
        )


if __name__ == "__main__":
    main()
