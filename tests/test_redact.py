"""Redactor.scrub: its fast paths give exactly what the three regexes alone give."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from statewave_runner.redact import _HEADER_RE, _URL_CRED_RE, MASK, Redactor

SECRETS = ("xoxb-very-secret-token-123", "s3cr3t-pw", "sk_test_abcdef")


def reference(redactor: Redactor, text: str) -> str:
    """Every regex on every text: what scrub() did before it learnt to skip."""
    pattern = redactor._pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _HEADER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _URL_CRED_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)


# Pieces that make the regexes match (header names in any case, also with the
# non-ASCII letters IGNORECASE folds onto ASCII ones), URLs with credentials,
# the secrets, and plain noise.
FRAGMENTS = st.sampled_from(
    [
        "Authorization: Bearer abc.def",
        "proxy-AUTHORIZATION=Basic Zm9v",
        "X-Slack-Signature: v0=cafe",
        "x-hub-signature-256 = sha256=beef",
        "X-Zendesk-Webhook-Signature:zz",
        "Cookie: sid=1; other=2",
        "set-cookie=a",
        "x-n8n-api-key: n8n",
        "X-API-KEY:k",
        "x-statewave-token: t",
        "authorızation: dotless-i",
        "x-ſlack-ſignature: long-s",
        "\u212aey",
        "https://user:hunter2@example.com/x",
        "postgresql://app:pw@db:5432/x",
        "redis://:only-pw@cache:6379/0",
        "http://TOKEN@host/",
        "user@example.com",
        "://",
        "@",
        ":",
        "=",
        " ",
        "\n",
        "POST /slack/main/events 200 1.3ms id=5f0c2a9e0000001b from 10.0.3.7",
        *SECRETS,
    ]
)
TEXTS = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=8).map("".join)


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_scrub_equals_the_regexes_alone(text: str) -> None:
    redactor = Redactor(SECRETS)
    assert redactor.scrub(text) == reference(redactor, text)


@given(TEXTS)
def test_scrub_without_secrets_equals_the_regexes_alone(text: str) -> None:
    redactor = Redactor()
    assert redactor.scrub(text) == reference(redactor, text)


def test_scrub_masks_headers_urls_and_secrets() -> None:
    redactor = Redactor(SECRETS)
    assert redactor.scrub("Authorization: Bearer abc.def") == "Authorization: ***"
    assert redactor.scrub("x-ſlack-ſignature: v0=1") == "x-ſlack-ſignature: ***"
    assert redactor.scrub("to https://app:hunter2@db/x") == "to https://app:***@db/x"
    assert redactor.scrub("token xoxb-very-secret-token-123!") == "token ***!"
    plain = "POST /slack/main/events 200 1.3ms id=5f0c2a9e0000001b from 10.0.3.7"
    assert redactor.scrub(plain) == plain
