"""Schedule expressions: ``every <N><s|m|h|d>`` and cron, read exactly as the Node runner's croner.

Pure: no I/O, no threads, no clocks. :func:`parse` turns an expression into an
immutable :class:`Schedule`; :meth:`Schedule.next_after` answers "when is the
first fire time strictly after this instant?" by arithmetic over the fields
(jump to the next allowed month, day, hour, minute, second), so a yearly
schedule costs about the same as a minutely one.

Time zones come from :mod:`zoneinfo`. Wall-clock rules at DST changes (see
docs/schedules.md for the full story):

* a wall time inside a spring-forward gap does not exist; a schedule with a
  restricted hour field (``30 2 * * *``) fires once at the first real instant
  after the gap (03:00 after New York's 02:00 -> 03:00 jump); a schedule that
  runs every hour (hour field ``*``) simply has no fires in the missing hour;
* a wall time inside a fall-back overlap exists twice; a schedule with a
  restricted hour field fires at the first occurrence only, one that runs
  every hour fires in both copies (they are distinct real instants).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache

from .errors import ScheduleError

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "format_fire_times",
    "next_fire_times",
    "parse",
]

# --------------------------------------------------------------------------- public API


class Schedule(ABC):
    """A parsed schedule. Immutable; safe to share between threads.

    Use :func:`parse` to build one. ``tz`` is the zone fire times are computed
    and returned in (``datetime.UTC`` when none was given).
    """

    __slots__ = ("_text", "tz")

    tz: tzinfo
    _text: str

    @property
    def is_interval(self) -> bool:
        """True for ``every <N><unit>`` (monotonic, not wall-clock aligned)."""
        return False

    @property
    def interval_seconds(self) -> float | None:
        """The period in seconds of an interval schedule; None for cron."""
        return None

    @property
    def tz_name(self) -> str:
        """The zone's name as given (``"UTC"`` by default)."""
        return _tz_name(self.tz)

    @abstractmethod
    def next_after(self, dt: datetime) -> datetime:
        """The first fire time strictly after ``dt`` (aware), in this schedule's zone."""

    def iter_after(self, dt: datetime) -> Iterator[datetime]:
        """Successive fire times strictly after ``dt`` (an endless iterator)."""
        current = dt
        while True:
            current = self.next_after(current)
            yield current

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._text!r}, tz={self.tz_name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self._text, self.tz_name) == (other._text, other.tz_name)

    def __hash__(self) -> int:
        return hash((self._text, self.tz_name))


def parse(expr: str, tz: str | None = None) -> Schedule:
    """Parse ``every <N><s|m|h|d>`` or a 5/6-field cron (seconds first) expression.

    ``tz`` is an IANA zone name (``"Europe/London"``); None means UTC. Raises
    :class:`~statewave_runner.errors.ScheduleError` with the character position
    and a short reason for any bad input, an unknown zone, or an expression that
    can never fire (``0 0 31 2 *``).
    """
    if not isinstance(expr, str):
        raise ScheduleError(repr(expr), "schedule must be a string")
    if tz is not None and not isinstance(tz, str):
        raise ScheduleError(expr, f"unknown timezone {_q(str(tz))}")
    # Schedules are immutable: thousands of sources with the same expression
    # share one (and its precomputed tables).
    return _parse_cached(expr, tz)


@lru_cache(maxsize=4096)
def _parse_cached(expr: str, tz: str | None) -> Schedule:
    zone = _load_zone(expr, tz)
    stripped = expr.strip()
    if not stripped:
        raise ScheduleError(expr, "empty expression", 0)
    first = stripped.split(None, 1)[0]
    if first.lower() == "every" or _EVERY_GLUED.match(first):
        return _parse_interval(expr, zone)
    return _parse_cron(expr, zone)


def next_fire_times(
    expr: str, tz: str | None, n: int, now: datetime | None = None
) -> list[datetime]:
    """The next ``n`` fire times of ``expr`` after ``now`` (default: the current time).

    For an interval schedule these are ``now + k * interval``: the real timer
    starts counting when the runner arms it, so they show the spacing only.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    schedule = parse(expr, tz)
    start = datetime.now(UTC) if now is None else now
    out: list[datetime] = []
    for fire in schedule.iter_after(start):
        if len(out) >= n:
            break
        out.append(fire)
    return out


def format_fire_times(expr: str, tz: str | None, n: int = 5, now: datetime | None = None) -> str:
    """The text ``python -m statewave_runner schedule EXPR`` prints (one line per fire)."""
    schedule = parse(expr, tz)
    start = datetime.now(UTC) if now is None else now
    times = next_fire_times(expr, tz, n, start)
    kind = (
        f"interval, every {_human_seconds(schedule.interval_seconds or 0)} from arming"
        if schedule.is_interval
        else "cron"
    )
    lines = [f"{schedule} ({kind}, {schedule.tz_name})"]
    for fire in times:
        delta = (fire - start).total_seconds()
        lines.append(f"  {fire.isoformat()} {fire.tzname()}  (in {_human_seconds(delta)})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- zones


def _load_zone(expr: str, tz: str | None) -> tzinfo:
    if tz is None:
        return UTC
    if not isinstance(tz, str) or not tz.strip():
        raise ScheduleError(expr, f"unknown timezone {_q(str(tz))}")
    # zoneinfo only when a zone is configured: UTC-only configs skip its ~0.5 MB.
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(expr, f"unknown timezone {_q(tz.strip())}") from None


def _tz_name(zone: tzinfo) -> str:
    key = getattr(zone, "key", None)  # a ZoneInfo
    if isinstance(key, str):
        return key
    return zone.tzname(None) or "UTC"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORD = date(1970, 1, 1).toordinal()
_ONE_SECOND = timedelta(seconds=1)


def _epoch_seconds(dt: datetime) -> int:
    """Floor of ``dt`` as integer unix seconds, exact (no float rounding)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("next_after needs a timezone-aware datetime")
    return (dt - _EPOCH) // _ONE_SECOND


def _offset(zone: tzinfo, instant: int) -> int:
    off = datetime.fromtimestamp(instant, zone).utcoffset()
    return 0 if off is None else off // _ONE_SECOND


_DAY = 86400


@lru_cache(maxsize=4096)
def _year_transitions(zone: tzinfo, year: int) -> tuple[tuple[int, int, int], ...]:
    """Offset changes (instant, offset before, offset after) in (Jan 1 ``year``, Jan 1 next].

    zoneinfo does not expose its transition table, so sample once a day and
    bisect to the exact second. Two changes less than a day apart that cancel
    out would be missed; tzdata has none since 1970.
    """
    start = (date(year, 1, 1).toordinal() - _EPOCH_ORD) * _DAY
    end = (
        (date(year + 1, 1, 1).toordinal() - _EPOCH_ORD) * _DAY
        if year < 9999
        else start + 365 * _DAY
    )
    found: list[tuple[int, int, int]] = []
    prev_t, prev_o = start, _offset(zone, start)
    t = start
    while t < end:
        t = min(t + _DAY, end)
        o = _offset(zone, t)
        if o != prev_o:
            lo, hi = prev_t, t  # offset(lo) == prev_o, offset(hi) != prev_o
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == prev_o:
                    lo = mid
                else:
                    hi = mid
            found.append((hi, prev_o, _offset(zone, hi)))
        prev_t, prev_o = t, o
    return tuple(found)


def _segment(zone: tzinfo, t: int) -> tuple[int, int, int, int]:
    """(start, end, offset, offset before start) of the constant-offset stretch holding ``t``.

    Stretches are cut at real transitions and, softly (same offset both sides),
    at UTC year boundaries.
    """
    year = datetime.fromtimestamp(t, UTC).year
    ys = (date(year, 1, 1).toordinal() - _EPOCH_ORD) * _DAY
    ye = (date(year + 1, 1, 1).toordinal() - _EPOCH_ORD) * _DAY if year < 9999 else t + _DAY
    trans = _year_transitions(zone, year)
    instants = [tr[0] for tr in trans]
    i = bisect_right(instants, t)  # transitions at or before t: trans[:i]
    end = instants[i] if i < len(instants) else ye
    if i:
        start, before, off = trans[i - 1]
    else:
        start = ys
        off = _offset(zone, t)
        before = _offset(zone, ys - 1)
    return start, end, off, before


# --------------------------------------------------------------------------- interval


_TOKEN = re.compile(r"\S+")
_EVERY_GLUED = re.compile(r"(?i)every\d")
_INTERVAL = re.compile(r"(?i)\s*every(\s*)(\d*)(\s*)([A-Za-z]*)(.*?)\s*$", re.S)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_INTERVAL = 3650 * 86400


@dataclass(frozen=True, slots=True)
class _IntervalSpec:
    count: int
    unit: str


class IntervalSchedule(Schedule):
    """``every <N><unit>``: fires every N units on the monotonic clock, from arming.

    ``next_after(dt)`` is ``dt + interval`` (absolute time, not wall-clock arithmetic).
    """

    __slots__ = ("_delta", "_seconds")

    def __init__(self, count: int, unit: str, zone: tzinfo):
        self._seconds = count * _UNIT_SECONDS[unit]
        self._delta = timedelta(seconds=self._seconds)
        self._text = f"every {count}{unit}"
        self.tz = zone

    @property
    def is_interval(self) -> bool:
        return True

    @property
    def interval_seconds(self) -> float | None:
        return float(self._seconds)

    def next_after(self, dt: datetime) -> datetime:
        _epoch_seconds(dt)  # validates awareness
        return (dt.astimezone(UTC) + self._delta).astimezone(self.tz)


def _parse_interval(expr: str, zone: tzinfo) -> Schedule:
    m = _INTERVAL.fullmatch(expr)
    if m is None:  # unreachable: the pattern accepts any text that starts with "every"
        raise ScheduleError(expr, 'expected "every <N><s|m|h|d>"', 0)
    gap, digits, _space, unit, rest = m.groups()
    if not gap and not digits:
        raise ScheduleError(expr, 'expected a number after "every"', m.start(2))
    if not digits:
        raise ScheduleError(expr, 'expected a number after "every"', m.start(2))
    if not unit:
        pos = m.start(4)
        if rest:
            raise ScheduleError(expr, f"unexpected {_q(rest[0])} after the number", m.start(5))
        raise ScheduleError(expr, "missing unit after the number, expected s, m, h or d", pos)
    if unit.lower() not in _UNIT_SECONDS:
        raise ScheduleError(expr, f"unknown unit {_q(unit)}, expected s, m, h or d", m.start(4))
    if rest:
        raise ScheduleError(expr, f"unexpected {_q(rest.strip())} after the unit", m.start(5))
    count = int(digits)
    if count < 1:
        raise ScheduleError(expr, "interval must be at least 1", m.start(2))
    if count * _UNIT_SECONDS[unit.lower()] > _MAX_INTERVAL:
        raise ScheduleError(expr, "interval is longer than 3650 days", m.start(2))
    return IntervalSchedule(count, unit.lower(), zone)


# --------------------------------------------------------------------------- cron fields

_MONTH_NAMES = {
    name: i + 1
    for i, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_DOW_NAMES = {name: i for i, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}

_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# Occurrence bits of a weekday within its month: bit k-1 = the k-th, bit 5 = the last.
_LAST = 1 << 5
_ANY = 0b111111


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    lo: int
    hi: int  # inclusive, as written (day-of-week accepts 7 = Sunday)
    size: int  # croner's largest allowed step
    names: dict[str, int] | None


_SECOND = _Field("second", 0, 59, 60, None)
_MINUTE = _Field("minute", 0, 59, 60, None)
_HOUR = _Field("hour", 0, 23, 24, None)
_DOM = _Field("day-of-month", 1, 31, 31, None)
_MONTH = _Field("month", 1, 12, 12, _MONTH_NAMES)
_DOW = _Field("day-of-week", 0, 7, 7, _DOW_NAMES)
_FIELDS = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)

_ELEMENT = re.compile(
    r"(?P<star>[*?])(?:/(?P<sstep>\d*))?"
    r"|(?P<a>\d+|[A-Za-z]+)(?:-(?P<b>\d+|[A-Za-z]+))?(?:/(?P<step>\d*))?"
)
_VALID_CHARS = re.compile(r"[0-9A-Za-z*?,/#\-+]")


@dataclass(slots=True)
class _DomSpec:
    days: int = 0  # bit d set: day d
    last: bool = False  # L
    last_weekday: bool = False  # LW
    nearest: int = 0  # bit d set: dW


def _q(text: str) -> str:
    """Quote operator text for a reason: double quotes, control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


def _fail(expr: str, reason: str, pos: int) -> ScheduleError:
    return ScheduleError(expr, reason, pos)


def _value(expr: str, field: _Field, token: str, pos: int, *, range_end: bool = False) -> int:
    if token.isdigit():
        v = int(token)
    else:
        upper = token.upper()
        if field.names is None or upper not in field.names:
            raise _fail(expr, f"unknown name {_q(token)} in the {field.name} field", pos)
        v = field.names[upper]
        if field is _DOW and range_end and v == 0:
            v = 7  # croner reads "FRI-SUN" as 5-7
    if not field.lo <= v <= field.hi:
        raise _fail(expr, f"{field.name} {v} is out of range {field.lo}-{field.hi}", pos)
    return v


def _step(expr: str, field: _Field, digits: str | None, pos: int) -> int:
    if digits is None:
        return 1
    if digits == "":
        raise _fail(expr, f'missing step after "/" in the {field.name} field', pos)
    n = int(digits)
    if n < 1:
        raise _fail(expr, "step must be at least 1", pos)
    if n > field.size:
        raise _fail(
            expr, f"step {n} is larger than the {field.name} field ({field.size} values)", pos
        )
    return n


def _values(expr: str, field: _Field, elem: str, pos: int) -> list[int]:
    """Values of one list element without modifiers: ``*``, ``a``, ``a-b``, with ``/n``."""
    m = _ELEMENT.fullmatch(elem)
    if m is None:
        for i, ch in enumerate(elem):
            if not _VALID_CHARS.fullmatch(ch):
                raise _fail(expr, f"unexpected character {_q(ch)}", pos + i)
        raise _fail(expr, f"invalid {field.name} {_q(elem)}", pos)
    top = field.lo + field.size - 1  # croner steps stop at the array end (day-of-week: 6)
    if m.group("star") is not None:
        step = _step(
            expr,
            field,
            m.group("sstep"),
            pos + m.start("sstep") if m.group("sstep") is not None else pos,
        )
        return list(range(field.lo, top + 1, step))
    a_pos = pos + m.start("a")
    a = _value(expr, field, m.group("a"), a_pos)
    step_digits = m.group("step")
    step = _step(
        expr, field, step_digits, pos + (m.start("step") if step_digits is not None else 0)
    )
    if m.group("b") is not None:
        b = _value(expr, field, m.group("b"), pos + m.start("b"), range_end=True)
        if a > b:
            raise _fail(expr, f"range {m.group('a')}-{m.group('b')} runs backwards", a_pos)
        return list(range(a, b + 1, step))
    if step_digits is not None:
        # "a/n": from a to the end of the field (croner only accepts this with
        # sloppyRanges; Vixie cron and croniter read it the same way).
        return list(range(a, top + 1, step))
    return [a]


def _bits(values: list[int]) -> int:
    mask = 0
    for v in values:
        mask |= 1 << v
    return mask


def _check_letters(expr: str, field: _Field, text: str, pos: int) -> None:
    """Reject modifier letters (L, W, #) where croner does not allow them, with a precise reason."""
    for m in re.finditer(r"[A-Za-z]+|#", text):
        run = m.group().upper()
        if field.names is not None and run in field.names:
            continue
        if run == "#":
            raise _modifier_error(expr, field, "#", pos + m.start())
        if run in ("L", "W", "LW"):
            raise _modifier_error(expr, field, run[0], pos + m.start())
        # any other word: _values reports it as an unknown name


def _parse_plain(expr: str, field: _Field, text: str, pos: int) -> int:
    mask = 0
    for elem, epos in _split_list(expr, field, text, pos):
        _check_letters(expr, field, elem, epos)
        mask |= _bits(_values(expr, field, elem, epos))
    return mask


def _modifier_error(expr: str, field: _Field, ch: str, pos: int) -> ScheduleError:
    if ch == "#":
        return _fail(expr, '"#" is only allowed in the day-of-week field', pos)
    if ch == "W":
        if field is _DOM:
            return _fail(expr, '"W" needs a single day before it, like 15W', pos)
        return _fail(expr, '"W" is only allowed in the day-of-month field', pos)
    if field is _DOM:
        return _fail(expr, '"L" must stand alone in the day-of-month field', pos)
    if field is _DOW:
        return _fail(expr, '"L" needs a weekday before it, like 5L or FRI#L', pos)
    return _fail(expr, '"L" is only allowed in the day-of-month and day-of-week fields', pos)


def _split_list(expr: str, field: _Field, text: str, pos: int) -> Iterator[tuple[str, int]]:
    offset = 0
    for elem in text.split(","):
        if elem == "":
            raise _fail(expr, f"empty value in the {field.name} list", pos + offset)
        yield elem, pos + offset
        offset += len(elem) + 1


_DOM_W = re.compile(r"(\d+)[Ww]")


def _parse_dom(expr: str, text: str, pos: int) -> _DomSpec:
    spec = _DomSpec()
    if text.upper() == "LW":
        spec.last_weekday = True
        return spec
    for elem, epos in _split_list(expr, _DOM, text, pos):
        up = elem.upper()
        if up == "L":
            spec.last = True
        elif up == "LW":
            raise _fail(expr, '"LW" must be the whole day-of-month field', epos)
        elif (m := _DOM_W.fullmatch(elem)) is not None:
            spec.nearest |= 1 << _value(expr, _DOM, m.group(1), epos)
        else:
            _check_letters(expr, _DOM, elem, epos)
            spec.days |= _bits(_values(expr, _DOM, elem, epos))
    return spec


def _parse_dow(expr: str, text: str, pos: int) -> list[int]:
    """Per weekday (0 = Sunday) the occurrence bits that match (``_ANY`` = every one)."""
    out = [0] * 7
    for elem, epos in _split_list(expr, _DOW, text, pos):
        bits = _ANY
        base = elem
        if "#" in elem:
            base, nth = elem.split("#", 1)
            npos = epos + len(base) + 1
            if nth.upper() == "L":
                bits = _LAST
            elif nth.isdigit() and 1 <= int(nth) <= 5:
                bits = 1 << (int(nth) - 1)
            else:
                raise _fail(expr, f"nth weekday #{nth} must be 1-5 or L", npos)
        elif elem[-1] in "Ll" and (
            len(elem) == 1 or elem[-2].isdigit() or elem[-4:-1].upper() in _DOW_NAMES
        ):
            base = elem[:-1]
            bits = _LAST
        if base == "":
            if elem.upper() == "L":
                raise _modifier_error(expr, _DOW, "L", epos)
            raise _fail(expr, "expected a weekday before the modifier", epos)
        _check_letters(expr, _DOW, base, epos)
        for v in _values(expr, _DOW, base, epos):
            wd = 0 if v == 7 else v
            out[wd] = _ANY if bits == _ANY else (out[wd] | bits)
    return out


# --------------------------------------------------------------------------- cron


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(y: int, m: int) -> int:
    if m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0):
        return 29
    return _MONTH_DAYS[m]


def _next_table(mask: int, hi: int) -> tuple[int, ...]:
    """t[i] = smallest allowed value >= i, or -1; one sentinel slot past ``hi``."""
    out = [-1] * (hi + 2)
    nxt = -1
    for v in range(hi, -1, -1):
        if mask >> v & 1:
            nxt = v
        out[v] = nxt
    return tuple(out)


def _day_mask(
    dom: _DomSpec,
    dow: list[int],
    star_dom: bool,
    star_dow: bool,
    and_logic: bool,
    mdays: int,
    w0: int,
) -> int:
    """Matching days (bit d = day d) of a month with ``mdays`` days whose 1st is weekday ``w0``."""
    dom_mask = dom.days & ((1 << (mdays + 1)) - 2)
    if dom.last:
        dom_mask |= 1 << mdays
    if dom.last_weekday:
        wd = (w0 + mdays - 1) % 7
        dom_mask |= 1 << (mdays - 2 if wd == 0 else mdays - 1 if wd == 6 else mdays)
    if dom.nearest:
        for d in range(1, mdays + 1):
            if dom.nearest >> d & 1:
                wd = (w0 + d - 1) % 7
                if wd == 0:
                    d2 = d - 2 if d == mdays else d + 1
                elif wd == 6:
                    d2 = d + 2 if d == 1 else d - 1
                else:
                    d2 = d
                dom_mask |= 1 << d2
    if star_dow:
        return dom_mask
    dow_mask = 0
    for d in range(1, mdays + 1):
        bits = dow[(w0 + d - 1) % 7]
        if bits and (bits >> ((d - 1) // 7) & 1 or (bits & _LAST and d + 7 > mdays)):
            dow_mask |= 1 << d
    # croner: "+" forces AND; otherwise OR unless day-of-month is exactly "*".
    if and_logic or star_dom:
        return dom_mask & dow_mask
    return dom_mask | dow_mask


_MONTH_ABBR = (
    "",
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)


class CronSchedule(Schedule):
    """A cron expression (5 fields, or 6 with seconds first) in a time zone."""

    __slots__ = (
        "_day_masks",
        "_first_hour",
        "_first_minute",
        "_first_second",
        "_fixed_offset",
        "_hour",
        "_hour_restricted",
        "_memo",
        "_minute",
        "_month",
        "_second",
    )

    def __init__(
        self,
        text: str,
        zone: tzinfo,
        second: int,
        minute: int,
        hour: int,
        month: int,
        day_masks: dict[tuple[int, int], int],
    ):
        self._text = text
        self.tz = zone
        self._second = _next_table(second, 59)
        self._minute = _next_table(minute, 59)
        self._hour = _next_table(hour, 23)
        self._month = _next_table(month, 12)
        self._first_second = self._second[0]
        self._first_minute = self._minute[0]
        self._first_hour = self._hour[0]
        self._day_masks = day_masks
        # A schedule tied to particular hours of the day fires once per wall-clock
        # slot across DST changes; one that runs every hour follows real time.
        self._hour_restricted = hour != (1 << 24) - 1
        self._memo: tuple[int, int, int, int] = (0, 0, 0, 0)  # (year, month, mdays, mask)
        fixed: int | None = None
        if isinstance(zone, timezone):
            off = zone.utcoffset(None)
            fixed = off // _ONE_SECOND
        self._fixed_offset = fixed

    # -- wall-clock search -------------------------------------------------

    def _month_info(self, y: int, mo: int) -> tuple[int, int]:
        memo = self._memo
        if memo[0] == y and memo[1] == mo:
            return memo[2], memo[3]
        mdays = _days_in_month(y, mo)
        w0 = date(y, mo, 1).toordinal() % 7  # 0 = Sunday
        mask = self._day_masks[(mdays, w0)]
        self._memo = (y, mo, mdays, mask)
        return mdays, mask

    def _search(self, y: int, mo: int, d: int, h: int, mi: int, s: int) -> int | None:
        """Local seconds of the first matching wall time >= the given one, or None past 9999."""
        months, hours, minutes, seconds = self._month, self._hour, self._minute, self._second
        while True:
            m2 = months[mo]
            if m2 < 0:
                y += 1
                if y > 9999:
                    return None
                mo, d, h, mi, s = 1, 1, 0, 0, 0
                continue
            if m2 != mo:
                mo, d, h, mi, s = m2, 1, 0, 0, 0
            _mdays, mask = self._month_info(y, mo)
            rest = mask >> d
            if not rest:
                mo, d, h, mi, s = mo + 1, 1, 0, 0, 0
                continue
            if not rest & 1:
                d += (rest & -rest).bit_length() - 1
                h, mi, s = 0, 0, 0
            h2 = hours[h]
            if h2 < 0:
                d, h, mi, s = d + 1, 0, 0, 0
                continue
            if h2 != h:
                h, mi, s = h2, 0, 0
            mi2 = minutes[mi]
            if mi2 < 0:
                h, mi, s = h + 1, 0, 0
                continue
            if mi2 != mi:
                mi, s = mi2, 0
            s2 = seconds[s]
            if s2 < 0:
                mi, s = mi + 1, 0
                continue
            return (date(y, mo, d).toordinal() - _EPOCH_ORD) * _DAY + h * 3600 + mi * 60 + s2

    def _search_from(self, local: int) -> int | None:
        w = datetime.fromtimestamp(local, UTC)
        return self._search(w.year, w.month, w.day, w.hour, w.minute, w.second)

    # -- instants ----------------------------------------------------------

    def _next_instant(self, t: int) -> int:
        """The first fire instant >= ``t`` (unix seconds)."""
        if self._fixed_offset is not None:
            off = self._fixed_offset
            local = self._search_from(t + off)
            if local is None:
                raise ValueError("no fire time before the year 10000")
            return local - off
        zone = self.tz
        restricted = self._hour_restricted
        while True:
            start, end, off, before = _segment(zone, t)
            if before < off and t == start and restricted:
                # Spring forward: wall times in [start+before, start+off) never
                # happen; a fixed time among them fires at the first real instant.
                hit = self._search_from(start + before)
                if hit is not None and hit < start + off:
                    return start
            lo = t + off
            if before > off and restricted:
                # Fall back: wall times before start+before were already
                # lived once (first copy); fixed times do not fire again.
                lo = max(lo, start + before)
            hi = end + off
            if lo < hi:
                hit = self._search_from(lo)
                if hit is None:
                    raise ValueError("no fire time before the year 10000")
                if hit < hi:
                    return hit - off
            t = end

    def next_after(self, dt: datetime) -> datetime:
        instant = self._next_instant(_epoch_seconds(dt) + 1)
        if self._fixed_offset == 0 and self.tz is UTC:
            return datetime.fromtimestamp(instant, UTC)
        return datetime.fromtimestamp(instant, self.tz)

    def iter_after(self, dt: datetime) -> Iterator[datetime]:
        t = _epoch_seconds(dt)
        zone = self.tz
        while True:
            t = self._next_instant(t + 1)
            yield datetime.fromtimestamp(t, zone)


def _parse_cron(expr: str, zone: tzinfo) -> Schedule:
    tokens = [(m.group(), m.start()) for m in _TOKEN.finditer(expr)]
    if len(tokens) == 1 and tokens[0][0].startswith("@"):
        nick = tokens[0][0].lower()
        if nick == "@reboot":
            raise _fail(expr, '"@reboot" has no fire time', tokens[0][1])
        if nick not in _NICKNAMES:
            raise _fail(expr, f"unknown nickname {_q(tokens[0][0])}", tokens[0][1])
        sched = _build_cron(expr, [(t, tokens[0][1]) for t in _NICKNAMES[nick].split()], zone)
        sched._text = nick
        return sched
    for tok, pos in tokens:
        if tok.startswith("@"):
            raise _fail(expr, f"nickname {_q(tok)} must be the whole expression", pos)
    if len(tokens) not in (5, 6):
        extra = " (a year field is not supported)" if len(tokens) == 7 else ""
        pos = tokens[6][1] if len(tokens) > 6 else len(expr.rstrip())
        raise _fail(expr, f"expected 5 or 6 fields, found {len(tokens)}{extra}", pos)
    return _build_cron(expr, tokens, zone)


def _build_cron(expr: str, tokens: list[tuple[str, int]], zone: tzinfo) -> CronSchedule:
    fields = list(tokens)
    if len(fields) == 5:
        fields.insert(0, ("0", -1))
    (
        (sec_t, sec_p),
        (min_t, min_p),
        (hour_t, hour_p),
        (dom_t, dom_p),
        (mon_t, mon_p),
        (
            dow_t,
            dow_p,
        ),
    ) = fields
    for text, pos in fields[:5]:
        if "+" in text:
            raise _fail(expr, 'unexpected character "+"', pos + text.index("+"))
    second = _parse_plain(expr, _SECOND, sec_t, sec_p)
    minute = _parse_plain(expr, _MINUTE, min_t, min_p)
    hour = _parse_plain(expr, _HOUR, hour_t, hour_p)
    month = _parse_plain(expr, _MONTH, mon_t, mon_p)
    dom = _parse_dom(expr, dom_t, dom_p)
    and_logic = dow_t.startswith("+")
    dow_text = dow_t[1:] if and_logic else dow_t
    if and_logic and dow_text == "":
        raise _fail(expr, '"+" must be followed by a day-of-week', dow_p)
    if "+" in dow_text:
        raise _fail(expr, 'unexpected character "+"', dow_p + dow_t.index("+", 1))
    dow = _parse_dow(expr, dow_text, dow_p + (1 if and_logic else 0))
    # "?" is an alias of "*" (OCPS 1.4, croner's documentation) -- also for the
    # day-of-month/day-of-week rule below; see docs/schedules.md.
    star_dom = dom_t in ("*", "?")
    star_dow = dow_text in ("*", "?")

    masks: dict[tuple[int, int], int] = {}
    for mdays in (28, 29, 30, 31):
        for w0 in range(7):
            masks[(mdays, w0)] = _day_mask(dom, dow, star_dom, star_dow, and_logic, mdays, w0)

    never = [
        mo
        for mo in range(1, 13)
        if month >> mo & 1
        and not any(
            masks[(md, w0)]
            for md in ((28, 29) if mo == 2 else (_MONTH_DAYS[mo],))
            for w0 in range(7)
        )
    ]
    if never and len(never) == bin(month).count("1"):
        names = "any month" if len(never) == 12 else ",".join(_MONTH_ABBR[mo] for mo in never)
        if star_dow:
            raise _fail(expr, f"day-of-month {dom_t} never occurs in {names}", dom_p)
        raise _fail(
            expr, f"day-of-month {dom_t} and day-of-week {dow_t} never coincide in {names}", dom_p
        )

    normalized = " ".join(
        tok.upper() if not tok.startswith("@") else tok.lower() for tok, _ in tokens
    )
    return CronSchedule(normalized, zone, second, minute, hour, month, masks)


def _human_seconds(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return " ".join(parts[:2])
