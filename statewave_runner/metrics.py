"""Prometheus metrics: counters, gauges and histograms, and their exposition.

Standard library only. A :class:`Registry` owns metric families; there is no
global default registry, so two runners in one process never mix their series.

Hot path: every labelled child owns its own lock, so an increment never waits
for another series or for a scrape. ``family.labels(...)`` finds an existing
child with one dict lookup and no lock; only the first use of a label set takes
the family's lock to create it.

Exposition: the Prometheus text format 0.0.4 (the default) and OpenMetrics
1.0.0 (when the scraper's ``Accept`` asks for it), optionally gzipped.
Counter families are registered under their full sample name
(``foo_total``); the 0.0.4 output names the family ``foo_total`` as the Node
runner's prom-client does, and OpenMetrics names it ``foo`` with the sample
``foo_total``, as that spec requires. Histogram ``le`` labels are rendered as
prom-client does in 0.0.4 (``le="1"``, ``le="0.5"``) so a Prometheus 2.x
series identity survives a switch from the Node runner, and in the canonical
form OpenMetrics requires (``le="1.0"``) there.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import sys
import threading
import time
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from types import TracebackType
from typing import ClassVar, Generic, Protocol, TypeVar

from .errors import StatewaveRunnerError

try:  # POSIX only; the collector degrades without it.
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "DEFAULT_BUCKETS",
    "Collector",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "MetricError",
    "MetricFamilySnapshot",
    "ProcessCollector",
    "PythonCollector",
    "Registry",
    "Sample",
    "accepts_gzip",
    "negotiate",
    "register_default_collectors",
]

log = logging.getLogger(__name__)

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_UNIT_RE = re.compile(r"^[a-zA-Z0-9_]+$")
_INF = math.inf


class MetricError(StatewaveRunnerError, ValueError):
    """A metric was defined or used wrongly (bad name, wrong labels, negative increment)."""


# --------------------------------------------------------------------------- formatting


def _fmt_text(value: float) -> str:
    """A sample value or ``le`` bound as prom-client prints it: ``1``, ``0.5``, ``+Inf``."""
    s = repr(value)
    if s[-2:] == ".0":
        return s[:-2]
    if s[-1] in "nf":  # inf, -inf, nan
        return _SPECIAL[s]
    return s


def _fmt_om(value: float) -> str:
    """A sample value for OpenMetrics: shortest round-trip repr, ``+Inf``/``NaN`` spelled out."""
    s = repr(value)
    if s[-1] in "nf":
        return _SPECIAL[s]
    return s


def _fmt_canonical(value: float) -> str:
    """The OpenMetrics canonical number (Go ``%g`` plus ``.0``) required for ``le``.

    Python's repr already matches it except between 1e6 and 1e16, where Go
    switches to exponent notation and Python does not.
    """
    s = _fmt_om(float(value))
    if "e" not in s and s[-1] not in "fN" and abs(value) >= 1e6:
        sign = "-" if s[0] == "-" else ""
        intpart, _, frac = s.lstrip("-").partition(".")
        digits = (intpart + frac).rstrip("0") or "0"
        exponent = len(intpart) - 1
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e+{exponent:02d}"
    return s


_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_help_om(text: str) -> str:
    return _escape_help_text(text).replace('"', '\\"')


def _label_str(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in pairs)


def _clean_label_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    # Lone surrogates cannot be encoded as UTF-8; replace them once, here, so a
    # scrape never fails on a bad label value.
    return text.encode("utf-8", "replace").decode("utf-8")


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample as exposed: full sample name (``foo_total``, ``foo_bucket``), labels, value."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class MetricFamilySnapshot:
    """A family at one instant. ``name`` is the OpenMetrics family name (counters without
    ``_total``); ``type`` is ``counter``, ``gauge`` or ``histogram``."""

    name: str
    type: str
    help: str
    samples: tuple[Sample, ...]
    unit: str = ""


class Collector(Protocol):
    """Produces families at scrape time (process and Python runtime metrics)."""

    def family_names(self) -> Iterable[tuple[str, str]]:
        """``(family name, type)`` of every family :meth:`collect` may produce."""
        ...

    def collect(self) -> Iterable[MetricFamilySnapshot]:
        """The current families; must not raise for a transient read failure."""
        ...


# --------------------------------------------------------------------------- children


class _Timer:
    """Context manager observing elapsed seconds into a histogram child."""

    __slots__ = ("_child", "_start")

    def __init__(self, child: HistogramChild):
        self._child = child
        self._start = 0.0

    def __enter__(self) -> _Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._child.observe(time.perf_counter() - self._start)


class CounterChild:
    """One counter series. ``inc`` takes only this series' own lock."""

    __slots__ = ("_fn", "_lock", "_prefix", "_value", "labels")

    def __init__(self, labels: tuple[tuple[str, str], ...], prefix: str):
        self.labels = labels
        self._prefix = prefix
        self._lock = threading.Lock()
        self._value = 0.0
        self._fn: Callable[[], float] | None = None

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        if not amount >= 0:  # also rejects NaN
            raise MetricError(f"counters only go up: inc({amount!r})")
        with self._lock:
            self._value += amount

    def set_function(self, fn: Callable[[], float] | None) -> None:
        """Read the total from ``fn()`` at scrape time (a total kept elsewhere, e.g. CPU time)."""
        self._fn = fn

    def get(self) -> float | None:
        """The current total; ``None`` when a scrape-time function failed."""
        fn = self._fn
        if fn is None:
            return self._value
        try:
            value = float(fn())
        except Exception:
            log.warning("metrics: counter callback failed", exc_info=True)
            return None
        return value if value >= 0 else None


class GaugeChild:
    """One gauge series."""

    __slots__ = ("_fn", "_lock", "_prefix", "_value", "labels")

    def __init__(self, labels: tuple[tuple[str, str], ...], prefix: str):
        self.labels = labels
        self._prefix = prefix
        self._lock = threading.Lock()
        self._value = 0.0
        self._fn: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        """Set the value."""
        value = float(value)
        with self._lock:
            self._value = value

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (may be negative)."""
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount``."""
        with self._lock:
            self._value -= amount

    def set_to_current_time(self) -> None:
        """Set to the current Unix time in seconds."""
        self.set(time.time())

    def set_function(self, fn: Callable[[], float] | None) -> None:
        """Compute the value with ``fn()`` at every scrape (``None`` goes back to stored values).

        If ``fn`` raises, the sample shows ``NaN`` and a warning is logged; the
        scrape itself never fails.
        """
        self._fn = fn

    def get(self) -> float:
        """The current value (``fn()`` for a function gauge)."""
        fn = self._fn
        if fn is None:
            return self._value
        try:
            return float(fn())
        except Exception:
            log.warning("metrics: gauge callback failed", exc_info=True)
            return math.nan


class HistogramChild:
    """One histogram series: per-bucket counts and a sum, under this series' own lock."""

    __slots__ = ("_counts", "_lock", "_prefixes_om", "_prefixes_text", "_sum", "_upper", "labels")

    def __init__(
        self,
        labels: tuple[tuple[str, str], ...],
        upper: tuple[float, ...],
        prefixes_text: tuple[str, ...],
        prefixes_om: tuple[str, ...],
    ):
        self.labels = labels
        self._upper = upper
        self._prefixes_text = prefixes_text
        self._prefixes_om = prefixes_om
        self._lock = threading.Lock()
        # Non-cumulative: slot i counts values in (upper[i-1], upper[i]]; the last slot is +Inf.
        self._counts = [0] * (len(upper) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation (>= 0).

        Negative values and NaN are refused: OpenMetrics requires a histogram's
        ``_sum`` to behave as a counter. Measure durations with a monotonic clock.
        """
        if not value >= 0:
            raise MetricError(f"histograms observe values >= 0, got {value!r}")
        i = bisect_left(self._upper, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def time(self) -> _Timer:
        """``with child.time(): ...`` observes the block's wall-clock seconds."""
        return _Timer(self)

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (last one is ``+Inf`` = count) and the sum, consistently."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        acc = 0
        for i, c in enumerate(counts):
            acc += c
            counts[i] = acc
        return counts, total


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


# --------------------------------------------------------------------------- families


class _Family(ABC, Generic[ChildT]):
    type: ClassVar[str]

    def __init__(self, name: str, help: str, labelnames: Sequence[str], unit: str):
        self.name = name
        """The name as registered (counters: with ``_total``)."""
        self.help = help
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self.unit = unit
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], ChildT] = {}
        # Copy-on-write tuple of children in creation order: scrapes iterate it
        # without locking while other threads add series.
        self._ordered: tuple[ChildT, ...] = ()
        self._default: ChildT | None = None
        self._help_text = _escape_help_text(help)
        self._help_om = _escape_help_om(help)
        if not self.labelnames:
            self._default = self._make(())

    # ---- names
    @property
    def om_name(self) -> str:
        """The OpenMetrics family name."""
        return self.name

    @property
    def text_name(self) -> str:
        """The family name on 0.0.4 ``# HELP``/``# TYPE`` lines."""
        return self.name

    # ---- children
    def labels(self, *values: object, **kwargs: object) -> ChildT:
        """The child for these label values (positional, or by name), created on first use."""
        if kwargs:
            if values:
                raise MetricError(
                    f"{self.name}: pass label values by position or by name, not both"
                )
            values = self._values_from_kwargs(kwargs)
        child = self._children.get(values)  # type: ignore[arg-type]
        if child is not None:
            return child
        return self._make(values)

    def _values_from_kwargs(self, kwargs: Mapping[str, object]) -> tuple[object, ...]:
        if set(kwargs) != set(self.labelnames):
            raise MetricError(
                f"{self.name}: expected labels {list(self.labelnames)}, got {sorted(kwargs)}"
            )
        return tuple(kwargs[n] for n in self.labelnames)

    def _make(self, values: tuple[object, ...]) -> ChildT:
        if len(values) != len(self.labelnames):
            if not self.labelnames:
                raise MetricError(f"{self.name} has no labels; use it directly")
            raise MetricError(
                f"{self.name}: expected {len(self.labelnames)} label values "
                f"{list(self.labelnames)}, got {len(values)}"
            )
        key = tuple(_clean_label_value(v) for v in values)
        child = self._children.get(key)  # e.g. labels(kind, name, 200) for "200": no lock
        if child is not None:
            return child
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._new_child(tuple(zip(self.labelnames, key, strict=True)))
                self._children[key] = child
                self._ordered = tuple(self._children.values())
            return child

    def remove(self, *values: object) -> None:
        """Drop one child (a source removed from the config). Missing children are ignored."""
        if not self.labelnames:
            raise MetricError(f"{self.name} has no labels; there is no child to remove")
        key = tuple(_clean_label_value(v) for v in values)
        with self._lock:
            if self._children.pop(key, None) is not None:
                self._ordered = tuple(self._children.values())

    def clear(self) -> None:
        """Drop every child of a labelled family."""
        if not self.labelnames:
            raise MetricError(f"{self.name} has no labels to clear")
        with self._lock:
            self._children.clear()
            self._ordered = ()

    def children(self) -> tuple[ChildT, ...]:
        """Every child, in creation order."""
        return self._ordered

    def _unlabelled(self) -> ChildT:
        child = self._default
        if child is None:
            raise MetricError(f"{self.name} has labels {list(self.labelnames)}; call .labels()")
        return child

    # ---- subclass API
    @abstractmethod
    def _new_child(self, labels: tuple[tuple[str, str], ...]) -> ChildT:
        """Implemented by each metric type."""

    @abstractmethod
    def render_text(self, out: list[str]) -> None:
        """Implemented by each metric type."""

    @abstractmethod
    def render_om(self, out: list[str]) -> None:
        """Implemented by each metric type."""

    @abstractmethod
    def snapshot(self) -> MetricFamilySnapshot:
        """Implemented by each metric type."""

    def _om_header(self) -> str:
        head = f"# TYPE {self.om_name} {self.type}\n"
        if self.unit:
            head += f"# UNIT {self.om_name} {self.unit}\n"
        return head + f"# HELP {self.om_name} {self._help_om}\n"

    def _text_header(self) -> str:
        return f"# HELP {self.text_name} {self._help_text}\n# TYPE {self.text_name} {self.type}\n"


def _prefix(sample_name: str, labels: tuple[tuple[str, str], ...]) -> str:
    return f"{sample_name}{{{_label_str(labels)}}} " if labels else f"{sample_name} "


class Counter(_Family[CounterChild]):
    """A monotonically increasing total. Register it as ``foo_total`` (or ``foo``)."""

    type = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str], unit: str):
        self._base = name[:-6] if name.endswith("_total") else name
        super().__init__(self._base + "_total", help, labelnames, unit)

    @property
    def om_name(self) -> str:
        return self._base

    def _new_child(self, labels: tuple[tuple[str, str], ...]) -> CounterChild:
        return CounterChild(labels, _prefix(self.name, labels))

    def inc(self, amount: float = 1.0) -> None:
        """Increment an unlabelled counter."""
        self._unlabelled().inc(amount)

    def set_function(self, fn: Callable[[], float] | None) -> None:
        """Unlabelled counter whose total is read from ``fn()`` at scrape time."""
        self._unlabelled().set_function(fn)

    def get(self) -> float | None:
        """The total of an unlabelled counter."""
        return self._unlabelled().get()

    def render_text(self, out: list[str]) -> None:
        out.append(self._text_header())
        self._render(out, _fmt_text)

    def render_om(self, out: list[str]) -> None:
        out.append(self._om_header())
        self._render(out, _fmt_om)

    def _render(self, out: list[str], fmt: Callable[[float], str]) -> None:
        for child in self._ordered:
            if child._fn is None:
                out.append(f"{child._prefix}{fmt(child._value)}\n")
            else:
                value = child.get()
                if value is not None:  # a NaN total would be invalid: leave the sample out
                    out.append(f"{child._prefix}{fmt(value)}\n")

    def snapshot(self) -> MetricFamilySnapshot:
        samples = []
        for child in self._ordered:
            value = child.get()
            if value is not None:
                samples.append(Sample(self.name, dict(child.labels), value))
        return MetricFamilySnapshot(self._base, "counter", self.help, tuple(samples), self.unit)


class Gauge(_Family[GaugeChild]):
    """A value that goes up and down, or is computed at scrape time with ``set_function``."""

    type = "gauge"

    def _new_child(self, labels: tuple[tuple[str, str], ...]) -> GaugeChild:
        return GaugeChild(labels, _prefix(self.name, labels))

    def set(self, value: float) -> None:
        """Set an unlabelled gauge."""
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        """Add to an unlabelled gauge."""
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        """Subtract from an unlabelled gauge."""
        self._unlabelled().dec(amount)

    def set_to_current_time(self) -> None:
        """Set an unlabelled gauge to the current Unix time."""
        self._unlabelled().set_to_current_time()

    def set_function(self, fn: Callable[[], float] | None) -> None:
        """Compute an unlabelled gauge with ``fn()`` at scrape time."""
        self._unlabelled().set_function(fn)

    def get(self) -> float:
        """The value of an unlabelled gauge."""
        return self._unlabelled().get()

    def render_text(self, out: list[str]) -> None:
        out.append(self._text_header())
        for child in self._ordered:
            value = child._value if child._fn is None else child.get()
            out.append(f"{child._prefix}{_fmt_text(value)}\n")

    def render_om(self, out: list[str]) -> None:
        out.append(self._om_header())
        for child in self._ordered:
            value = child._value if child._fn is None else child.get()
            out.append(f"{child._prefix}{_fmt_om(value)}\n")

    def snapshot(self) -> MetricFamilySnapshot:
        samples = tuple(Sample(self.name, dict(c.labels), c.get()) for c in self._ordered)
        return MetricFamilySnapshot(self.name, "gauge", self.help, samples, self.unit)


class Histogram(_Family[HistogramChild]):
    """Observations counted in cumulative ``le`` buckets, with ``_sum`` and ``_count``."""

    type = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str],
        unit: str,
        buckets: Sequence[float],
    ):
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == _INF:
            bounds.pop()
        if not bounds:
            raise MetricError(f"{name}: a histogram needs at least one finite bucket")
        if any(math.isnan(b) or b == -_INF for b in bounds) or any(
            a >= b for a, b in pairwise(bounds)
        ):
            raise MetricError(f"{name}: buckets must be finite and strictly increasing: {buckets}")
        if "le" in labelnames:
            raise MetricError(f"{name}: 'le' is reserved for histogram buckets")
        self.upper_bounds: tuple[float, ...] = tuple(bounds)
        self._le_text = (*(_fmt_text(b) for b in bounds), "+Inf")
        self._le_om = (*(_fmt_canonical(b) for b in bounds), "+Inf")
        super().__init__(name, help, labelnames, unit)

    def _new_child(self, labels: tuple[tuple[str, str], ...]) -> HistogramChild:
        base = _label_str(labels)
        sep = "," if base else ""
        bucket = self.name + "_bucket"
        text = [f'{bucket}{{{base}{sep}le="{le}"}} ' for le in self._le_text]
        om = [f'{bucket}{{{base}{sep}le="{le}"}} ' for le in self._le_om]
        # The last two prefixes are _sum and _count, shared by both formats.
        tail = (_prefix(self.name + "_sum", labels), _prefix(self.name + "_count", labels))
        return HistogramChild(labels, self.upper_bounds, (*text, *tail), (*om, *tail))

    def observe(self, value: float) -> None:
        """Observe into an unlabelled histogram."""
        self._unlabelled().observe(value)

    def time(self) -> _Timer:
        """Time a block into an unlabelled histogram."""
        return self._unlabelled().time()

    def render_text(self, out: list[str]) -> None:
        out.append(self._text_header())
        nb = len(self._le_text)
        for child in self._ordered:
            counts, total = child.snapshot()
            p = child._prefixes_text
            for i in range(nb):
                out.append(f"{p[i]}{counts[i]}\n")
            # prom-client order: buckets, _sum, _count.
            out.append(f"{p[nb]}{_fmt_text(total)}\n{p[nb + 1]}{counts[-1]}\n")

    def render_om(self, out: list[str]) -> None:
        out.append(self._om_header())
        nb = len(self._le_om)
        for child in self._ordered:
            counts, total = child.snapshot()
            p = child._prefixes_om
            for i in range(nb):
                out.append(f"{p[i]}{counts[i]}\n")
            out.append(f"{p[nb + 1]}{counts[-1]}\n{p[nb]}{_fmt_om(total)}\n")

    def snapshot(self) -> MetricFamilySnapshot:
        samples: list[Sample] = []
        for child in self._ordered:
            counts, total = child.snapshot()
            base = dict(child.labels)
            for le, c in zip(self._le_om, counts, strict=True):
                samples.append(Sample(self.name + "_bucket", {**base, "le": le}, float(c)))
            samples.append(Sample(self.name + "_count", base, float(counts[-1])))
            samples.append(Sample(self.name + "_sum", base, total))
        return MetricFamilySnapshot(self.name, "histogram", self.help, tuple(samples), self.unit)


# --------------------------------------------------------------------------- registry


class _CollectorEntry:
    __slots__ = ("collector",)

    def __init__(self, collector: Collector):
        self.collector = collector

    def render_text(self, out: list[str]) -> None:
        for fam in _safe_collect(self.collector):
            text_name = fam.name + "_total" if fam.type == "counter" else fam.name
            out.append(f"# HELP {text_name} {_escape_help_text(fam.help)}\n")
            out.append(f"# TYPE {text_name} {fam.type}\n")
            for s in fam.samples:
                out.append(_prefix(s.name, tuple(s.labels.items())) + _fmt_text(s.value) + "\n")

    def render_om(self, out: list[str]) -> None:
        for fam in _safe_collect(self.collector):
            out.append(f"# TYPE {fam.name} {fam.type}\n")
            if fam.unit:
                out.append(f"# UNIT {fam.name} {fam.unit}\n")
            out.append(f"# HELP {fam.name} {_escape_help_om(fam.help)}\n")
            for s in fam.samples:
                out.append(_prefix(s.name, tuple(s.labels.items())) + _fmt_om(s.value) + "\n")


def _safe_collect(collector: Collector) -> list[MetricFamilySnapshot]:
    try:
        return list(collector.collect())
    except Exception:
        log.warning("metrics: collector %s failed", type(collector).__name__, exc_info=True)
        return []


def _reserved_names(name: str, type_: str) -> tuple[str, ...]:
    if type_ == "counter":
        return (name, name + "_total", name + "_created")
    if type_ == "histogram":
        return (name, name + "_bucket", name + "_count", name + "_sum", name + "_created")
    return (name,)


class Registry:
    """Owns metric families and renders them. Thread-safe; no global instance exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: tuple[Counter | Gauge | Histogram | _CollectorEntry, ...] = ()
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        self._reserved: set[str] = set()
        self._hooks: tuple[Callable[[], None], ...] = ()

    # ---- definition
    def counter(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, unit: str = ""
    ) -> Counter:
        """Define a counter. ``foo_total`` and ``foo`` both expose the sample ``foo_total``."""
        self._check(name, labelnames, unit, help)
        family = Counter(name, help, labelnames, unit)
        self._add(family, _reserved_names(family.om_name, "counter"))
        return family

    def gauge(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, unit: str = ""
    ) -> Gauge:
        """Define a gauge."""
        self._check(name, labelnames, unit, help)
        family = Gauge(name, help, labelnames, unit)
        self._add(family, _reserved_names(name, "gauge"))
        return family

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        *,
        unit: str = "",
    ) -> Histogram:
        """Define a histogram with these upper bounds (``+Inf`` is added)."""
        self._check(name, labelnames, unit, help)
        family = Histogram(name, help, labelnames, unit, buckets)
        self._add(family, _reserved_names(name, "histogram"))
        return family

    def register_collector(self, collector: Collector) -> None:
        """Add a collector whose families are produced at every scrape."""
        reserved: list[str] = []
        for name, type_ in collector.family_names():
            if not _METRIC_NAME_RE.match(name):
                raise MetricError(f"invalid metric name {name!r}")
            reserved.extend(_reserved_names(name, type_))
        self._add(_CollectorEntry(collector), tuple(reserved))

    def add_collect_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` before every scrape, e.g. to set several gauges from one query.

        An exception in a hook is logged and the scrape goes on with the
        values the gauges already had.
        """
        with self._lock:
            self._hooks = (*self._hooks, hook)

    def _check(self, name: str, labelnames: Sequence[str], unit: str, help: str) -> None:
        if not _METRIC_NAME_RE.match(name):
            raise MetricError(f"invalid metric name {name!r}")
        if isinstance(labelnames, str):
            raise MetricError(f"{name}: labelnames must be a sequence of names, not a string")
        seen: set[str] = set()
        for label in labelnames:
            if not _LABEL_NAME_RE.match(label) or label.startswith("__"):
                raise MetricError(f"{name}: invalid label name {label!r}")
            if label in seen:
                raise MetricError(f"{name}: duplicate label name {label!r}")
            seen.add(label)
        if unit:
            base = name[:-6] if name.endswith("_total") else name
            if not _UNIT_RE.match(unit) or not base.endswith("_" + unit):
                raise MetricError(f"{name}: the family name must end with '_{unit}'")
        if not isinstance(help, str):
            raise MetricError(f"{name}: help must be a string")

    def _add(
        self,
        entry: Counter | Gauge | Histogram | _CollectorEntry,
        reserved: tuple[str, ...],
    ) -> None:
        with self._lock:
            clash = sorted(set(reserved) & self._reserved)
            if clash:
                raise MetricError(f"metric name clash: {', '.join(clash)} already registered")
            self._reserved.update(reserved)
            if not isinstance(entry, _CollectorEntry):
                self._families[entry.name] = entry
            self._entries = (*self._entries, entry)

    def get(self, name: str) -> Counter | Gauge | Histogram | None:
        """A family by its registered name (counters: ``foo_total``)."""
        return self._families.get(name)

    # ---- reading
    def _run_hooks(self) -> None:
        for hook in self._hooks:
            try:
                hook()
            except Exception:
                log.warning("metrics: collect hook failed", exc_info=True)

    def collect(self) -> list[MetricFamilySnapshot]:
        """Every family with its samples, as plain values (tests, ``describe()``)."""
        self._run_hooks()
        out: list[MetricFamilySnapshot] = []
        for entry in self._entries:
            if isinstance(entry, _CollectorEntry):
                out.extend(_safe_collect(entry.collector))
            else:
                out.append(entry.snapshot())
        return out

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of one sample (``foo_total``, ``foo_bucket`` with ``le``...) or ``None``."""
        want = dict(labels or {})
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and dict(sample.labels) == want:
                    return sample.value
        return None

    def expose_text(self) -> bytes:
        """The Prometheus text format 0.0.4."""
        self._run_hooks()
        out: list[str] = []
        for entry in self._entries:
            entry.render_text(out)
        return "".join(out).encode("utf-8")

    def expose_openmetrics(self) -> bytes:
        """OpenMetrics 1.0.0 text, ending with ``# EOF``."""
        self._run_hooks()
        out: list[str] = []
        for entry in self._entries:
            entry.render_om(out)
        out.append("# EOF\n")
        return "".join(out).encode("utf-8")

    def render(
        self, accept: str | None = None, accept_encoding: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The scrape body and its headers, negotiated from ``Accept``/``Accept-Encoding``.

        Returns ``(body, headers)``; headers hold ``Content-Type``, ``Vary`` and,
        when gzipped, ``Content-Encoding``.
        """
        if negotiate(accept) == "openmetrics":
            body, ctype = self.expose_openmetrics(), CONTENT_TYPE_OPENMETRICS
        else:
            body, ctype = self.expose_text(), CONTENT_TYPE_TEXT
        headers = {"Content-Type": ctype, "Vary": "Accept, Accept-Encoding"}
        if accepts_gzip(accept_encoding):
            import gzip  # only scrapes that ask for it pay for the module

            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return body, headers


# --------------------------------------------------------------------------- negotiation


def _parse_header_list(value: str) -> list[tuple[str, dict[str, str], float, int]]:
    """``Accept``-style list -> ``(token, params, q, position)``; malformed q counts as 0."""
    items = []
    for pos, part in enumerate(value.split(",")):
        token, *raw_params = (p.strip() for p in part.split(";"))
        if not token:
            continue
        params: dict[str, str] = {}
        for raw in raw_params:
            key, _, val = raw.partition("=")
            params[key.strip().lower()] = val.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        if not 0 <= q <= 1:
            q = 0.0
        items.append((token.lower(), params, q, pos))
    return items


def negotiate(accept: str | None) -> str:
    """``"openmetrics"`` if ``Accept`` prefers OpenMetrics 1.0.0 (or 0.0.1), else ``"text"``.

    The highest q wins; on a tie the earlier entry wins. Anything else (no
    header, ``*/*``, a type we do not speak) gets the 0.0.4 text format rather
    than a 406, because every Prometheus-compatible scraper reads it.
    """
    if not accept:
        return "text"
    best_q = 0.0
    best = "text"
    for media, params, q, _pos in _parse_header_list(accept):
        if q <= 0 or q <= best_q:
            continue
        if media == "application/openmetrics-text":
            if params.get("version", "1.0.0") in ("1.0.0", "0.0.1"):
                best, best_q = "openmetrics", q
        elif media in ("text/plain", "text/*", "*/*"):
            best, best_q = "text", q
    return best


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True if ``Accept-Encoding`` allows gzip (``gzip``, ``x-gzip`` or ``*`` with q > 0)."""
    if not accept_encoding:
        return False
    explicit: float | None = None
    star: float | None = None
    for coding, _params, q, _pos in _parse_header_list(accept_encoding):
        if coding in ("gzip", "x-gzip"):
            explicit = q if explicit is None else max(explicit, q)
        elif coding == "*":
            star = q
    if explicit is not None:
        return explicit > 0
    return star is not None and star > 0


# --------------------------------------------------------------------------- process metrics


def _read_boot_time(proc: str) -> float | None:
    try:
        with open(os.path.join(proc, "stat"), "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


class ProcessCollector:
    """``process_*`` metrics with the names every Prometheus client library uses.

    Read from ``/proc/self`` (Linux) and ``resource``; what a platform cannot
    tell is left out rather than guessed.
    """

    def __init__(self, proc: str = "/proc", pid: str = "self"):
        self._proc = proc
        self._dir = os.path.join(proc, pid)
        try:
            self._ticks = float(os.sysconf("SC_CLK_TCK"))
        except (ValueError, OSError, AttributeError):
            self._ticks = 100.0
        self._pagesize = resource.getpagesize() if resource is not None else 4096
        self._btime = _read_boot_time(proc)

    def family_names(self) -> Iterable[tuple[str, str]]:
        return (
            ("process_cpu_seconds", "counter"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
        )

    def collect(self) -> Iterable[MetricFamilySnapshot]:
        cpu: float | None = None
        vms = rss = start = None
        try:
            with open(os.path.join(self._dir, "stat"), "rb") as f:
                raw = f.read()
            # The command name may hold spaces and parentheses: split after the last ')'.
            fields = raw[raw.rindex(b")") + 2 :].split()
            cpu = (float(fields[11]) + float(fields[12])) / self._ticks
            vms = float(fields[20])
            rss = float(fields[21]) * self._pagesize
            if self._btime is not None:
                start = self._btime + float(fields[19]) / self._ticks
        except (OSError, ValueError, IndexError):
            if resource is not None:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                cpu = usage.ru_utime + usage.ru_stime
        open_fds: float | None
        try:
            open_fds = float(len(os.listdir(os.path.join(self._dir, "fd"))))
        except OSError:
            open_fds = None
        max_fds: float | None = None
        if resource is not None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_fds = float(soft) if soft != resource.RLIM_INFINITY else None

        def one(name: str, type_: str, help: str, value: float | None, unit: str = "") -> None:
            sample_name = name + "_total" if type_ == "counter" else name
            samples = (Sample(sample_name, {}, value),) if value is not None else ()
            result.append(MetricFamilySnapshot(name, type_, help, samples, unit))

        result: list[MetricFamilySnapshot] = []
        one(
            "process_cpu_seconds",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
            "seconds",
        )
        one(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vms,
            "bytes",
        )
        one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
            "bytes",
        )
        one(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
            "seconds",
        )
        one("process_open_fds", "gauge", "Number of open file descriptors.", open_fds)
        one("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds)
        return result


_IMPLEMENTATIONS = {
    "cpython": "CPython",
    "pypy": "PyPy",
    "ironpython": "IronPython",
    "jython": "Jython",
}


class PythonCollector:
    """``python_info`` and the ``python_gc_*`` counters, named as prometheus_client names them."""

    def __init__(self) -> None:
        # What platform.python_version() and python_implementation() return,
        # read from sys: the platform module is ~100 KB that nothing else needs.
        version = sys.version.split()[0]
        major, minor, patch = [*version.split("."), "0", "0"][:3]
        self._info = {
            "implementation": _IMPLEMENTATIONS.get(
                sys.implementation.name, sys.implementation.name
            ),
            "major": major,
            "minor": minor,
            "patchlevel": patch,
            "version": version,
        }

    def family_names(self) -> Iterable[tuple[str, str]]:
        return (
            ("python_info", "gauge"),
            ("python_gc_objects_collected", "counter"),
            ("python_gc_objects_uncollectable", "counter"),
            ("python_gc_collections", "counter"),
        )

    def collect(self) -> Iterable[MetricFamilySnapshot]:
        result = [
            MetricFamilySnapshot(
                "python_info",
                "gauge",
                "Python platform information",
                (Sample("python_info", self._info, 1.0),),
            )
        ]
        stats = gc.get_stats() if hasattr(gc, "get_stats") else []
        for name, key, help in (
            ("python_gc_objects_collected", "collected", "Objects collected during gc"),
            (
                "python_gc_objects_uncollectable",
                "uncollectable",
                "Uncollectable objects found during GC",
            ),
            (
                "python_gc_collections",
                "collections",
                "Number of times this generation was collected",
            ),
        ):
            samples = tuple(
                Sample(name + "_total", {"generation": str(gen)}, float(s[key]))
                for gen, s in enumerate(stats)
            )
            result.append(MetricFamilySnapshot(name, "counter", help, samples))
        return result


def register_default_collectors(registry: Registry) -> None:
    """Add the process and Python runtime metrics to ``registry``."""
    registry.register_collector(ProcessCollector())
    registry.register_collector(PythonCollector())
