"""Independent checks of an exposition: prometheus_client's two parsers and promtool.

Every scrape the metrics tests make goes through :func:`check_registry` (or
:func:`check_text` / :func:`check_openmetrics`), so a body any of the three
oracles rejects fails the test that produced it.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from statewave_runner.metrics import Registry

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _promtool() -> str | None:
    path = shutil.which("promtool")
    if path is None and os.environ.get("STATEWAVE_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail("promtool is not installed (scripts/test installs the Debian package)")
    return path


def promtool_check(text: bytes) -> None:
    """``promtool check metrics`` must report no problem at all."""
    tool = _promtool()
    if tool is None:
        pytest.skip("promtool not installed")
    result = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"promtool: rc={result.returncode}\n{result.stdout.decode()}{result.stderr.decode()}"
    )


def _key(name: str, labels: dict[str, str]) -> SampleKey:
    fixed = dict(labels)
    if "le" in fixed:  # "1" (0.0.4, as prom-client) and "1.0" (OpenMetrics canonical)
        fixed["le"] = repr(float(fixed["le"]))
    return name, tuple(sorted(fixed.items()))


def check_text(body: bytes, *, promtool: bool = True) -> dict[SampleKey, float]:
    """Parse a 0.0.4 body with prometheus_client (and promtool); samples by (name, labels)."""
    text = body.decode("utf-8")
    samples: dict[SampleKey, float] = {}
    for family in parse_text(text):
        for s in family.samples:
            key = _key(s.name, s.labels)
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    if promtool:
        promtool_check(body)
    return samples


def check_openmetrics(body: bytes) -> dict[SampleKey, float]:
    """Parse an OpenMetrics body with prometheus_client's strict parser."""
    text = body.decode("utf-8")
    assert text.endswith("# EOF\n")
    samples: dict[SampleKey, float] = {}
    for family in parse_openmetrics(text):
        for s in family.samples:
            key = _key(s.name, s.labels)
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples


def same_samples(a: dict[SampleKey, float], b: dict[SampleKey, float]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def check_registry(
    registry: Registry, *, promtool: bool = True, stable: bool = True
) -> dict[SampleKey, float]:
    """Scrape both formats, check each with its oracles, and require the same samples.

    ``stable=False`` (process metrics move between two scrapes) compares the
    sample names and labels only.
    """
    text = check_text(registry.expose_text(), promtool=promtool)
    om = check_openmetrics(registry.expose_openmetrics())
    if stable:
        assert same_samples(text, om), f"text and OpenMetrics disagree:\n{text}\n{om}"
    else:
        assert text.keys() == om.keys(), f"text and OpenMetrics disagree:\n{text}\n{om}"
    return text
