"""Shared fixtures.

PostgreSQL and Redis tests read ``STATEWAVE_TEST_POSTGRES_URL`` and
``STATEWAVE_TEST_REDIS_URL``. Without them they skip with a reason - unless
``STATEWAVE_TEST_REQUIRE_SERVICES=1`` (set by ``scripts/test``, hence CI), where
a missing URL is a failure: CI never skips them.
"""

from __future__ import annotations

import os
import uuid

import pytest


def _service_url(var: str) -> str:
    url = os.environ.get(var)
    if url:
        return url
    if os.environ.get("STATEWAVE_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{var} is not set but STATEWAVE_TEST_REQUIRE_SERVICES=1")
    pytest.skip(f"{var} not set")


@pytest.fixture
def postgres_url() -> str:
    """URL of the test PostgreSQL (skip, or fail under STATEWAVE_TEST_REQUIRE_SERVICES=1)."""
    return _service_url("STATEWAVE_TEST_POSTGRES_URL")


@pytest.fixture
def redis_url() -> str:
    """URL of the test Redis (skip, or fail under STATEWAVE_TEST_REQUIRE_SERVICES=1)."""
    return _service_url("STATEWAVE_TEST_REDIS_URL")


@pytest.fixture
def unique_name() -> str:
    """A name no concurrent test run uses: for tables, key prefixes, files."""
    return f"t{uuid.uuid4().hex[:12]}"
