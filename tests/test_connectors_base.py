from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from statewave_runner.connectors.base import (
    Episode,
    MappingError,
    SourcePointer,
    idempotency_key,
    iso_utc,
    make_episode,
)


def test_idempotency_key_matches_node_documented_example() -> None:
    key = idempotency_key("slack", "T01ABCD", "C01XYZ", "1700000000.000100", "slack.message.posted")
    assert key == "7b3f8ad168bd8eff944297d883d8ad99"


@pytest.mark.parametrize(
    ("part", "rendered"),
    [(None, ""), (4242, "4242"), (1.0, "1"), (1.5, "1.5"), (True, "true"), ("x", "x")],
)
def test_idempotency_key_renders_parts_like_javascript(part: object, rendered: str) -> None:
    assert idempotency_key("a", part) == idempotency_key("a", rendered)


def _iso_general(value: int | str) -> str:
    """iso_utc's general path (datetime parsing and strftime), for its fast paths to match."""
    if isinstance(value, int):
        dt = datetime.fromtimestamp(value / 1000.0, UTC)
    else:
        dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond // 1000:03d}Z"


def test_iso_utc_fast_paths_agree_with_the_general_path() -> None:
    import random

    rng = random.Random(8)
    top = 2**32 * 1000  # the end of the integer fast path
    values = [0, 1, 999, 1000, 1_700_000_000_123, top - 1, top, top + 1, -1, -1500]
    values += [rng.randrange(0, top) for _ in range(2000)]
    values += [rng.randrange(top - 10**6, top) for _ in range(200)]
    for millis in values:
        expected = _iso_general(millis)
        assert iso_utc(millis) == expected, millis
        assert iso_utc(expected) == expected  # the canonical string passes through
    for text in ("0999-01-01T00:00:00.000Z", "2024-02-29T23:59:59.999Z"):
        assert iso_utc(text) == _iso_general(text)
    for bad in (
        "2024-13-01T00:00:00.000Z",
        "2023-02-29T00:00:00.000Z",
        "2024-01-01T24:00:00.000Z",
        "2024-01-01T00:00:60.000Z",
        "\u0662024-01-01T00:00:00.000Z",
    ):
        with pytest.raises(ValueError):
            iso_utc(bad)


def test_iso_utc_matches_javascript_to_iso_string() -> None:
    assert iso_utc("2024-05-01T10:00:00Z") == "2024-05-01T10:00:00.000Z"
    assert iso_utc("2024-05-01T12:00:00.123456+02:00") == "2024-05-01T10:00:00.123Z"
    assert iso_utc("2024-05-01") == "2024-05-01T00:00:00.000Z"
    assert iso_utc(1_700_000_000_000) == "2023-11-14T22:13:20.000Z"
    tz = timezone(timedelta(hours=-5))
    assert iso_utc(datetime(2024, 1, 1, 7, 0, tzinfo=tz)) == "2024-01-01T12:00:00.000Z"
    assert iso_utc(datetime(2024, 1, 1, 7, 0)) == "2024-01-01T07:00:00.000Z"
    with pytest.raises(ValueError):
        iso_utc("yesterday")


def test_make_episode_uses_node_default_key_parts() -> None:
    src = SourcePointer("markdown", "a.md")
    ep = make_episode(
        subject="docs:x",
        kind="docs.page",
        text="# Hello",
        source=src,
        occurred_at=datetime(2024, 5, 1, 10, tzinfo=UTC),
    )
    assert ep.occurred_at == "2024-05-01T10:00:00.000Z"
    assert ep.idempotency_key == idempotency_key("markdown", "a.md", "docs.page", ep.occurred_at)


def test_make_episode_names_every_missing_field() -> None:
    with pytest.raises(MappingError, match=r"subject, source\.id"):
        make_episode(subject="", kind="k", text="t", source=SourcePointer("t", ""))


def test_episode_round_trips_through_dict() -> None:
    ep = make_episode(
        subject="s",
        kind="k",
        text="t",
        source=SourcePointer("t", "1", "https://x"),
        key_parts=["a", 1],
        metadata={"m": [1, 2]},
    )
    assert Episode.from_dict(ep.to_dict()) == ep
    with pytest.raises(ValueError, match="not an episode"):
        Episode.from_dict({"subject": "s"})


def test_js_parse_float_plain_decimals_and_prefixes() -> None:
    import math

    from statewave_runner.connectors._js import js_parse_float

    assert js_parse_float("1700000000.000100") == 1700000000.0001
    assert js_parse_float("12") == 12.0
    assert js_parse_float("12.") == 12.0
    assert js_parse_float(".5") == 0.5
    assert js_parse_float(" 1.5e3x") == 1500.0
    assert js_parse_float("1.2.3") == 1.2
    assert js_parse_float("1_000") == 1.0  # float() would read 1000
    assert math.isnan(js_parse_float("."))
    assert math.isnan(js_parse_float(""))
    assert math.isnan(js_parse_float("nan"))
    assert js_parse_float("-Infinity") == -math.inf
