"""The GPU collector's DeviceEmitter, which reuses the samples of fields that did not change,
gives exactly what emit() (the definition) gives: the same samples in the same order, over
random sequences of readings in which fields appear, vanish, change keys and values, GPUs are
lost and come back, and a reading's dicts are changed in place after they were emitted."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.samples import CollectResult, Sample
from collectors.gpu import CLOCK_REASONS, EMITTED, MAX_KEYS_PER_ROW, DeviceEmitter, DeviceReading, emit

# Few values, so that consecutive readings often repeat one (the reuse path) and often do not.
_NUMBER = st.sampled_from([0, 1, 3, 100, 2**36])
_GPUS = [{"gpu": "0", "uuid": "GPU-aaaa"}, {"gpu": "1", "uuid": "GPU-bbbb"}]


def _keyed(keys: list[Any], values: st.SearchStrategy[Any] = _NUMBER) -> st.SearchStrategy[dict[Any, Any]]:
    """A field's dict as the reader builds it: some of its keys, in any order."""
    return st.lists(st.sampled_from(keys), unique=True).flatmap(
        lambda chosen: st.lists(values, min_size=len(chosen), max_size=len(chosen)).map(
            lambda numbers: dict(zip(chosen, numbers, strict=True))
        )
    )


def _processes() -> st.SearchStrategy[list[tuple[tuple[Any, str], int]] | None]:
    dynamo = st.lists(
        st.tuples(
            st.tuples(st.sampled_from([101, 202, 303]), st.sampled_from(["dynamo.frontend", "vllm"])), _NUMBER
        ),
        unique_by=lambda entry: entry[0][0],
        max_size=3,
    )
    return st.one_of(
        st.none(), dynamo.flatmap(lambda procs: _NUMBER.map(lambda other: [*procs, (("", "other"), other)]))
    )


_READING = st.builds(
    DeviceReading,
    utilization=_keyed(["gpu", "memory"]),
    memory=_keyed(["used", "free", "total"]),
    temperature=st.one_of(st.none(), _NUMBER),
    temperature_thresholds=_keyed(["slowdown", "shutdown"]),
    power_mw=st.one_of(st.none(), _NUMBER),
    power_limit_mw=st.one_of(st.none(), _NUMBER),
    clocks_mhz=_keyed(["sm", "memory"]),
    clock_event_reasons=_keyed(list(CLOCK_REASONS.values()), st.booleans()),
    ecc=_keyed(
        [(kind, counter) for kind in ("corrected", "uncorrected") for counter in ("volatile", "aggregate")]
    ),
    retired_pages=_keyed(["single_bit", "double_bit"]),
    remapped_rows=_keyed(["correctable", "uncorrectable", "pending", "failure"]),
    pcie_replays=st.one_of(st.none(), _NUMBER),
    pcie_throughput_kbs=_keyed(["tx", "rx"]),
    fan_percent=st.one_of(st.none(), _NUMBER),
    persistence=st.one_of(st.none(), st.sampled_from([0, 1])),
    nvlink_errors=_keyed(
        [(link, name) for link in (0, 1, 17) for name in ("replay", "recovery", "crc_flit")]
    ),
    process_memory=_processes(),
)


def _fresh(reading: DeviceReading, gpu: dict[str, str]) -> list[Sample]:
    result = CollectResult()
    emit(result, reading, gpu)
    return result.samples


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1]), st.sampled_from(["new", "repeat", "changed_in_place", "lost"]), _READING
        ),
        min_size=1,
        max_size=12,
    )
)
def test_reusing_emitter_equals_a_fresh_emission(steps: list[tuple[int, str, DeviceReading]]) -> None:
    emitters = [DeviceEmitter(gpu) for gpu in _GPUS]
    last: dict[int, DeviceReading] = {}
    for which, how, drawn in steps:
        reading = drawn
        if how == "lost":
            continue  # the collector emits nothing of a lost GPU's reading
        if how in ("repeat", "changed_in_place") and which in last:
            reading = last[which]
            if how == "changed_in_place":
                # The reader never does this, but the emitter must not have kept a reference.
                reading.memory["used"] = reading.memory.get("used", 0) + 1
                reading.nvlink_errors[(0, "replay")] = reading.nvlink_errors.get((0, "replay"), 0) + 1
        last[which] = reading
        result = CollectResult()
        emitters[which].emit(result, reading)
        assert result.samples == _fresh(reading, _GPUS[which])


def test_every_row_takes_the_reusing_path() -> None:
    """The table's label names are the catalogue's, so no row falls back to emit()'s path
    (which would still be correct, but not cheaper)."""
    emitter = DeviceEmitter(_GPUS[0])
    assert emitter.reusable == [True] * len(EMITTED)


def test_unchanged_fields_give_the_same_sample_objects() -> None:
    emitter = DeviceEmitter(_GPUS[0])
    reading = DeviceReading(ecc={("corrected", "volatile"): 3}, temperature=61)
    first, second = CollectResult(), CollectResult()
    emitter.emit(first, reading)
    emitter.emit(second, DeviceReading(ecc={("corrected", "volatile"): 3}, temperature=62))
    assert first.samples[1] is second.samples[1]  # the ECC counter, reused
    assert [s.value for s in second.samples] == [62.0, 3.0]


def test_label_sets_of_churning_pids_stay_bounded() -> None:
    emitter = DeviceEmitter(_GPUS[0])
    row = [row.field for row in EMITTED].index("process_memory")
    for pid in range(5 * MAX_KEYS_PER_ROW):
        reading = DeviceReading(process_memory=[((pid, "vllm"), 1), (("", "other"), 0)])
        result = CollectResult()
        emitter.emit(result, reading)
        assert result.samples == _fresh(reading, _GPUS[0])
    assert len(emitter.labels_by_key[row]) <= MAX_KEYS_PER_ROW


def test_a_row_that_failed_is_not_taken_as_emitted() -> None:
    """A key of the wrong shape fails in emit(); the emitter fails the same way every time,
    not only the first (the good keys before it must not be kept as the row's samples)."""
    emitter = DeviceEmitter(_GPUS[0])
    bad = DeviceReading(nvlink_errors={(0, "replay"): 1, (1,): 2})
    for _ in range(2):
        with pytest.raises(ValueError, match="zip"):
            emitter.emit(CollectResult(), bad)
    with pytest.raises(ValueError, match="zip"):
        emit(CollectResult(), bad, _GPUS[0])
