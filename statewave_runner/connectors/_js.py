"""JavaScript string semantics the Node connectors rely on.

Episode texts and titles must come out exactly as the Node connectors render
them (they feed idempotency keys and what Statewave stores), so the few JS
built-ins they use are reproduced here: ``String.prototype.trim``, ``\\s`` and
``.`` in regexes, ``parseFloat`` and ``String(x)``.
"""

from __future__ import annotations

import math
import re

from .base import _js_string

# ECMAScript WhiteSpace + LineTerminator: what JS ``\s`` and ``trim()`` remove.
# Python's str.strip() differs (it keeps U+FEFF, removes U+001C..U+001F).
JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
# For use inside a regex character class.
WS = re.escape(JS_WHITESPACE)
# JS ``.`` matches anything but these line terminators.
LINE_TERMINATORS = "\n\r\u2028\u2029"
NOT_LT = f"[^{LINE_TERMINATORS}]"

_FLOAT_PREFIX = re.compile(rf"[{WS}]*([+-]?(?:Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))")


def js_trim(text: str) -> str:
    """``text.trim()`` as JavaScript does it."""
    return text.strip(JS_WHITESPACE)


def js_parse_float(text: str) -> float:
    """``parseFloat(text)``: the longest numeric prefix, ``nan`` when there is none."""
    if text.isascii() and text.replace(".", "", 1).isdigit():
        # Plain decimal digits with at most one dot (Slack's "seconds.micros"):
        # the whole text is the prefix.
        return float(text)
    match = _FLOAT_PREFIX.match(text)
    if not match:
        return math.nan
    token = match.group(1)
    if token.endswith("Infinity"):
        return -math.inf if token.startswith("-") else math.inf
    return float(token)


def js_str(value: object) -> str:
    """``String(value)`` for JSON-ish values (arrays join with ``,``; null is "null")."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return ",".join("" if v is None else js_str(v) for v in value)
    return _js_string(value)


def js_truthy(value: object) -> bool:
    """JavaScript truthiness for JSON values."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0 and not math.isnan(value)
    if isinstance(value, str):
        return value != ""
    return True
