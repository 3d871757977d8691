"""The compact history ring (agent/core/state.py) against a plain list of points: whatever is
appended (flat runs, counters, resets, decimals, raw floats, NaN, -0.0, repeated times),
whatever the capacity, every read gives what the list gives, and the memory it holds grows
with its content and stays under the per-series target."""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.membudget import budget, own_memory_limit
from agent.core.samples import CollectResult, sample
from agent.core.state import CHUNK, RING_FIXED, SeriesRing, State, counter_increase

VALUES = st.one_of(
    st.integers(-(2**60), 2**60).map(float),  # past 2^53: not exact integers, stored raw
    st.integers(0, 1000).map(float),
    st.integers(-(10**6), 10**6).map(lambda n: n / 100),  # decimals
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(-0.0),
)
# A short pattern repeated to a length drawn on its own: hypothesis favours short lists, and
# the interesting cases (sealed chunks, a wrapped ring, freed chunks) need several chunks.
PATTERNS = st.lists(
    st.tuples(st.sampled_from([0.0, 0.001, 0.5, 1.0, 4.7, 5.0, 5.3, 3600.0]), VALUES), min_size=1, max_size=40
)


def bits(points: list[tuple[float, float]]) -> list[tuple[float, bytes]]:
    """Points compared by the values' bit patterns: NaN equals itself, -0.0 differs from 0.0."""
    return [(t, struct.pack("<d", v)) for t, v in points]


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.sampled_from([1, 2, 7, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, 182]),
    start=st.floats(0, 2e9),
    pattern=PATTERNS,
    length=st.integers(1, 7 * CHUNK),
    cut=st.floats(0, 1),
)
def test_ring_reads_like_a_list_of_its_last_points(
    capacity: int, start: float, pattern: list[tuple[float, float]], length: int, cut: float
) -> None:
    steps = [pattern[i % len(pattern)] for i in range(length)]
    ring = SeriesRing(capacity)
    appended: list[tuple[float, float]] = []
    t = start
    for step, value in steps:
        t += step
        ring.append(t, value)
        appended.append((t, value))
    kept = appended[-capacity:]
    assert len(ring) == len(kept)
    assert bits(ring.points()) == bits(kept)
    assert bits([ring.last()]) == bits([kept[-1]])  # type: ignore[list-item]
    first, last = kept[0][0], kept[-1][0]
    middle = first + (last - first) * cut
    for since, until in [(-math.inf, math.inf), (middle, math.inf), (-math.inf, middle), (first, middle),
                         (middle, middle), (last, last), (first - 1, first), (last + 1, last + 2)]:  # fmt: skip
        expected = [(a, v) for a, v in kept if since <= a <= until]
        assert bits(ring.points(since, until)) == bits(expected), (since, until)
        if all(math.isfinite(v) for _, v in expected):
            count, increase = ring.increase(since, until)
            assert (count, increase) == (
                len(expected),
                counter_increase(expected) if len(expected) > 1 else 0.0,
            )


def _filled(kind: str, points: int, rings: int = 1) -> list[SeriesRing]:
    """`rings` series of one collector (appended at the same moments), default capacity."""
    out = [SeriesRing(182) for _ in range(rings)]  # the default: 900 s at 5 s
    t, value = 1.765e9 + 0.123456, 0.0
    for step in range(points):
        t += 5.0 * (1 + ((step * 7919) % 201 - 100) / 1000)  # the scheduler's +-10 % jitter
        value = {"flat": 3.0, "counter": value + step % 13, "decimal": round(value + (step % 9) / 100, 2)}[
            kind
        ]
        for index, ring in enumerate(out):
            ring.append(t, round(value + index, 2))
    return out


def _held(rings: list[SeriesRing]) -> int:
    """Bytes the rings hold together: a chunk of timestamps they share counts once."""
    seen: set[int] = set()
    total = 0
    for ring in rings:
        total += ring.nbytes() - sum(sys.getsizeof(blob) for blob in ring._blobs if id(blob) in seen)
        seen.update(id(blob) for blob in ring._blobs)
    return total


def test_a_ring_grows_with_its_content_and_a_full_one_stays_under_2_kb() -> None:
    for kind in ("flat", "counter", "decimal"):
        (young,), (alone,) = _filled(kind, 3), _filled(kind, 400)
        assert young.nbytes() < 700, (kind, young.nbytes())  # was 3,056 bytes from the start
        # Exact timestamps with a random jitter cost ~3.7 bytes a point when not shared...
        assert alone.nbytes() < 2600, (kind, alone.nbytes())
        # ...and the series of one collector run share them: the goal, per kept series.
        together = _filled(kind, 400, rings=20)
        assert _held(together) / 20 < 2048 - 400, (kind, _held(together) / 20)


def _flood(state: State, series: int, steps: int, start: float = 1000.0) -> None:
    for step in range(steps):
        samples = [sample("m_total", step * (i % 5), i=str(i)) for i in range(series)]
        state.update("c", CollectResult(samples=samples), now=start + 5 * step)


def test_the_state_counts_its_history_bytes_as_it_goes() -> None:
    """history_bytes is kept by appends and expiry, without a walk: never under what the
    rings hold, and over it by at most their fixed part's slack."""
    state = State(history_window=900, min_interval=5)
    _flood(state, 40, 300)
    rings = [ring for by_labels in state.history.values() for ring in by_labels.values()]
    actual = sum(ring.nbytes() for ring in rings)
    assert len(rings) == state.history_kept == 40
    assert actual <= state.history_bytes <= actual + 40 * RING_FIXED // 2
    _flood(state, 0, 300, start=1000.0 + 5 * 300)  # 1,500 s without the series: they expire
    assert (state.history_kept, state.history_bytes, state.series_bytes) == (0, 0, 0)


def test_the_memory_budget_keeps_new_series_and_history_out_and_counts_them() -> None:
    state = State(history_window=900, min_interval=5, memory_budget=200_000)
    _flood(state, 400, 3)
    assert state.budget_used() <= 200_000
    kept, admitted = state.history_kept, len(state._last_seen)
    # Each kept series is charged its full reserve (~3.8 KB at 182 points), history at most half
    # the budget; each series 800+ bytes: the rest goes to series without history.
    assert kept == 100_000 // state.ring_reserve and 90 < admitted - kept < 130, (kept, admitted)
    assert state.history_refused == admitted - kept
    assert state.caps_hit == {"memory_budget": 3 * (400 - admitted)}  # each scrape counts
    assert state.dropped == {"m_total": 3 * (400 - admitted)}
    assert sum(len(ring) for ring in state.history["m_total"].values()) == 3 * kept


def test_the_budget_is_a_quarter_of_the_cgroup_limit(tmp_path: Path) -> None:
    """The sidecar's own cgroup, v2 (with or without a cgroup namespace) and v1; no limit
    ("max", v1's page-rounded 2^63) gives the 128 MiB default."""
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/kubepods/pod1\n")
    (root / "kubepods" / "pod1" / "memory.max").write_text("167772160\n")
    assert own_memory_limit(str(proc), str(root)) == 160 * 2**20
    assert budget(None, 160 * 2**20) == 40 * 2**20
    (root / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    assert own_memory_limit(str(proc), str(root)) is None
    assert budget(None, None) == 128 * 2**20 and budget(5 * 2**20, 160 * 2**20) == 5 * 2**20
    (proc / "self" / "cgroup").write_text("4:memory:/process_api/x\n0::/\n")
    (root / "memory" / "process_api" / "x").mkdir(parents=True)
    (root / "memory" / "process_api" / "x" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert own_memory_limit(str(proc), str(root)) is None
    (root / "memory" / "process_api" / "x" / "memory.limit_in_bytes").write_text("268435456\n")
    assert own_memory_limit(str(proc), str(root)) == 256 * 2**20
