"""The Episode -> Statewave JSON mapping and the pure helpers of ingest.py."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statewave_runner import __version__
from statewave_runner.connectors.base import Episode, SourcePointer, make_episode
from statewave_runner.ingest import (
    MAX_RETRY_AFTER,
    clean_json,
    clean_str,
    encode_json,
    episode_to_wire,
    parse_retry_after,
    validate_sink_url,
)


def _episode(**changes: object) -> Episode:
    base = make_episode(
        subject="repo:acme/widgets",
        kind="github.issue",
        text="Login fails on Safari",
        source=SourcePointer("github.issue", "42", "https://github.com/acme/widgets/issues/42"),
        occurred_at="2024-05-01T10:00:00Z",
        metadata={"repo_owner": "acme", "labels": ["bug"]},
    )
    fields: dict[str, object] = {"connector": "github/main", **changes}
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_mapping_is_exactly_the_documented_shape() -> None:
    ep = _episode()
    doc, notes = episode_to_wire(ep)
    assert notes == []
    assert doc == {
        "subject_id": "repo:acme/widgets",
        "source": "github",
        "type": "github.issue",
        "payload": {
            "repo_owner": "acme",
            "labels": ["bug"],
            "text": "Login fails on Safari",
            "occurred_at": "2024-05-01T10:00:00.000Z",
            "source": {
                "type": "github.issue",
                "id": "42",
                "url": "https://github.com/acme/widgets/issues/42",
            },
        },
        "metadata": {"idempotency_key": ep.idempotency_key, "connector": "github/main"},
        "provenance": {
            "producer": f"statewave-runner/{__version__}",
            "connector": "github/main",
            "source": {
                "type": "github.issue",
                "id": "42",
                "url": "https://github.com/acme/widgets/issues/42",
            },
        },
        "occurred_at": "2024-05-01T10:00:00.000Z",
        "idempotency_key": ep.idempotency_key,
    }
    # Key order is part of the byte-for-byte wire format.
    assert list(doc) == [
        "subject_id",
        "source",
        "type",
        "payload",
        "metadata",
        "provenance",
        "occurred_at",
        "idempotency_key",
    ]


def test_episode_fields_win_over_connector_extras_of_the_same_name() -> None:
    ep = _episode(metadata={"text": "spoofed", "source": "x", "extra": 1})
    doc, _ = episode_to_wire(ep)
    assert doc["payload"]["text"] == "Login fails on Safari"
    assert doc["payload"]["source"]["id"] == "42"
    assert doc["payload"]["extra"] == 1


def test_source_url_omitted_when_absent() -> None:
    ep = _episode(source=SourcePointer("slack.message", "C1/1700000000.1"))
    doc, _ = episode_to_wire(ep)
    assert doc["payload"]["source"] == {"type": "slack.message", "id": "C1/1700000000.1"}


def test_source_falls_back_to_source_type_prefix_without_connector() -> None:
    doc, _ = episode_to_wire(_episode(connector=""))
    assert doc["source"] == "github"
    assert "connector" not in doc["metadata"]
    assert "connector" not in doc["provenance"]
    doc, _ = episode_to_wire(_episode(connector="", source=SourcePointer("", "1")))
    assert doc["source"] == "statewave-runner"


def test_nul_is_stripped_everywhere_including_keys() -> None:
    ep = _episode(
        subject="repo:\x00acme",
        kind="iss\x00ue",
        text="a\x00b",
        metadata={"k\x00ey": ["x\x00", {"n\x00": "v\x00"}]},
        source=SourcePointer("github.issue", "4\x002", None),
    )
    doc, _ = episode_to_wire(ep)
    text = encode_json(doc).decode()
    assert "\\u0000" not in text and "\x00" not in text
    assert doc["subject_id"] == "repo:acme"
    assert doc["type"] == "issue"
    assert doc["payload"]["text"] == "ab"
    assert doc["payload"]["key"] == ["x", {"n": "v"}]
    assert doc["payload"]["source"]["id"] == "42"


def test_lone_surrogates_become_replacement_characters() -> None:
    assert clean_str("a\ud800b") == "a\ufffdb"
    assert clean_str("\ud83d\ude00") == "\U0001f600"  # a valid pair is joined
    encode_json({"x": clean_str("\udfff")})  # encodable


def test_non_finite_numbers_and_foreign_types_are_made_storable() -> None:
    when = datetime(2024, 1, 2, tzinfo=UTC)
    assert clean_json({"a": math.nan, "b": math.inf, "c": (1, 2), "d": when, 3: True}) == {
        "a": None,
        "b": None,
        "c": [1, 2],
        "d": str(when),
        "3": True,
    }


_BAD = re.compile("[\x00\ud800-\udfff]")


def _reference_clean_str(text: str) -> str:
    """clean_str as first written: the regex on every string."""
    if not _BAD.search(text):
        return text
    text = text.replace("\x00", "")
    if _BAD.search(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _reference_clean_json(value: object) -> object:
    """clean_json as first written: isinstance checks, no exact-type fast paths."""
    if isinstance(value, str):
        return _reference_clean_str(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {_reference_clean_str(str(k)): _reference_clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reference_clean_json(v) for v in value]
    return _reference_clean_str(str(value))


class _Str(str):
    def __str__(self) -> str:
        return "sub:" + str.__str__(self)


_TEXT = st.text(
    alphabet=st.sampled_from(
        ["a", "Z", " ", "\x00", "\ud800", "\udfff", "\ud83d", "\ude00", "é", "✓"]
    ),
    max_size=8,
)
_KEYS = st.one_of(_TEXT, _TEXT.map(_Str), st.integers(), st.booleans(), st.none(), st.floats())
_LEAVES = st.one_of(
    _TEXT, _TEXT.map(_Str), st.integers(), st.booleans(), st.none(), st.floats(), st.just(UTC)
)
_JSONISH = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_KEYS, inner, max_size=4),
    ),
    max_leaves=20,
)


def _same(a: object, b: object) -> bool:
    # NaN != NaN; the cleaned values never hold NaN, so plain == suffices,
    # plus a type check so that a tuple kept as a tuple would be caught.
    return a == b and json.dumps(a, default=str) == json.dumps(b, default=str)


@given(_TEXT)
def test_clean_str_equals_the_regex_version(text: str) -> None:
    assert clean_str(text) == _reference_clean_str(text)


@given(_JSONISH)
def test_clean_json_equals_the_isinstance_version(value: object) -> None:
    assert _same(clean_json(value), _reference_clean_json(value))


def test_truncation_to_server_limits_is_reported() -> None:
    ep = _episode(subject="s" * 300, kind="k" * 200, connector="c" * 300 + "/name")
    doc, notes = episode_to_wire(ep)
    assert len(doc["subject_id"]) == 256
    assert len(doc["type"]) == 128
    assert len(doc["source"]) == 256
    assert notes == [
        "subject_id truncated from 300 to 256 characters",
        "type truncated from 200 to 128 characters",
        "source truncated from 300 to 256 characters",
    ]


def test_limits_count_characters_not_bytes() -> None:
    doc, notes = episode_to_wire(_episode(subject="é" * 256))
    assert notes == [] and doc["subject_id"] == "é" * 256


def test_empty_subject_or_kind_cannot_be_sent() -> None:
    with pytest.raises(ValueError, match="subject is empty"):
        episode_to_wire(_episode(subject="\x00"))
    with pytest.raises(ValueError, match="kind is empty"):
        episode_to_wire(_episode(kind=""))


def test_unparsable_occurred_at_stays_in_payload_only() -> None:
    doc, _ = episode_to_wire(_episode(occurred_at="yesterday-ish"))
    assert "occurred_at" not in doc
    assert doc["payload"]["occurred_at"] == "yesterday-ish"


@given(
    st.text(min_size=1, max_size=400),
    st.text(max_size=50),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.floats(), max_size=4),
)
def test_any_episode_encodes_to_storable_json(subject: str, text: str, extra: dict) -> None:  # type: ignore[type-arg]
    ep = _episode(subject=subject, text=text, metadata=extra)
    try:
        doc, _ = episode_to_wire(ep)
    except ValueError:
        assert clean_str(subject) == ""
        return
    raw = encode_json(doc)
    back = json.loads(raw)  # strict JSON: allow_nan=False already refused NaN
    assert 1 <= len(back["subject_id"]) <= 256
    assert "\\u0000" not in raw.decode()


def test_encode_json_is_compact_utf8() -> None:
    assert encode_json({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("99999999", MAX_RETRY_AFTER),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_000_000.0) == expected


def test_retry_after_http_date() -> None:
    now = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC).timestamp()
    later = datetime(2024, 5, 1, 10, 2, 0, tzinfo=UTC)
    assert parse_retry_after(format_datetime(later, usegmt=True), now) == 120.0
    assert parse_retry_after("Wed, 01 May 2024 10:02:00 GMT", now) == 120.0
    assert parse_retry_after("Wed, 01 May 2024 09:00:00 GMT", now) == 0.0  # past: now


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8100",
        "https://statewave.example.com",
        "https://statewave.example.com/base/",
        "http://[::1]:8100",
        "file:./episodes.jsonl",
        "file:/var/lib/x.jsonl",
        "file:///var/lib/x.jsonl",
    ],
)
def test_valid_urls(url: str) -> None:
    validate_sink_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "non-empty"),
        ("ftp://x", "scheme 'ftp' is not supported"),
        ("statewave.example.com", "scheme '' is not supported"),
        ("https://user:pw@host", "must not contain credentials"),
        ("https://token@host", "must not contain credentials"),
        ("https://host?x=1", "query string"),
        ("https://host#frag", "query string or fragment"),
        ("http://", "has no host"),
        ("http://host:99999", "not a valid URL"),
        ("file:", "needs a path"),
        ("file://otherhost/x", "local path"),
        (" http://host", "whitespace"),
    ],
)
def test_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_sink_url(url)


def test_invalid_url_message_never_echoes_the_password() -> None:
    with pytest.raises(ValueError) as info:
        validate_sink_url("https://user:hunter22@host")
    assert "hunter22" not in str(info.value)
