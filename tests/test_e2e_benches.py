"""Every bench script starts: ``python bench/<name>.py --help`` exits 0.

The benches are not run by the suite (they take minutes and measure speed),
but they must at least import. (A script named like a stdlib module, such as
the former ``bench/http.py``, shadows it for every bench started from
``bench/``; this test catches that.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "script", sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
)
def test_bench_script_starts(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        cwd=str(BENCH.parent),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
