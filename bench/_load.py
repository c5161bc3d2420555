"""Load-generator helpers shared by the HTTP benches (http_server.py, push.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_CONTENT_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


def ms(text: str) -> float:
    """wrk's latency text (``812.00us``, ``1.20ms``, ``2.00s``) in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m[1]) * _UNITS[m[2]] if m else float("nan")


def _search(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    if not m:
        raise SystemExit(f"unexpected wrk output:\n{text}")
    return m[1]


@dataclass
class WrkStats:
    """What ``wrk --latency`` printed."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    """Socket errors plus non-2xx/3xx responses."""


def parse_wrk(out: str) -> WrkStats:
    """Parse ``wrk --latency`` output; exits with the output if it is not wrk's."""
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m[1])
    return WrkStats(
        rps=float(_search(r"Requests/sec:\s+([\d.]+)", out)),
        p50_ms=ms(_search(r"\s50%\s+(\S+)", out)),
        p99_ms=ms(_search(r"\s99%\s+(\S+)", out)),
        requests=int(_search(r"(\d+) requests in", out)),
        errors=errors,
    )


def take_response(buf: bytes) -> tuple[int, bool] | None:
    """Frame one HTTP/1.1 response at the start of ``buf``.

    ``(length, ok)`` when a whole response (headers and Content-Length body) is
    there, ``ok`` meaning status 200; ``None`` when more bytes are needed.
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    m = _CONTENT_LENGTH.search(buf, 0, head_end)
    need = head_end + 4 + (int(m[1]) if m else 0)
    if len(buf) < need:
        return None
    return need, buf.startswith(b"HTTP/1.1 200")


def latency_summary(latencies: list[float], duration: float) -> tuple[float, float, float, int]:
    """``(req/s, p50 ms, p99 ms, count)`` of per-request latencies in seconds."""
    latencies.sort()
    n = len(latencies)
    if not n:
        return 0.0, float("nan"), float("nan"), 0
    return (
        n / duration,
        latencies[n // 2] * 1000,
        latencies[min(n - 1, int(n * 0.99))] * 1000,
        n,
    )
