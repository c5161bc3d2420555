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
