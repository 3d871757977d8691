from __future__ import annotations

import math

import pytest

from agent.core.samples import CollectResult, sample
from agent.core.state import SeriesRing, State, counter_increase, counter_rate, histogram_quantile


def test_ring_keeps_only_capacity_points_in_order() -> None:
    ring = SeriesRing(4)
    for i in range(10):
        ring.append(float(i), float(i * 10))
    assert ring.points() == [(6.0, 60.0), (7.0, 70.0), (8.0, 80.0), (9.0, 90.0)]
    assert ring.points(since=8) == [(8.0, 80.0), (9.0, 90.0)]
    assert ring.last() == (9.0, 90.0)


def test_counter_reset_never_makes_a_negative_rate() -> None:
    points = [(0.0, 100.0), (10.0, 110.0), (20.0, 5.0), (30.0, 15.0)]
    assert counter_increase(points) == 10 + 5 + 10
    # 25 over 30 s: the reset counts the 5 after it, never the drop of 105.
    assert counter_rate(points) == pytest.approx(25 / 30)
    assert counter_rate([(0.0, 1.0)]) is None


def test_histogram_quantile_matches_promql_interpolation() -> None:
    buckets = [(0.1, 10.0), (0.5, 60.0), (1.0, 90.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (50 - 10) / 50)
    assert histogram_quantile(0.95, buckets) == 1.0  # lands in +Inf: highest finite bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, [(0.1, 1.0)]) is None  # no +Inf bucket


def _result(value: float, **labels: str) -> CollectResult:
    return CollectResult(samples=[sample("m_total", value, **labels)])


def test_rate_over_window_and_reset() -> None:
    state = State(history_window=600, min_interval=1)
    for t, v in [(0, 0), (10, 50), (20, 100), (30, 10), (40, 60)]:
        state.update("c", _result(v, a="1"), now=1000 + t)
    assert state.rate("m_total", 600, now=1040) == pytest.approx((50 + 50 + 10 + 50) / 40)
    assert state.rate("m_total", 15, now=1040) == pytest.approx(50 / 10)
    assert state.rate("missing_total", 60, now=1040) is None


def test_window_quantile_uses_only_observations_inside_the_window() -> None:
    state = State(history_window=600, min_interval=1)

    def hist(t: float, fast: float, slow: float) -> None:
        samples = [
            sample("lat_bucket", fast, le="0.1"),
            sample("lat_bucket", fast + slow, le="1"),
            sample("lat_bucket", fast + slow, le="+Inf"),
        ]
        state.update("c", CollectResult(samples=samples), now=t)

    hist(1000, 0, 0)
    hist(1100, 100, 0)  # 100 fast observations early
    hist(1200, 100, 100)  # then 100 slow ones
    # Last 150 s: only the 100 slow ones, all in (0.1, 1]: the median interpolates to the middle.
    assert state.window_quantile("lat", 0.5, 150, now=1200) == pytest.approx(0.1 + 0.9 * 50 / 100)
    # Whole window: 100 fast of 200, so the 25th percentile is half way into the first bucket.
    assert state.window_quantile("lat", 0.25, 600, now=1200) == pytest.approx(0.1 * 50 / 100)


def test_cardinality_cap_drops_and_counts() -> None:
    state = State(max_series_per_metric=10)
    result = CollectResult(samples=[sample("g", 1, i=i) for i in range(25)])
    state.update("c", result, now=1.0)
    assert len(state.latest["c"].samples) == 10
    assert state.dropped["g"] == 15
    # Known series keep passing; new ones are still dropped.
    state.update("c", CollectResult(samples=[sample("g", 2, i=i) for i in range(25)]), now=2.0)
    assert len(state.latest["c"].samples) == 10
    assert state.dropped["g"] == 30


def test_history_memory_is_bounded_and_stale_series_expire() -> None:
    state = State(history_window=60, min_interval=1)
    assert state.ring_capacity <= 2048
    for t in range(500):
        state.update("c", CollectResult(samples=[sample("g", t, pid=t // 100)]), now=float(t))
    assert all(len(ring) <= state.ring_capacity for ring in state.history["g"].values())
    # pids 0..2 have not been seen for well over the window: gone, slots freed.
    # (Expiry is amortised over 64 updates, so pid 3 may still linger.)
    remaining = {dict(labels)["pid"] for labels in state.history["g"]}
    assert remaining <= {"3", "4"} and "4" in remaining
    assert state._series_per_metric["g"] == len(remaining)


def test_lazily_created_counter_counts_from_zero() -> None:
    state = State(history_window=600, min_interval=1)
    state.update("c", CollectResult(samples=[sample("other", 1)]), now=100.0)
    # The series appears at its first event, already at 6: those 6 happened in the window.
    state.update("c", CollectResult(samples=[sample("req_total", 6)]), now=110.0)
    assert state.increase("req_total", 60, now=110.0) == 6
    # A series present from the very first scrape has no known zero: no invented increase.
    fresh = State(history_window=600, min_interval=1)
    fresh.update("c", CollectResult(samples=[sample("req_total", 6)]), now=100.0)
    fresh.update("c", CollectResult(samples=[sample("req_total", 6)]), now=110.0)
    assert fresh.increase("req_total", 60, now=110.0) == 0


def test_ring_window_by_bisection_matches_a_scan() -> None:
    """points(since, until) bisects the ring; it must return what filtering every point does,
    including after the ring wrapped and with repeated timestamps; increase() (which skips a
    window holding one flat value) what counter_increase over those points gives."""
    import math
    import random

    from agent.core.state import SeriesRing, counter_increase

    rng = random.Random(7)
    for capacity in (1, 2, 5, 16):
        ring = SeriesRing(capacity)
        appended: list[tuple[float, float]] = []
        t = 0.0
        for step in range(40):
            t += rng.choice([0.0, 0.5, 1.0, 2.0])  # repeats on purpose
            value = float((step // 3) % 7)  # flat runs and counter resets on purpose
            ring.append(t, value)
            appended.append((t, value))
            kept = appended[-capacity:]
            for since, until in [(-math.inf, math.inf), (t - 3, t), (t - 1, math.inf), (-math.inf, t - 2),
                                 (kept[0][0], kept[-1][0]), (t + 1, t + 2), (t, t)]:  # fmt: skip
                expected = [(a, v) for a, v in kept if since <= a <= until]
                assert ring.points(since, until) == expected, (capacity, step, since, until)
                assert ring.increase(since, until) == (len(expected), counter_increase(expected))


def test_remembered_label_sets_are_exact_and_never_hold_a_long_value() -> None:
    """labels_of remembers label sets for speed: a hit must give what a fresh build gives
    (1, 1.0 and True are equal keys), and a long value from outside is never kept."""
    from agent.core import samples

    assert samples.labels_of(gpu="1") == (("gpu", "1"),)
    assert samples.labels_of(gpu=1) == (("gpu", "1"),)
    assert samples.labels_of(gpu=True) == (("gpu", "True"),)
    assert samples.labels_of(gpu=1.0) == (("gpu", "1.0"),)
    assert samples.labels_of(b="2", a="1") == (("a", "1"), ("b", "2"))
    assert samples.labels_of(x=[1]) == (("x", "[1]"),)  # unhashable: built, not remembered
    long_value = "v" * 100_000
    cleaned = samples.labels_of(model=long_value)
    assert len(cleaned[0][1]) == samples.MAX_LABEL_VALUE
    assert all(len(str(v)) <= samples.MAX_LABEL_VALUE for key in samples._LABELS_SEEN for _, v in key)


def test_rate_of_a_family_is_its_increase_over_the_time_it_was_watched() -> None:
    """A label set Dynamo creates at its first failure (a minute into a five-minute window)
    does not divide its increase by that minute: the family's rate is one number."""
    from agent.core.samples import CollectResult, sample
    from agent.core.state import State

    state = State(history_window=900, min_interval=5)
    now = 10_000.0
    for step in range(61):  # 300 s, one collection every 5 s
        samples = [sample("requests_total", step * 10, status="success")]
        if step >= 48:  # appears 60 s before the end, then one failure per collection
            samples.append(sample("requests_total", step - 47, status="error", error_type="unavailable"))
        state.update("m", CollectResult(samples=samples), now=now - 300 + step * 5)
    # 13 failures (the first one created the series) over the 300 s the family was watched,
    # not over the 60 s their series has existed.
    assert state.rate("requests_total", 300, now, status="error") == pytest.approx(13 / 300)
    assert state.rate("requests_total", 300, now) == pytest.approx((600 + 13) / 300)
