"""Latest samples per collector plus a bounded history, so rates, quantiles and diagnose
work without Prometheus.

Memory is capped by construction: each series' history is a fixed-size ring of two float
arrays (16 bytes a point), every metric name has a cardinality cap (extra series are dropped
and counted), and events live in a bounded deque.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TypeVar

from agent.samples import CollectResult, Event, Family, Labels, Sample

SeriesKey = tuple[str, Labels]
MAX_DROPPED_NAMES = 100
OTHER_NAMES = "_other"
F = TypeVar("F")
CUMULATIVE_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


class SeriesRing:
    """Fixed-capacity ring of (timestamp, value) points for one series."""

    __slots__ = ("_changed", "_count", "_start", "_times", "_values", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._times = array("d", bytes(8 * capacity))
        self._values = array("d", bytes(8 * capacity))
        self._start = 0
        self._count = 0
        # When the value last differed from the point before: a window that starts after it
        # holds one flat value (most histogram buckets of an idle pod), with no increase.
        self._changed = -math.inf

    def append(self, timestamp: float, value: float) -> None:
        if self._count and value != self._values[(self._start + self._count - 1) % self.capacity]:
            self._changed = timestamp
        index = (self._start + self._count) % self.capacity
        self._times[index] = timestamp
        self._values[index] = value
        if self._count < self.capacity:
            self._count += 1
        else:
            self._start = (self._start + 1) % self.capacity

    def __len__(self) -> int:
        return self._count

    def _first_at_or_after(self, moment: float, strictly: bool = False) -> int:
        """Logical index of the first point at (or after) `moment`: points are appended in
        time order, so a window is found by bisection instead of a scan of the whole ring."""
        times, start, capacity = self._times, self._start, self.capacity
        low, high = 0, self._count
        while low < high:
            middle = (low + high) // 2
            at = times[(start + middle) % capacity]
            if at < moment or (strictly and at == moment):
                low = middle + 1
            else:
                high = middle
        return low

    def points(self, since: float = -math.inf, until: float = math.inf) -> list[tuple[float, float]]:
        first = 0 if since == -math.inf else self._first_at_or_after(since)
        end = self._count if until == math.inf else self._first_at_or_after(until, strictly=True)
        times, values, start, capacity = self._times, self._values, self._start, self.capacity
        out = []
        for i in range(first, end):
            index = (start + i) % capacity
            out.append((times[index], values[index]))
        return out

    def increase(self, since: float, until: float) -> tuple[int, float]:
        """(points in the window, the counter's increase over them): counter_increase of
        points(since, until) without building the list (histogram windows read hundreds)."""
        first = self._first_at_or_after(since)
        end = self._first_at_or_after(until, strictly=True)
        if self._changed < since:
            return max(0, end - first), 0.0
        values, start, capacity = self._values, self._start, self.capacity
        total = 0.0
        previous = 0.0
        for i in range(first, end):
            current = values[(start + i) % capacity]
            if i > first:
                total += current - previous if current >= previous else current
            previous = current
        return max(0, end - first), total

    def last(self) -> tuple[float, float] | None:
        if not self._count:
            return None
        index = (self._start + self._count - 1) % self.capacity
        return self._times[index], self._values[index]

    def newest_time(self) -> float:
        last = self.last()
        return last[0] if last else -math.inf


@functools.lru_cache(maxsize=4096)
def _le_bound(labels: tuple[tuple[str, str], ...]) -> float | None:
    """A bucket series' upper bound, parsed once per label set."""
    for key, value in labels:
        if key == "le":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def counter_increase(points: list[tuple[float, float]]) -> float:
    """Increase over the points, Prometheus-style: a drop is a reset, not a negative step."""
    total = 0.0
    for (_, previous), (_, current) in pairwise(points):
        total += current - previous if current >= previous else current
    return total


def counter_rate(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2:
        return None
    elapsed = points[-1][0] - points[0][0]
    if elapsed <= 0:
        return None
    return counter_increase(points) / elapsed


def histogram_quantile(quantile: float, buckets: list[tuple[float, float]]) -> float | None:
    """PromQL's histogram_quantile over (upper bound, cumulative count) pairs."""
    if not buckets:
        return None
    buckets = sorted(buckets)
    if buckets[-1][0] != math.inf:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = quantile * total
    previous_bound, previous_count = 0.0, 0.0
    for index, (bound, count) in enumerate(buckets):
        if count >= rank:
            if bound == math.inf:
                # Like Prometheus: the answer is the highest finite bound.
                return buckets[index - 1][0] if index > 0 else None
            if index == 0 and bound <= 0:
                return bound
            in_bucket = count - previous_count
            if in_bucket <= 0:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / in_bucket
        previous_bound, previous_count = bound, count
    return None


def quantile_bucket(quantile: float, buckets: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(lower, upper) bounds of the bucket the quantile falls in: what the data can actually
    tell, before histogram_quantile interpolates inside it."""
    if not buckets:
        return None
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = quantile * total
    previous_bound = 0.0
    for bound, count in buckets:
        if count >= rank:
            return previous_bound, bound
        previous_bound = bound
    return None


@dataclass
class CollectorStatus:
    name: str
    interval: float
    timeout: float
    runs: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "timeout": 0})
    last_success: bool | None = None
    last_duration: float = 0.0
    last_success_time: float = 0.0
    last_run_time: float = 0.0
    last_error: str = ""
    consecutive_failures: int = 0
    first_failure_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interval_seconds": self.interval,
            "timeout_seconds": self.timeout,
            "runs": dict(self.runs),
            "last_success": self.last_success,
            "last_duration_seconds": round(self.last_duration, 6),
            "last_success_time": self.last_success_time or None,
            "last_run_time": self.last_run_time or None,
            "last_error": self.last_error or None,
            "consecutive_failures": self.consecutive_failures,
        }


class State:
    def __init__(
        self,
        history_window: float = 900.0,
        min_interval: float = 1.0,
        max_series_per_metric: int = 2000,
        max_events: int = 1000,
        history_filter: Any = None,
        max_series: int = 50_000,
        max_metric_names: int = 2_000,
    ) -> None:
        self.history_window = history_window
        # Enough points to span the window at the fastest interval, with a hard cap so a
        # tiny interval cannot blow the memory bound.
        self.ring_capacity = max(8, min(2048, int(history_window / max(min_interval, 0.05)) + 2))
        self.max_series_per_metric = max_series_per_metric
        self.max_series = max_series  # over every name: a flood of new names cannot grow memory
        self.max_metric_names = max_metric_names
        self.started = time.time()
        self.latest: dict[str, CollectResult] = {}
        self.latest_time: dict[str, float] = {}
        self.history: dict[str, dict[Labels, SeriesRing]] = {}  # name -> labels -> ring
        self._last_seen: dict[SeriesKey, float] = {}  # every admitted series, for cap + expiry
        self._series_per_metric: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.caps_hit: dict[str, int] = {}  # which cap dropped how many series
        self.events: deque[Event] = deque(maxlen=max_events)
        self.event_counts: dict[str, int] = {}
        self.collectors: dict[str, CollectorStatus] = {}
        self.generation = 0  # bumped on every update; the exporter re-renders when it moves
        self.extra: dict[str, Any] = {}
        self.event_listeners: list[Any] = []  # component state other parts publish (drain, canary)
        self._history_filter = history_filter or (lambda name: True)
        # collector -> (its latest result, that result's sample list, samples by name): find()
        # is a lookup, not a walk over every latest sample (Dynamo's ~1,500 and the GPUs').
        self._by_name: dict[str, tuple[CollectResult, list[Sample], dict[str, list[Sample]]]] = {}

    # --- writes ---------------------------------------------------------------------
    def register_collector(self, name: str, interval: float, timeout: float) -> CollectorStatus:
        status = self.collectors.get(name)
        if status is None:
            status = self.collectors[name] = CollectorStatus(name, interval, timeout)
        return status

    def update(self, collector: str, result: CollectResult, now: float | None = None) -> None:
        now = time.time() if now is None else now
        result.samples = self._admit(result.samples, now)
        for family in result.families:
            family.samples = self._admit(family.samples, now)
        previous = self.latest_time.get(collector)
        self.latest[collector] = result
        self.latest_time[collector] = now
        for item in self._all_samples(result):
            if not self._history_filter(item.name):
                continue
            by_labels = self.history.get(item.name)
            if by_labels is None:
                by_labels = self.history[item.name] = {}
            ring = by_labels.get(item.labels)
            if ring is None:
                ring = by_labels[item.labels] = SeriesRing(self.ring_capacity)
                if previous is not None and item.name.endswith(CUMULATIVE_SUFFIXES):
                    # Dynamo creates counter and histogram series lazily, at their first
                    # event. A series absent from the source's previous scrape was zero
                    # then; without this point the first events would never count.
                    ring.append(previous, 0.0)
            ring.append(now, item.value)
        for event in result.events:
            self.add_event(event)
        self._expire(now)
        self.generation += 1

    def add_event(self, event: Event) -> None:
        for listener in self.event_listeners:
            with contextlib.suppress(Exception):  # a listener (the tracer) must not break the state
                listener(event)
        self.events.append(event)
        self.event_counts[event.kind] = self.event_counts.get(event.kind, 0) + 1
        self.generation += 1

    def _drop(self, name: str, cap: str) -> None:
        self.count_drop(name, cap, 1)

    def count_drop(self, name: str, cap: str, count: int) -> None:
        """Series a cap kept out, by metric and by cap (also for passthrough text)."""
        # The drop counters are keyed by outside input too: past 100 names, one bucket.
        key = name if name in self.dropped or len(self.dropped) < MAX_DROPPED_NAMES else OTHER_NAMES
        self.dropped[key] = self.dropped.get(key, 0) + count
        self.caps_hit[cap] = self.caps_hit.get(cap, 0) + count

    def _admit(self, samples: list[Sample], now: float) -> list[Sample]:
        """Apply the cardinality caps: per metric name, distinct names, and series overall.
        Series already known always pass."""
        admitted = []
        seen = self._last_seen
        for item in samples:
            key = (item.name, item.labels)
            if key not in seen:
                count = self._series_per_metric.get(item.name)
                if count is None and len(self._series_per_metric) >= self.max_metric_names:
                    self._drop(item.name, "metric_names")
                    continue
                count = count or 0
                if count >= self.max_series_per_metric:
                    self._drop(item.name, "series_per_metric")
                    continue
                if len(seen) >= self.max_series:
                    self._drop(item.name, "series")
                    continue
                self._series_per_metric[item.name] = count + 1
            seen[key] = now
            admitted.append(item)
        return admitted

    def _expire(self, now: float) -> None:
        # Series not seen for a whole window (a restarted pid, a vanished label) go, and
        # free their slot under the cardinality cap.
        if self.generation % 64:
            return
        horizon = now - self.history_window
        stale = [key for key, seen in self._last_seen.items() if seen < horizon]
        for key in stale:
            del self._last_seen[key]
            by_labels = self.history.get(key[0])
            if by_labels is not None:
                by_labels.pop(key[1], None)
                if not by_labels:
                    del self.history[key[0]]
            remaining = self._series_per_metric.get(key[0], 1) - 1
            if remaining > 0:
                self._series_per_metric[key[0]] = remaining
            else:
                self._series_per_metric.pop(key[0], None)  # frees a slot under the names cap

    # --- reads ------------------------------------------------------------------------
    @staticmethod
    def _all_samples(result: CollectResult) -> Iterator[Sample]:
        yield from result.samples
        for family in result.families:
            yield from family.samples

    def samples(self, collector: str | None = None) -> Iterator[Sample]:
        results = (
            [self.latest[collector]]
            if collector in self.latest
            else ([] if collector else list(self.latest.values()))
        )
        for result in results:
            yield from self._all_samples(result)

    def families(self) -> Iterator[tuple[str, Family]]:
        for collector, result in list(self.latest.items()):
            for family in result.families:
                yield collector, family

    def _named(self, collector: str, result: CollectResult) -> dict[str, list[Sample]]:
        """The result's samples by name, built once per result (update() gives every result
        a new sample list, so a result updated again is indexed again)."""
        cached = self._by_name.get(collector)
        if cached is not None and cached[0] is result and cached[1] is result.samples:
            return cached[2]
        index: dict[str, list[Sample]] = {}
        for item in self._all_samples(result):
            index.setdefault(item.name, []).append(item)
        self._by_name[collector] = (result, result.samples, index)
        return index

    def find(self, name: str, collector: str | None = None, **labels: str) -> list[Sample]:
        """The latest samples of `name` having these labels, in the order samples() gives."""
        wanted = set(labels.items())
        # The named collector; none when it has no result yet; every one for None or "".
        collectors = [collector] if collector in self.latest else [] if collector else list(self.latest)
        out: list[Sample] = []
        for source in collectors:
            result = self.latest.get(source)
            if result is None:
                continue
            for item in self._named(source, result).get(name, ()):
                if not wanted or wanted <= set(item.labels):
                    out.append(item)
        return out

    def value(
        self, name: str, collector: str | None = None, default: float | None = None, **labels: str
    ) -> float | None:
        found = self.find(name, collector, **labels)
        return found[0].value if found else default

    def facts(self, collector: str, kind: type[F]) -> F:
        """The collector's latest typed facts, or an empty instance before its first run."""
        result = self.latest.get(collector)
        facts = result.facts if result is not None else None
        return facts if isinstance(facts, kind) else kind()

    def latest_total(self, name: str) -> float | None:
        """Sum of a history-kept metric's series as of its latest scrape (series missing from
        that scrape left out): cheaper than find(), which walks every latest sample."""
        rings = self.history.get(name)
        if not rings:
            return None
        newest = max(ring.newest_time() for ring in rings.values())
        return sum(last[1] for ring in rings.values() if (last := ring.last()) and last[0] == newest)

    def series_points(
        self, name: str, labels: Labels, window: float, now: float | None = None
    ) -> list[tuple[float, float]]:
        ring = self.history.get(name, {}).get(labels)
        if not ring:
            return []
        now = time.time() if now is None else now
        return ring.points(since=now - window, until=now)

    def series_matching(self, name: str, **labels: str) -> Iterable[tuple[Labels, SeriesRing]]:
        wanted = set(labels.items())
        for series_labels, ring in list(self.history.get(name, {}).items()):
            if not wanted or wanted <= set(series_labels):
                yield series_labels, ring

    def rate(self, name: str, window: float, now: float | None = None, **labels: str) -> float | None:
        """Per-second rate of the matching counters together over the window: their summed
        increase over the time the family was watched in it. Not a sum of per-series rates: a
        series that appeared a minute ago (Dynamo creates a label set at its first request)
        would divide its increase by that minute and count many times over."""
        now = time.time() if now is None else now
        wanted = set(labels.items())
        total, found, first, last = 0.0, False, math.inf, -math.inf
        for series_labels, ring in self.series_matching(name):
            points = ring.points(since=now - window, until=now)
            if len(points) < 2:
                continue
            # The span is the family's (any label set): errors per second of watching.
            first, last = min(first, points[0][0]), max(last, points[-1][0])
            if wanted <= set(series_labels):
                total += counter_increase(points)
                found = True
        if not found or last <= first:
            return None
        return total / (last - first)

    def increase(self, name: str, window: float, now: float | None = None, **labels: str) -> float | None:
        now = time.time() if now is None else now
        total, found = 0.0, False
        for _, ring in self.series_matching(name, **labels):
            points = ring.points(since=now - window, until=now)
            if len(points) >= 2:
                total += counter_increase(points)
                found = True
        return total if found else None

    def window_quantile(
        self, histogram: str, quantile: float, window: float, now: float | None = None, **labels: str
    ) -> float | None:
        """Quantile of the observations made inside the window (all matching series summed)."""
        return histogram_quantile(quantile, self.window_buckets(histogram, window, now, **labels))

    def window_buckets(
        self, histogram: str, window: float, now: float | None = None, **labels: str
    ) -> list[tuple[float, float]]:
        """(upper bound, observations inside the window at or below it), all series summed."""
        now = time.time() if now is None else now
        per_bound: dict[float, float] = {}
        since = now - window
        for series_labels, ring in self.series_matching(histogram + "_bucket", **labels):
            bound = _le_bound(series_labels)
            if bound is None:
                continue
            count, increase = ring.increase(since, now)
            if count < 2:
                continue
            per_bound[bound] = per_bound.get(bound, 0.0) + increase
        return sorted(per_bound.items())

    def recent_events(self, since: float = 0.0, kind: str | None = None) -> list[Event]:
        return [e for e in self.events if e.timestamp >= since and (kind is None or e.kind == kind)]

    @property
    def history_series(self) -> int:
        return sum(len(by_labels) for by_labels in self.history.values())
