"""Keeping secrets out of everything we print.

Secrets enter through the config (fields marked secret, credentials inside
URLs). Every value that is printed - log records, error messages,
``describe()``, ``/metrics`` - goes through :class:`Redactor` or
:func:`redact_url` first.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# Secrets shorter than this are not scrubbed from free text: masking "a" or
# "1" everywhere would destroy every message. They are still masked where they
# are printed as a field value (describe(), config dumps).
MIN_SCRUB_LENGTH = 4

_HEADER_RE = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-api-key|x-slack-signature|"
    r"x-hub-signature(?:-256)?|x-zendesk-webhook-signature|cookie|set-cookie|"
    r"x-n8n-api-key|x-statewave-token)(\s*[:=]\s*)([^\r\n,;]+)"
)
_URL_CRED_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@]*)(:[^/\s@]*)?@")


def _header_hint(lowered: str) -> bool:
    """Whether ``lowered`` (ASCII, lower case) may hold a _HEADER_RE match.

    Every header name there contains one of these. Only for ASCII text: there
    ``str.lower()`` is exactly the regex's IGNORECASE, which elsewhere also
    folds e.g. "ı" to "i" and "ſ" to "s".
    """
    return (
        "authorization" in lowered
        or "signature" in lowered
        or "api-key" in lowered
        or "cookie" in lowered
        or "statewave-token" in lowered
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (the user name is kept).

    ``postgresql://app:s3cret@db:5432/x`` -> ``postgresql://app:***@db:5432/x``;
    ``https://TOKEN@host`` -> ``https://***@host``.
    Query parameters named like secrets (token, key, password, secret,
    signature) are masked too. A string that is not a URL is returned with
    inline credentials masked.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_CRED_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        # user:password keeps the user; a lone userinfo may itself be a token
        # (https://TOKEN@host), so it is masked whole.
        netloc = f"{user}:{MASK}@{hostport}" if ":" in userinfo else f"{MASK}@{hostport}"
    query = parts.query
    if query:
        query = re.sub(
            r"(?i)((?:^|&)[^=&]*(?:token|key|password|passwd|secret|signature|sig)[^=&]*=)[^&]*",
            rf"\1{MASK}",
            query,
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Redactor:
    """Scrubs known secret values and credential-bearing headers from text.

    Thread-safe; secrets can be added at any time (config load, OAuth token
    refresh). The scrub is a single regex alternation, rebuilt on change.
    """

    def __init__(self, secrets: Iterable[str] = ()):
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Register secret values to be masked wherever they appear."""
        fresh = {s for s in secrets if s and len(s) >= MIN_SCRUB_LENGTH} - self._secrets
        if not fresh:
            return
        with self._lock:
            self._secrets |= fresh
            # Longest first so a secret that contains another is masked whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value in self._secrets

    def scrub(self, text: str) -> str:
        """``text`` with every known secret, credential header and URL password masked."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        # The two regexes cost microseconds per line (every log line goes
        # through here); skip each when a cheap test proves it cannot match.
        if not text.isascii() or _header_hint(text.lower()):
            text = _HEADER_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
        if "@" in text and "://" in text:
            text = _URL_CRED_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)
        return text
