"""Latest samples per collector plus a bounded history, so rates, quantiles and diagnose
work without Prometheus.

Memory is capped by construction: each series' history is a ring of at most ring_capacity
points that grows with its content and seals its older points into deflated chunks (about
1.2-1.5 KB for a full default ring of 182 points, against 16 bytes a point before), every
metric name has a cardinality cap (extra series are dropped and counted), the whole state
has a memory budget (see State), and events live in a bounded deque.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Any, TypeVar

from agent.core.samples import CollectResult, Event, Family, Labels, Sample

SeriesKey = tuple[str, Labels]
MAX_DROPPED_NAMES = 100
OTHER_NAMES = "_other"
F = TypeVar("F")
CUMULATIVE_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


CHUNK = 32  # points per sealed chunk
CHUNK_OVERHEAD = 24  # a sealed chunk's two slots in the ring's list and its first timestamp
# Values are stored as deltas of whole numbers when they are whole numbers times 10^-k
# (counters, byte and request counts, ratios and seconds with few decimals: most series).
_SCALES = (1, 10, 100, 1000, 10_000, 100_000, 1_000_000)
_EXACT = 2.0**53


_WORD = 2**64 - 1


def _bits_deltas(times: array[float]) -> bytes:
    """Timestamps exactly, as the differences of their IEEE bit patterns (modulo 2^64): the
    patterns of nearby times differ in their low bits only, so the deltas are small numbers
    whose high bytes are zero (rules compare times exactly: nothing is rounded)."""
    patterns = array("q", times.tobytes())
    steps = [patterns[0] & _WORD, *((b - a) & _WORD for a, b in pairwise(patterns))]
    return array("Q", steps).tobytes()


def _bits_undelta(raw: bytes) -> array[float]:
    steps = array("Q", raw)
    times = array("d")
    times.frombytes(array("Q", [total & _WORD for total in accumulate(steps)]).tobytes())
    return times


def _planes(raw: bytes) -> bytes:
    """Byte planes of 8-byte words (all first bytes, then all second bytes...): neighbouring
    samples share their high bytes, so the planes are runs that deflate squeezes to little."""
    return b"".join(raw[i::8] for i in range(8))


def _words(planes: bytes, count: int) -> bytes:
    out = bytearray(8 * count)
    for i in range(8):
        out[i::8] = planes[i * count : (i + 1) * count]
    return bytes(out)


def _scaled(values: array[float]) -> tuple[int, list[int]] | None:
    """(k, the values times 10^k as integers) for the smallest k that gives them back exactly
    by the decoder's arithmetic; None for NaN, infinities, -0.0 or other floats."""
    for exponent, scale in enumerate(_SCALES):
        numbers = []
        for value in values:
            scaled = value * scale
            if not -_EXACT < scaled < _EXACT:  # NaN and infinities too
                return None
            number = round(scaled)
            if number / scale != value or (not number and math.copysign(1.0, value) < 0):
                break
            numbers.append(number)
        else:
            return exponent, numbers
    return None


def _deltas(numbers: list[int]) -> array[int]:
    return array("q", [numbers[0], *(b - a for a, b in pairwise(numbers))])


# Sealed timestamp chunks seen lately, by content: the series of one collector run share their
# timestamps, so series created together seal identical chunks of times, stored once. Bounded:
# cleared when full (sharing then starts again; nothing is ever read from here).
_TIMES_SEEN: dict[bytes, bytes] = {}
MAX_TIMES_SEEN = 4096


def _seal(times: array[float], values: array[float]) -> tuple[bytes, bytes]:
    """One chunk as two byte strings: the timestamps (see _bits_deltas), and a flag (0: raw
    doubles; 1 + k: integers over 10^k) with the values (their deltas when scaled to
    integers, else the doubles themselves), each as deflated byte planes."""
    stamps = zlib.compress(_planes(_bits_deltas(times)), 6, -15)
    shared = _TIMES_SEEN.get(stamps)
    if shared is None:
        if len(_TIMES_SEEN) >= MAX_TIMES_SEEN:
            _TIMES_SEEN.clear()
        shared = _TIMES_SEEN[stamps] = stamps
    scaled = _scaled(values)
    if scaled is None:
        flag, body = 0, values.tobytes()
    else:
        flag, body = scaled[0] + 1, _deltas(scaled[1]).tobytes()
    return shared, bytes((flag,)) + zlib.compress(_planes(body), 6, -15)


@functools.lru_cache(maxsize=2048)
def _unseal_times(blob: bytes) -> array[float]:
    """A sealed chunk's timestamps. Cached by content (rules read the same windows every
    cycle, and series of one collector share their chunks of times; equal bytes decode to
    equal points, so the cache can never answer wrongly)."""
    return _bits_undelta(_words(zlib.decompress(blob, -15), CHUNK))


@functools.lru_cache(maxsize=1024)
def _unseal_values(blob: bytes) -> array[float]:
    """A sealed chunk's values, cached by content as the times are."""
    raw = _words(zlib.decompress(blob[1:], -15), CHUNK)
    values = array("d")
    if blob[0]:
        steps = array("q")
        steps.frombytes(raw)
        scale = _SCALES[blob[0] - 1]
        values.extend([k / scale for k in accumulate(steps)] if scale > 1 else accumulate(steps))
    else:
        values.frombytes(raw)
    return values


class SeriesRing:
    """The last `capacity` (timestamp, value) points of one series, stored compactly and
    growing with its content: the newest points (under CHUNK) in two plain arrays, older ones
    sealed CHUNK at a time into deflated byte chunks (see _seal). The oldest point leaves when
    the ring is full; its chunk is freed once all its points have left."""

    __slots__ = ("_blobs", "_changed", "_count", "_firsts", "_skip", "_times", "_values", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Sealed chunks, oldest first, CHUNK points each: times and values, two entries each.
        self._blobs: list[bytes] = []
        self._firsts = array("d")  # first timestamp of each sealed chunk, to bisect windows
        self._times = array("d")  # the head: points not sealed yet
        self._values = array("d")
        self._skip = 0  # points of the oldest sealed chunk that already left the ring
        self._count = 0
        # When the value last differed from the point before: a window that starts after it
        # holds one flat value (most histogram buckets of an idle pod), with no increase.
        self._changed = -math.inf

    def append(self, timestamp: float, value: float) -> int:
        """Add the newest point; returns how many bytes of sealed chunks that added (negative
        when a chunk was freed), so the state can keep its memory total without a walk."""
        times, values = self._times, self._values
        if times and value != values[-1]:
            self._changed = timestamp
        times.append(timestamp)
        values.append(value)
        grown = 0
        if len(times) > CHUNK:
            # Seal all but the newest point: the head is never empty, so last() and the
            # change check above never decode a chunk.
            stamps, blob = _seal(times[:CHUNK], values[:CHUNK])
            self._blobs += (stamps, blob)
            self._firsts.append(times[0])
            self._times, self._values = times[CHUNK:], values[CHUNK:]
            grown += sys.getsizeof(stamps) + sys.getsizeof(blob) + CHUNK_OVERHEAD
        if self._count < self.capacity:
            self._count += 1
        else:
            grown -= self._drop_oldest()
        return grown

    def _drop_oldest(self) -> int:
        """Forget the oldest point; returns the bytes of a chunk that freed."""
        if not self._blobs:  # capacity under a chunk: the head is the whole ring
            del self._times[0]
            del self._values[0]
            return 0
        self._skip += 1
        if self._skip < CHUNK:
            return 0
        freed = sys.getsizeof(self._blobs[0]) + sys.getsizeof(self._blobs[1]) + CHUNK_OVERHEAD
        del self._blobs[:2]
        del self._firsts[0]
        self._skip = 0
        return freed

    def __len__(self) -> int:
        return self._count

    def _columns(self, since: float, until: float) -> tuple[array[float], array[float]]:
        """Times and values of every kept point that may lie in [since, until] (a superset:
        the caller bisects), decoding only the sealed chunks the window reaches."""
        head_times = self._times
        blobs, firsts = self._blobs, self._firsts
        if not blobs or (head_times and since > head_times[0]):  # sealed points are older
            return head_times, self._values
        first = max(0, bisect_left(firsts, since) - 1)
        end = bisect_right(firsts, until)
        times, values = array("d"), array("d")
        for index in range(first, end):
            chunk_times, chunk_values = _unseal_times(blobs[2 * index]), _unseal_values(blobs[2 * index + 1])
            skip = self._skip if index == 0 else 0
            times += chunk_times[skip:] if skip else chunk_times
            values += chunk_values[skip:] if skip else chunk_values
        if end == len(firsts):
            times += head_times
            values += self._values
        return times, values

    def points(self, since: float = -math.inf, until: float = math.inf) -> list[tuple[float, float]]:
        times, values = self._columns(since, until)
        first = 0 if since == -math.inf else bisect_left(times, since)
        end = len(times) if until == math.inf else bisect_right(times, until)
        return list(zip(times[first:end], values[first:end], strict=True))

    def increase(self, since: float, until: float) -> tuple[int, float]:
        """(points in the window, the counter's increase over them): counter_increase of
        points(since, until) without building the list (histogram windows read hundreds)."""
        times, values = self._columns(since, until)
        first, end = bisect_left(times, since), bisect_right(times, until)
        if self._changed < since or end - first < 2:
            return max(0, end - first), 0.0
        total = 0.0
        for previous, current in pairwise(values[first:end]):
            total += current - previous if current >= previous else current
        return end - first, total

    def last(self) -> tuple[float, float] | None:
        if not self._times:
            return None
        return self._times[-1], self._values[-1]

    def newest_time(self) -> float:
        return self._times[-1] if self._times else -math.inf

    def copy(self) -> SeriesRing:
        """A frozen copy to read elsewhere (another thread) while this one takes appends: the
        sealed chunks are immutable bytes and shared, only the lists and the head are copied."""
        other = SeriesRing(self.capacity)
        other._blobs = list(self._blobs)
        other._firsts = array("d", self._firsts)
        other._times = array("d", self._times)
        other._values = array("d", self._values)
        other._skip, other._count, other._changed = self._skip, self._count, self._changed
        return other

    def sealed_bytes(self) -> int:
        """The sealed chunks' share of memory, as append() counts it."""
        return sum(sys.getsizeof(blob) for blob in self._blobs) + CHUNK_OVERHEAD * len(self._firsts)

    def nbytes(self) -> int:
        """What the ring holds in memory now: the object, its arrays and sealed chunks."""
        return (
            sys.getsizeof(self)
            + sum(sys.getsizeof(blob) for blob in self._blobs)
            + sys.getsizeof(self._blobs)
            + sys.getsizeof(self._firsts)
            + sys.getsizeof(self._times)
            + sys.getsizeof(self._values)
        )


def _ring_fixed() -> int:
    """Bytes of a ring apart from its sealed chunks, at most: the object, its lists and a
    head at its fullest (CHUNK + 1 points appended one by one, as they are)."""
    ring = SeriesRing(CHUNK + 1)
    most = 0
    for index in range(CHUNK + 1):
        ring._times.append(float(index))
        ring._values.append(0.5)
        most = max(most, ring.nbytes())
    return most + 2 * 64  # the chunk list's and first-times' over-allocation


RING_FIXED = _ring_fixed()
# What a kept series is charged against the memory budget: its ring as if full of values that
# do not compress at all and timestamps it shares with no other series (8 bytes a value,
# ~3.7 a timestamp, ~2 of chunk overhead), so the rings admitted can fill up without leaving
# the budget. Typical rings need a third of it.
RESERVE_PER_POINT = 15
# History may hold at most this share of the budget: under a flood of new series their history
# stops first, and the latest values of the series already known still fit.
HISTORY_SHARE = 0.5
# An admitted series' latest sample, its key in the bookkeeping dicts and its label tuple
# (plus its label text, counted apart): measured by bench/history.py (~700 bytes).
SERIES_BYTES = 800


def series_cost(labels: Labels) -> int:
    return SERIES_BYTES + sum(len(key) + len(value) for key, value in labels)


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
        memory_budget: int | None = None,
        memory_limit: int | None = None,
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
        self._facts: dict[type, Any] = {}  # fact type -> the latest facts of it (one source each)
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
        self.event_listeners: list[Any] = []  # called with every event added (the OTLP exporter)
        self._history_filter = history_filter or (lambda name: True)
        # The memory budget (bytes, None for none): series and their history are admitted
        # only while the state's estimated memory stays inside it (see budget_used); what it
        # keeps out is counted. memory_limit is the container's, for the finding's evidence.
        self.memory_budget = memory_budget
        self.memory_limit = memory_limit
        self.ring_reserve = RING_FIXED + self.ring_capacity * RESERVE_PER_POINT
        self.history_bytes = 0  # kept rings: their fixed part at its largest + sealed chunks
        self.series_bytes = 0  # admitted series, estimated (series_cost)
        self.history_kept = 0  # rings held
        self.history_refused = 0  # admitted series whose history the budget did not keep
        self._unkept: set[SeriesKey] = set()
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
        # Rebuilt here, once a run, so facts() is one lookup: rules ask for them many times.
        self._facts = {type(r.facts): r.facts for r in self.latest.values() if r.facts is not None}
        for item in self._all_samples(result):
            by_labels = self.history.get(item.name)
            ring = by_labels.get(item.labels) if by_labels is not None else None
            if ring is None:
                continue  # no history kept for it: by the filter, or the budget was spent
            if not ring and previous is not None and item.name.endswith(CUMULATIVE_SUFFIXES):
                # Dynamo creates counter and histogram series lazily, at their first
                # event. A series absent from the source's previous scrape was zero
                # then; without this point the first events would never count.
                ring.append(previous, 0.0)
            self.history_bytes += ring.append(now, item.value)
        for event in result.events:
            self.add_event(event)
        self._expire(now)
        self.generation += 1

    def budget_used(self) -> int:
        """The state's memory as the budget counts it: admitted series, and every kept ring
        at its full reserve (or what the rings hold, were that ever more)."""
        return self.series_bytes + max(self.history_bytes, self.history_kept * self.ring_reserve)

    def _keep_history(self, name: str, labels: Labels) -> None:
        """At a series' admission: an empty ring when its history is wanted and the budget
        holds the ring full; otherwise the series keeps its latest value only (counted)."""
        budget = self.memory_budget
        if budget is not None and (
            (self.history_kept + 1) * self.ring_reserve > budget * HISTORY_SHARE
            or self.budget_used() + self.ring_reserve > budget
        ):
            self._unkept.add((name, labels))
            self.history_refused += 1
            return
        by_labels = self.history.get(name)
        if by_labels is None:
            by_labels = self.history[name] = {}
        by_labels[labels] = SeriesRing(self.ring_capacity)
        self.history_bytes += RING_FIXED
        self.history_kept += 1

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
                cost = series_cost(item.labels)
                budget = self.memory_budget
                if budget is not None and self.budget_used() + cost > budget:
                    self._drop(item.name, "memory_budget")
                    continue
                self.series_bytes += cost
                self._series_per_metric[item.name] = count + 1
                if self._history_filter(item.name):
                    self._keep_history(item.name, item.labels)
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
            self.series_bytes -= series_cost(key[1])
            self._unkept.discard(key)
            by_labels = self.history.get(key[0])
            if by_labels is not None:
                ring = by_labels.pop(key[1], None)
                if ring is not None:
                    self.history_bytes -= RING_FIXED + ring.sealed_bytes()
                    self.history_kept -= 1
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

    def facts(self, kind: type[F]) -> F:
        """The latest facts of that type (each fact type has one source), or an empty
        instance before its collector's first run: readers ask for what they need, not for
        who produces it."""
        found = self._facts.get(kind)
        return found if isinstance(found, kind) else kind()

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
        return self.history_kept
