"""schedule.py: parsing, fire times (hand tables), DST rules, errors, helpers.

The differential test against croniter lives in test_schedule_croniter.py.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statewave_runner.errors import ScheduleError
from statewave_runner.schedule import (
    Schedule,
    format_fire_times,
    next_fire_times,
    parse,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fires(expr: str, tz: str | None, start: str, n: int) -> list[datetime]:
    it = parse(expr, tz).iter_after(utc(start))
    return [next(it) for _ in range(n)]


# --------------------------------------------------------------------------- croner table

# Expected values were produced by croner 10.0.1 itself (the Node runner's
# library: `new Cron(p, {timezone}).nextRuns(n, start)`), outside any DST change.
CRONER_TABLE = [
    ("0 0 L * *", "UTC", "2024-01-15T00:00:00Z", ["2024-01-31T00:00:00Z", "2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z", "2024-04-30T00:00:00Z"]),
    ("0 0 31 * *", "UTC", "2024-01-15T00:00:00Z", ["2024-01-31T00:00:00Z", "2024-03-31T00:00:00Z", "2024-05-31T00:00:00Z", "2024-07-31T00:00:00Z"]),
    ("0 0 30 * *", "UTC", "2024-01-15T00:00:00Z", ["2024-01-30T00:00:00Z", "2024-03-30T00:00:00Z", "2024-04-30T00:00:00Z"]),
    ("0 0 29 2 *", "UTC", "2097-01-01T00:00:00Z", ["2104-02-29T00:00:00Z", "2108-02-29T00:00:00Z"]),
    ("0 0 29 2 *", "UTC", "1999-01-01T00:00:00Z", ["2000-02-29T00:00:00Z", "2004-02-29T00:00:00Z"]),
    ("0 0 29 2 +MON", "UTC", "2017-01-01T00:00:00Z", ["2044-02-29T00:00:00Z", "2072-02-29T00:00:00Z"]),
    ("0 0 * * 5L", "UTC", "2024-01-01T00:00:00Z", ["2024-01-26T00:00:00Z", "2024-02-23T00:00:00Z", "2024-03-29T00:00:00Z", "2024-04-26T00:00:00Z"]),
    ("0 0 * * FRI#L", "UTC", "2024-01-01T00:00:00Z", ["2024-01-26T00:00:00Z", "2024-02-23T00:00:00Z", "2024-03-29T00:00:00Z"]),
    ("0 0 * * FRI#2", "UTC", "2024-01-01T00:00:00Z", ["2024-01-12T00:00:00Z", "2024-02-09T00:00:00Z", "2024-03-08T00:00:00Z", "2024-04-12T00:00:00Z"]),
    ("0 0 * * MON#1,FRI#5", "UTC", "2024-01-01T00:00:00Z", ["2024-02-05T00:00:00Z", "2024-03-04T00:00:00Z", "2024-03-29T00:00:00Z", "2024-04-01T00:00:00Z", "2024-05-06T00:00:00Z"]),
    ("0 0 * * 1-5#1", "UTC", "2024-04-01T00:00:00Z", ["2024-04-02T00:00:00Z", "2024-04-03T00:00:00Z", "2024-04-04T00:00:00Z", "2024-04-05T00:00:00Z", "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"]),
    ("0 0 15W * *", "UTC", "2024-05-01T00:00:00Z", ["2024-05-15T00:00:00Z", "2024-06-14T00:00:00Z", "2024-07-15T00:00:00Z", "2024-08-15T00:00:00Z"]),
    ("0 0 1W * *", "UTC", "2024-05-01T00:00:00Z", ["2024-06-03T00:00:00Z", "2024-07-01T00:00:00Z", "2024-08-01T00:00:00Z", "2024-09-02T00:00:00Z"]),
    ("0 0 31W * *", "UTC", "2024-01-01T00:00:00Z", ["2024-01-31T00:00:00Z", "2024-03-29T00:00:00Z", "2024-05-31T00:00:00Z", "2024-07-31T00:00:00Z"]),
    ("0 0 LW * *", "UTC", "2024-01-01T00:00:00Z", ["2024-01-31T00:00:00Z", "2024-02-29T00:00:00Z", "2024-03-29T00:00:00Z", "2024-04-30T00:00:00Z"]),
    ("0 0 L,15 * *", "UTC", "2024-01-01T00:00:00Z", ["2024-01-15T00:00:00Z", "2024-01-31T00:00:00Z", "2024-02-15T00:00:00Z", "2024-02-29T00:00:00Z"]),
    ("0 0 L * FRI", "UTC", "2024-01-01T00:00:00Z", ["2024-01-05T00:00:00Z", "2024-01-12T00:00:00Z", "2024-01-19T00:00:00Z", "2024-01-26T00:00:00Z", "2024-01-31T00:00:00Z"]),
    ("0 0 1 * MON", "UTC", "2024-01-01T00:00:00Z", ["2024-01-08T00:00:00Z", "2024-01-15T00:00:00Z", "2024-01-22T00:00:00Z", "2024-01-29T00:00:00Z", "2024-02-01T00:00:00Z"]),
    ("0 0 1 * +MON", "UTC", "2024-01-01T00:00:00Z", ["2024-04-01T00:00:00Z", "2024-07-01T00:00:00Z", "2025-09-01T00:00:00Z"]),
    ("0 0 * * MON", "UTC", "2024-01-01T00:00:00Z", ["2024-01-08T00:00:00Z", "2024-01-15T00:00:00Z"]),
    ("0 0 */2 * MON", "UTC", "2024-01-01T00:00:00Z", ["2024-01-03T00:00:00Z", "2024-01-05T00:00:00Z", "2024-01-07T00:00:00Z", "2024-01-08T00:00:00Z", "2024-01-09T00:00:00Z"]),
    ("0 0 13 * FRI", "UTC", "2024-09-01T00:00:00Z", ["2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z", "2024-09-20T00:00:00Z", "2024-09-27T00:00:00Z"]),
    ("0 0 13 * +FRI", "UTC", "2024-01-01T00:00:00Z", ["2024-09-13T00:00:00Z", "2024-12-13T00:00:00Z", "2025-06-13T00:00:00Z"]),
    ("0 0 * * FRI-SUN", "UTC", "2024-01-01T00:00:00Z", ["2024-01-05T00:00:00Z", "2024-01-06T00:00:00Z", "2024-01-07T00:00:00Z", "2024-01-12T00:00:00Z"]),
    ("0 0 * * 7", "UTC", "2024-01-01T00:00:00Z", ["2024-01-07T00:00:00Z", "2024-01-14T00:00:00Z"]),
    ("0 0 * * sun,Wed", "UTC", "2024-01-01T00:00:00Z", ["2024-01-03T00:00:00Z", "2024-01-07T00:00:00Z", "2024-01-10T00:00:00Z"]),
    ("0 0 1 jan-mar,Dec *", "UTC", "2024-01-01T00:00:00Z", ["2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"]),
    ("0 12 * JUN SAT", "UTC", "2024-01-01T00:00:00Z", ["2024-06-01T12:00:00Z", "2024-06-08T12:00:00Z"]),
    ("*/30 * * * * *", "UTC", "2024-01-01T00:00:10Z", ["2024-01-01T00:00:30Z", "2024-01-01T00:01:00Z", "2024-01-01T00:01:30Z"]),
    ("15,45 */20 * * * *", "UTC", "2024-01-01T00:00:00Z", ["2024-01-01T00:00:15Z", "2024-01-01T00:00:45Z", "2024-01-01T00:20:15Z", "2024-01-01T00:20:45Z"]),
    ("0 0 * * * *", "UTC", "2024-01-01T00:00:00Z", ["2024-01-01T01:00:00Z", "2024-01-01T02:00:00Z"]),
    ("*/15 9-17 * * MON-FRI", "UTC", "2024-01-05T16:50:00Z", ["2024-01-05T17:00:00Z", "2024-01-05T17:15:00Z", "2024-01-05T17:30:00Z"]),
    ("5-20/5 * * * *", "UTC", "2024-01-01T00:00:00Z", ["2024-01-01T00:05:00Z", "2024-01-01T00:10:00Z", "2024-01-01T00:15:00Z", "2024-01-01T00:20:00Z", "2024-01-01T01:05:00Z"]),
    ("0 22 * * 1-5", "UTC", "2024-01-05T23:00:00Z", ["2024-01-08T22:00:00Z", "2024-01-09T22:00:00Z"]),
    ("@yearly", "UTC", "2024-06-01T00:00:00Z", ["2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"]),
    ("@monthly", "UTC", "2024-06-01T00:00:00Z", ["2024-07-01T00:00:00Z", "2024-08-01T00:00:00Z"]),
    ("@weekly", "UTC", "2024-06-01T00:00:00Z", ["2024-06-02T00:00:00Z", "2024-06-09T00:00:00Z"]),
    ("@daily", "UTC", "2024-06-01T00:00:00Z", ["2024-06-02T00:00:00Z", "2024-06-03T00:00:00Z"]),
    ("@hourly", "UTC", "2024-06-01T00:00:00Z", ["2024-06-01T01:00:00Z", "2024-06-01T02:00:00Z"]),
    ("0 0 9 * * MON", "Asia/Kolkata", "2024-01-01T00:00:00Z", ["2024-01-01T03:30:00Z", "2024-01-08T03:30:00Z"]),
    ("0 9 * * *", "Asia/Kolkata", "2024-03-09T00:00:00Z", ["2024-03-09T03:30:00Z", "2024-03-10T03:30:00Z"]),
    ("0 9 * * *", "Europe/London", "2024-06-01T00:00:00Z", ["2024-06-01T08:00:00Z", "2024-06-02T08:00:00Z"]),
    ("0 9 * * *", "Australia/Sydney", "2024-06-01T00:00:00Z", ["2024-06-01T23:00:00Z", "2024-06-02T23:00:00Z"]),
    ("0 0 1 1 *", "America/New_York", "2023-06-01T00:00:00Z", ["2024-01-01T05:00:00Z", "2025-01-01T05:00:00Z"]),
]  # fmt: skip


@pytest.mark.parametrize(("expr", "tz", "start", "expected"), CRONER_TABLE)
def test_fire_times_match_croner(expr: str, tz: str, start: str, expected: list[str]) -> None:
    got = fires(expr, tz, start, len(expected))
    assert [g.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for g in got] == expected
    assert all(str(g.tzinfo) == tz for g in got)


# --------------------------------------------------------------------------- DST

# Our rule (the issue's spec; croner differs, see docs/schedules.md): a schedule
# whose hour field is restricted fires once per wall-clock slot -- a slot in a
# spring-forward gap fires at the first instant after the gap, a slot in a
# fall-back overlap fires at its first occurrence. A schedule running every
# hour follows real time: nothing in the missing hour, both copies of the
# repeated one.
DST_TABLE = [
    # New York, 2024-03-10 02:00 EST -> 03:00 EDT
    ("30 2 * * *", "America/New_York", "2024-03-09T12:00:00Z", ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00", "2024-03-12T02:30:00-04:00"]),
    ("0,30 2 * * *", "America/New_York", "2024-03-09T12:00:00Z", ["2024-03-10T03:00:00-04:00", "2024-03-11T02:00:00-04:00", "2024-03-11T02:30:00-04:00"]),
    ("0 2,3 * * *", "America/New_York", "2024-03-09T12:00:00Z", ["2024-03-10T03:00:00-04:00", "2024-03-11T02:00:00-04:00", "2024-03-11T03:00:00-04:00"]),
    ("*/20 * 2 * * *", "America/New_York", "2024-03-10T06:59:00Z", ["2024-03-10T03:00:00-04:00", "2024-03-11T02:00:00-04:00"]),
    ("30 * * * *", "America/New_York", "2024-03-10T05:00:00Z", ["2024-03-10T00:30:00-05:00", "2024-03-10T01:30:00-05:00", "2024-03-10T03:30:00-04:00", "2024-03-10T04:30:00-04:00"]),
    ("*/30 * * * *", "America/New_York", "2024-03-10T06:00:00Z", ["2024-03-10T01:30:00-05:00", "2024-03-10T03:00:00-04:00", "2024-03-10T03:30:00-04:00"]),
    # New York, 2024-11-03 02:00 EDT -> 01:00 EST
    ("30 1 * * *", "America/New_York", "2024-11-02T12:00:00Z", ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]),
    ("*/20 1 * * *", "America/New_York", "2024-11-03T04:30:00Z", ["2024-11-03T01:00:00-04:00", "2024-11-03T01:20:00-04:00", "2024-11-03T01:40:00-04:00", "2024-11-04T01:00:00-05:00"]),
    ("0 * * * *", "America/New_York", "2024-11-03T04:00:00Z", ["2024-11-03T01:00:00-04:00", "2024-11-03T01:00:00-05:00", "2024-11-03T02:00:00-05:00"]),
    ("*/30 * * * *", "America/New_York", "2024-11-03T05:00:00Z", ["2024-11-03T01:30:00-04:00", "2024-11-03T01:00:00-05:00", "2024-11-03T01:30:00-05:00", "2024-11-03T02:00:00-05:00"]),
    # starting inside the overlap: first copy (01:50 EDT) and second copy (01:10 EST)
    ("0 * * * *", "America/New_York", "2024-11-03T05:50:00Z", ["2024-11-03T01:00:00-05:00", "2024-11-03T02:00:00-05:00"]),
    ("30 1 * * *", "America/New_York", "2024-11-03T06:10:00Z", ["2024-11-04T01:30:00-05:00"]),
    ("*/30 * * * *", "America/New_York", "2024-11-03T06:10:00Z", ["2024-11-03T01:30:00-05:00"]),
    # London, Sydney (southern hemisphere), Lord Howe (30-minute shift), Sao Paulo (gap at midnight)
    ("30 1 * * *", "Europe/London", "2024-03-30T12:00:00Z", ["2024-03-31T02:00:00+01:00", "2024-04-01T01:30:00+01:00"]),
    ("30 1 * * *", "Europe/London", "2024-10-26T12:00:00Z", ["2024-10-27T01:30:00+01:00", "2024-10-28T01:30:00+00:00"]),
    ("30 2 * * *", "Australia/Sydney", "2024-10-05T00:00:00Z", ["2024-10-06T03:00:00+11:00", "2024-10-07T02:30:00+11:00"]),
    ("30 2 * * *", "Australia/Sydney", "2024-04-06T00:00:00Z", ["2024-04-07T02:30:00+11:00", "2024-04-08T02:30:00+10:00"]),
    ("15 2 * * *", "Australia/Lord_Howe", "2024-10-05T00:00:00Z", ["2024-10-06T02:30:00+11:00", "2024-10-07T02:15:00+11:00"]),
    ("45 1 * * *", "Australia/Lord_Howe", "2024-04-06T00:00:00Z", ["2024-04-07T01:45:00+11:00", "2024-04-08T01:45:00+10:30"]),
    ("*/15 * * * *", "Australia/Lord_Howe", "2024-04-06T14:20:00Z", ["2024-04-07T01:30:00+11:00", "2024-04-07T01:45:00+11:00", "2024-04-07T01:30:00+10:30", "2024-04-07T01:45:00+10:30", "2024-04-07T02:00:00+10:30"]),
    ("0 0 * * *", "America/Sao_Paulo", "2018-11-03T00:00:00Z", ["2018-11-03T00:00:00-03:00", "2018-11-04T01:00:00-02:00"]),
    ("30 5 * * *", "Asia/Kolkata", "2024-03-09T00:00:00Z", ["2024-03-10T05:30:00+05:30", "2024-03-11T05:30:00+05:30"]),
]  # fmt: skip


@pytest.mark.parametrize(("expr", "tz", "start", "expected"), DST_TABLE)
def test_dst_gaps_and_overlaps(expr: str, tz: str, start: str, expected: list[str]) -> None:
    got = fires(expr, tz, start, len(expected))
    assert [g.isoformat() for g in got] == expected


def test_issue_example_new_york_gap_fires_at_three() -> None:
    fire = parse("30 2 * * *", "America/New_York").next_after(utc("2024-03-10T00:00:00Z"))
    assert fire == datetime(2024, 3, 10, 3, 0, tzinfo=ZoneInfo("America/New_York"))
    assert fire.utcoffset() == timedelta(hours=-4)


def test_second_copy_of_repeated_hour_carries_fold() -> None:
    first, second = fires("0 * * * *", "America/New_York", "2024-11-03T04:30:00Z", 2)
    assert (first.fold, second.fold) == (0, 1)
    assert second.astimezone(UTC) - first.astimezone(UTC) == timedelta(hours=1)


DST_ZONES = ["America/New_York", "Europe/London", "Australia/Sydney", "Australia/Lord_Howe", "Europe/Berlin", "America/Sao_Paulo", "Asia/Kolkata"]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    zone=st.sampled_from(DST_ZONES),
    year=st.integers(2016, 2030),
)
def test_daily_fixed_time_fires_exactly_once_per_local_day(
    minute: int, hour: int, zone: str, year: int
) -> None:
    tz = ZoneInfo(zone)
    sched = parse(f"{minute} {hour} * * *", zone)
    start = datetime(year, 1, 1, tzinfo=tz)
    days: list[date] = []
    for fire in sched.iter_after(start):
        if fire.year > year:
            break
        days.append(fire.date())
    expected = [date(year, 1, 1) + timedelta(days=i) for i in range(len(days))]
    # Jan 1 itself is included unless the fire is exactly at midnight (start is exclusive).
    if (minute, hour) == (0, 0) and days and days[0] != date(year, 1, 1):
        expected = [d + timedelta(days=1) for d in expected]
    assert days == expected
    assert len(days) in (365, 366, 364, 365 - 1)


@settings(max_examples=40, deadline=None)
@given(
    minute=st.integers(0, 59),
    zone=st.sampled_from(DST_ZONES),
    year=st.integers(2016, 2030),
)
def test_hourly_follows_real_time_across_dst(minute: int, zone: str, year: int) -> None:
    sched = parse(f"{minute} * * * *", zone)
    start = datetime(year, 1, 1, tzinfo=UTC)
    prev: datetime | None = None
    for i, fire in enumerate(sched.iter_after(start)):
        if i > 9000:
            break
        if prev is not None:
            gap = fire.astimezone(UTC) - prev.astimezone(UTC)
            # one hour apart in real time, except around a 30-minute-shift zone's change
            assert gap in (timedelta(hours=1), timedelta(minutes=30), timedelta(minutes=90))
        prev = fire


# --------------------------------------------------------------------------- day rules oracle


def croner_day_matches(dom: str, dow: str, day: date) -> bool:
    """A literal transcription of croner 10.0.1's day test (src/date.ts) for one date."""
    import calendar

    mdays = calendar.monthrange(day.year, day.month)[1]
    and_logic = dow.startswith("+")
    dow = dow.lstrip("+")
    star_dom, star_dow = dom == "*", dow == "*"

    def weekday(d: int) -> int:
        return (date(day.year, day.month, d).weekday() + 1) % 7  # 0 = Sunday

    def nearest(n: int) -> int:
        if n > mdays:
            return -1
        wd = weekday(n)
        if wd == 0:
            return n - 2 if n == mdays else n + 1
        if wd == 6:
            return n + 2 if n == 1 else n - 1
        return n

    m = False
    if dom == "*":
        m = True
    elif dom.upper() == "LW":
        last = mdays - (2 if weekday(mdays) == 0 else 1 if weekday(mdays) == 6 else 0)
        m = day.day == last
    else:
        for part in dom.split(","):
            if part.upper() == "L":
                m |= day.day == mdays
            elif part.upper().endswith("W"):
                m |= nearest(int(part[:-1])) == day.day
            else:
                m |= int(part) == day.day
    if star_dow:
        return m
    occurrence = (day.day - 1) // 7 + 1
    is_last = day.day + 7 > mdays
    dm = False
    for part in dow.split(","):
        if "#" in part:
            wd, nth = part.split("#")
            ok = occurrence == int(nth) if nth != "L" else is_last
        elif part.upper().endswith("L"):
            wd, ok = part[:-1], is_last
        else:
            wd, ok = part, True
        dm |= ok and int(wd) % 7 == weekday(day.day)
    if and_logic or star_dom:
        return m and dm
    return m or dm


dom_parts = st.one_of(
    st.integers(1, 31).map(str),
    st.integers(1, 31).map(lambda d: f"{d}W"),
    st.just("L"),
)
dom_field = st.one_of(
    st.just("*"),
    st.just("LW"),
    st.lists(dom_parts, min_size=1, max_size=3).map(",".join),
)
dow_parts = st.one_of(
    st.integers(0, 7).map(str),
    st.tuples(st.integers(0, 7), st.sampled_from(["1", "2", "3", "4", "5", "L"])).map(
        lambda t: f"{t[0]}#{t[1]}"
    ),
    st.integers(0, 7).map(lambda d: f"{d}L"),
)
dow_field = st.one_of(
    st.just("*"),
    st.tuples(st.booleans(), st.lists(dow_parts, min_size=1, max_size=3)).map(
        lambda t: ("+" if t[0] else "") + ",".join(t[1])
    ),
)


@settings(max_examples=300, deadline=None)
@given(dom=dom_field, dow=dow_field, year=st.integers(1990, 2090), month=st.integers(1, 12))
def test_day_rules_match_a_transcription_of_croner(
    dom: str, dow: str, year: int, month: int
) -> None:
    expr = f"0 0 {dom} * {dow}"
    try:
        sched = parse(expr)
    except ScheduleError as exc:
        # only ever because no day can match (e.g. "30W" in every month is fine, "+5#5" with 31 ...)
        assert "never" in exc.reason
        return
    start = datetime(year, month, 1, tzinfo=UTC) - timedelta(seconds=1)
    end = (start + timedelta(days=400)).date()
    got = []
    for fire in sched.iter_after(start):
        if fire.date() >= end:
            break
        got.append(fire.date())
    expected = []
    d = start.date() + timedelta(days=1)
    while d < end:
        if croner_day_matches(dom, dow, d):
            expected.append(d)
        d += timedelta(days=1)
    assert got == expected


# --------------------------------------------------------------------------- semantics


def test_strictly_after_and_sub_second_inputs() -> None:
    s = parse("*/30 * * * * *")
    assert s.next_after(utc("2024-01-01T00:00:29.999999Z")) == utc("2024-01-01T00:00:30Z")
    assert s.next_after(utc("2024-01-01T00:00:30Z")) == utc("2024-01-01T00:01:00Z")
    assert s.next_after(utc("2024-01-01T00:00:30.000001Z")) == utc("2024-01-01T00:01:00Z")


def test_input_in_another_zone_is_converted() -> None:
    s = parse("0 9 * * *", "Europe/London")
    ny = datetime(2024, 6, 1, 3, 30, tzinfo=ZoneInfo("America/New_York"))  # 08:30 London
    assert s.next_after(ny).isoformat() == "2024-06-01T09:00:00+01:00"


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse("* * * * *").next_after(datetime(2024, 1, 1))


def test_no_fire_time_before_year_10000() -> None:
    with pytest.raises(ValueError, match="10000"):
        parse("0 0 1 1 *").next_after(datetime(9999, 6, 1, tzinfo=UTC))


def test_yearly_and_minutely_take_the_same_path() -> None:
    # Arithmetic, not scanning: the next Feb 29 that is a Monday, 27 years out.
    s = parse("0 0 29 2 +MON")
    assert s.next_after(utc("2017-01-01T00:00:00Z")) == utc("2044-02-29T00:00:00Z")


def test_tz_none_is_utc_and_attributes() -> None:
    s = parse("*/5 * * * *")
    assert s.tz is UTC
    assert s.tz_name == "UTC"
    assert not s.is_interval
    assert s.interval_seconds is None
    z = parse("0 9 * * *", "Europe/London")
    assert z.tz == ZoneInfo("Europe/London")
    assert z.tz_name == "Europe/London"


@pytest.mark.parametrize(
    ("expr", "seconds", "normal"),
    [
        ("every 15m", 900, "every 15m"),
        ("EVERY 1H", 3600, "every 1h"),
        ("  every   30 s ", 30, "every 30s"),
        ("every 2d", 172800, "every 2d"),
        ("every 1s", 1, "every 1s"),
        ("Every 007m", 420, "every 7m"),
    ],
)
def test_interval_forms(expr: str, seconds: int, normal: str) -> None:
    s = parse(expr)
    assert s.is_interval
    assert s.interval_seconds == seconds
    assert str(s) == normal


def test_interval_next_after_is_absolute_time() -> None:
    s = parse("every 1h", "America/New_York")
    start = utc("2024-11-03T05:30:00Z")  # 01:30 EDT
    nxt = s.next_after(start)
    assert nxt.astimezone(UTC) == utc("2024-11-03T06:30:00Z")
    assert nxt.isoformat() == "2024-11-03T01:30:00-05:00"  # the repeated hour, second copy
    assert list(zip(range(3), s.iter_after(start), strict=False))[2][1].astimezone(UTC) == utc(
        "2024-11-03T08:30:00Z"
    )


@pytest.mark.parametrize(
    ("expr", "normal"),
    [
        ("  */5  *  * * mon ", "*/5 * * * MON"),
        ("0 0 l * fri#l", "0 0 L * FRI#L"),
        ("@DAILY", "@daily"),
        (" @Hourly ", "@hourly"),
        ("0\t0\t1 jan *", "0 0 1 JAN *"),
        ("*/30 * * * * *", "*/30 * * * * *"),
    ],
)
def test_normalized_text_round_trips(expr: str, normal: str) -> None:
    s = parse(expr)
    assert str(s) == normal
    again = parse(str(s))
    assert again == s
    start = utc("2024-01-01T00:00:00Z")
    assert list(zip(range(5), again.iter_after(start), strict=False)) == list(
        zip(range(5), s.iter_after(start), strict=False)
    )


def test_equality_and_hash() -> None:
    assert parse("0 * * * *") == parse("0  *  *  *  *")
    assert parse("0 * * * *") != parse("0 * * * *", "Europe/London")
    assert len({parse("every 5m"), parse("EVERY 5M")}) == 1
    assert repr(parse("0 * * * *")) == "CronSchedule('0 * * * *', tz='UTC')"


def test_question_mark_is_an_alias_of_star() -> None:
    # croner 10.0.1 documents this; its code treats "0 0 ? * MON" as every day
    # (a bug); we follow the documentation, see docs/schedules.md.
    start = "2024-01-01T00:00:00Z"
    assert fires("0 0 ? * MON", None, start, 3) == fires("0 0 * * MON", None, start, 3)
    assert fires("0 0 1 * ?", None, start, 3) == fires("0 0 1 * *", None, start, 3)


def test_step_with_start_runs_to_the_end_of_the_field() -> None:
    # "a/n" (croner accepts it only with sloppyRanges; Vixie and croniter do)
    assert fires("0 0/10 * * *", None, "2024-01-01T00:00:00Z", 3) == [
        utc("2024-01-01T10:00:00Z"),
        utc("2024-01-01T20:00:00Z"),
        utc("2024-01-02T00:00:00Z"),
    ]


# --------------------------------------------------------------------------- errors

BAD = [
    ("", "empty expression", 0),
    ("   ", "empty expression", 0),
    ("every", 'expected a number after "every"', 5),
    ("every 5x", 'unknown unit "x", expected s, m, h or d', 7),
    ("every 0s", "interval must be at least 1", 6),
    ("every m", 'expected a number after "every"', 6),
    ("every 5", "missing unit after the number, expected s, m, h or d", 7),
    ("every 5 minutes", 'unknown unit "minutes", expected s, m, h or d', 8),
    ("every 15m now", 'unexpected "now" after the unit', 9),
    ("every -5m", 'expected a number after "every"', 6),
    ("every 5.5m", 'unexpected "." after the number', 7),
    ("every 99999d", "interval is longer than 3650 days", 6),
    ("* * * *", "expected 5 or 6 fields, found 4", 7),
    ("* * * * * * *", "expected 5 or 6 fields, found 7 (a year field is not supported)", 12),
    ("60 * * * *", "minute 60 is out of range 0-59", 0),
    ("* 24 * * *", "hour 24 is out of range 0-23", 2),
    ("* * 0 * *", "day-of-month 0 is out of range 1-31", 4),
    ("* * 32 * *", "day-of-month 32 is out of range 1-31", 4),
    ("* * * 0 *", "month 0 is out of range 1-12", 6),
    ("* * * 13 *", "month 13 is out of range 1-12", 6),
    ("* * * * 8", "day-of-week 8 is out of range 0-7", 8),
    ("60 * * * * *", "second 60 is out of range 0-59", 0),
    ("*/0 * * * *", "step must be at least 1", 2),
    ("*/61 * * * * *", "step 61 is larger than the second field (60 values)", 2),
    ("* */25 * * *", "step 25 is larger than the hour field (24 values)", 4),
    ("* * * * */8", "step 8 is larger than the day-of-week field (7 values)", 10),
    ("5-1 * * * *", "range 5-1 runs backwards", 0),
    ("1,,2 * * * *", "empty value in the minute list", 2),
    ("% * * * *", 'unexpected character "%"', 0),
    ("0 0 * * 1;2", 'unexpected character ";"', 9),
    ("* * * * MON#6", "nth weekday #6 must be 1-5 or L", 12),
    ("* * * * #2", "expected a weekday before the modifier", 8),
    ("* * * * L", '"L" needs a weekday before it, like 5L or FRI#L', 8),
    ("5L * * * *", '"L" is only allowed in the day-of-month and day-of-week fields', 1),
    ("* * 15W-20 * *", '"W" needs a single day before it, like 15W', 6),
    ("* * LW,15 * *", '"LW" must be the whole day-of-month field', 4),
    ("* * 5L * *", '"L" must stand alone in the day-of-month field', 5),
    ("* * * JANUARY *", 'unknown name "JANUARY" in the month field', 6),
    ("* * * * MONDAY", 'unknown name "MONDAY" in the day-of-week field', 8),
    ("* * * MON *", 'unknown name "MON" in the month field', 6),
    ("* * 5#2 * *", '"#" is only allowed in the day-of-week field', 5),
    ("* * * * 5W", '"W" is only allowed in the day-of-month field', 9),
    ("0 0 31 2 *", "day-of-month 31 never occurs in FEB", 4),
    ("0 0 30 2 *", "day-of-month 30 never occurs in FEB", 4),
    ("0 0 31 4,6,9,11 *", "day-of-month 31 never occurs in APR,JUN,SEP,NOV", 4),
    ("0 0 30W 2 *", "day-of-month 30W never occurs in FEB", 4),
    ("0 0 1 * +MON#5", "day-of-month 1 and day-of-week +MON#5 never coincide in any month", 4),
    ("0 0 29 2 +MON#3", "day-of-month 29 and day-of-week +MON#3 never coincide in FEB", 4),
    ("@reboot", '"@reboot" has no fire time', 0),
    ("@sometimes", 'unknown nickname "@sometimes"', 0),
    ("@daily *", 'nickname "@daily" must be the whole expression', 0),
    ("* * * * +", '"+" must be followed by a day-of-week', 8),
    ("+* * * * *", 'unexpected character "+"', 0),
    ("0 0 1-5/ * *", 'missing step after "/" in the day-of-month field', 8),
    ("* * * * 1-", 'invalid day-of-week "1-"', 8),
    ("1-2-3 * * * *", 'invalid minute "1-2-3"', 0),
]


@pytest.mark.parametrize(("expr", "reason", "position"), BAD)
def test_bad_expressions(expr: str, reason: str, position: int) -> None:
    with pytest.raises(ScheduleError) as info:
        parse(expr)
    err = info.value
    assert (err.reason, err.position, err.expression) == (reason, position, expr)
    assert str(err) == f"{expr!r} at position {position}: {reason}"


@pytest.mark.parametrize("zone", ["Mars/Base", "../../etc/passwd", "", "Europe/"])
def test_unknown_timezone(zone: str) -> None:
    with pytest.raises(ScheduleError, match="unknown timezone") as info:
        parse("0 * * * *", zone)
    assert info.value.position is None


def test_schedule_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse("bogus")


# --------------------------------------------------------------------------- helpers


def test_next_fire_times_cron_and_interval() -> None:
    now = utc("2024-03-09T12:00:00Z")
    got = next_fire_times("30 2 * * *", "America/New_York", 3, now)
    assert [g.isoformat() for g in got] == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:30:00-04:00",
        "2024-03-12T02:30:00-04:00",
    ]
    assert next_fire_times("every 10m", None, 2, now) == [
        utc("2024-03-09T12:10:00Z"),
        utc("2024-03-09T12:20:00Z"),
    ]
    assert next_fire_times("* * * * *", None, 0, now) == []
    with pytest.raises(ScheduleError):
        next_fire_times("every 5x", None, 3, now)


def test_next_fire_times_defaults_to_now() -> None:
    before = datetime.now(UTC)
    (first,) = next_fire_times("* * * * * *", None, 1)
    assert before < first <= datetime.now(UTC) + timedelta(seconds=2)


def test_format_fire_times_text() -> None:
    text = format_fire_times("30 2 * * *", "America/New_York", 2, utc("2024-03-09T12:00:00Z"))
    assert text == (
        "30 2 * * * (cron, America/New_York)\n"
        "  2024-03-10T03:00:00-04:00 EDT  (in 19h)\n"
        "  2024-03-11T02:30:00-04:00 EDT  (in 1d 18h)"
    )
    text = format_fire_times("every 90s", None, 1, utc("2024-03-09T12:00:00Z"))
    assert text == (
        "every 90s (interval, every 1m 30s from arming, UTC)\n"
        "  2024-03-09T12:01:30+00:00 UTC  (in 1m 30s)"
    )


def test_schedule_is_the_common_type() -> None:
    assert isinstance(parse("every 5m"), Schedule)
    assert isinstance(parse("0 * * * *"), Schedule)
