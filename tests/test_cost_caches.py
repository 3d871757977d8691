"""Work the sidecar skips to stay cheap gives what the full computation gives: the state's
samples-by-name index against a walk over every latest sample, and the cycle's findings
evaluation reusing the render's signals against signals computed afresh."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.core.samples import CollectResult, Family, Sample, sample
from agent.core.signals import compute
from agent.core.state import State
from agent.diagnose.context import Context
from agent.diagnose.engine import evaluate
from agent.runtime.sidecar import Sidecar

_NAMES = ["a", "b", "c_total"]
_SAMPLE = st.builds(
    lambda name, labels, value: sample(name, value, **labels),
    st.sampled_from(_NAMES),
    st.dictionaries(st.sampled_from(["x", "y"]), st.sampled_from(["1", "2"]), max_size=2),
    st.floats(min_value=0, max_value=10, allow_nan=False),
)
_RESULT = st.builds(
    lambda samples, family: CollectResult(samples=samples, families=[family] if family else []),
    st.lists(_SAMPLE, max_size=8),
    st.one_of(st.none(), st.builds(lambda s: Family("a", "gauge", "", s), st.lists(_SAMPLE, max_size=4))),
)


def _walk(state: State, name: str, collector: str | None, labels: dict[str, str]) -> list[Sample]:
    """find() as it was: every latest sample looked at."""
    wanted = set(labels.items())
    return [s for s in state.samples(collector) if s.name == name and wanted <= set(s.labels)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(["p", "q", "r"]), _RESULT), min_size=1, max_size=8),
    st.data(),
)
def test_find_by_name_index_equals_a_walk_over_every_sample(
    updates: list[tuple[str, CollectResult]], data: st.DataObject
) -> None:
    """Across updates (a collector's new result replaces its index, the same result object
    updated again is indexed again) every lookup equals the walk, in the same order."""
    state = State()
    for collector, result in updates:
        if data.draw(st.booleans()) and collector in state.latest:
            result = state.latest[collector]  # the same object handed over again
            result.samples = [*result.samples, data.draw(_SAMPLE)]
        state.update(collector, result)
        for _ in range(3):
            name = data.draw(st.sampled_from(_NAMES))
            which = data.draw(st.sampled_from([None, "", "p", "q", "r", "absent"]))
            labels = data.draw(
                st.dictionaries(st.sampled_from(["x", "y"]), st.sampled_from(["1", "2"]), max_size=1)
            )
            assert state.find(name, which, **labels) == _walk(state, name, which, labels)


def test_find_sees_a_new_result_at_once() -> None:
    state = State()
    state.update("p", CollectResult(samples=[sample("a", 1)]))
    assert [s.value for s in state.find("a")] == [1]
    state.update("p", CollectResult(samples=[sample("a", 2), sample("a", 3, x="1")]))
    assert [s.value for s in state.find("a")] == [2, 3]
    assert [s.value for s in state.find("a", x="1")] == [3]


def _sidecar() -> Sidecar:
    config = load_config(environ={}, overrides={"listen_port": "0"})
    return Sidecar(config, collectors=[])


def test_cycle_evaluation_with_the_renders_signals_equals_a_fresh_one() -> None:
    """The findings evaluation after a render reuses the signals the render computed, as of
    their moment: the same findings as signals computed afresh for that moment."""
    import bench.diagnose as filled

    sidecar = _sidecar()
    filled.fill(sidecar, time.time())
    sidecar.exporter.render()  # computes the signals (Dynamo and TCP data are new)
    reused = sidecar.signal_cache._unevaluated
    assert reused is not None, "the render did not compute signals"
    signals, moment = reused
    findings, errors = evaluate(sidecar.diagnose_context(reused))
    fresh = compute(sidecar.state, sidecar.names, sidecar.config.signal_window, moment)
    assert fresh == signals
    context = Context(
        sidecar.state,
        sidecar.config,
        fresh,
        window=sidecar.config.history_window,
        names=sidecar.names,
        now=moment,
    )
    expected, expected_errors = evaluate(context)
    assert errors == expected_errors == []
    assert [(f.id, f.severity, f.summary) for f in findings] == [
        (f.id, f.severity, f.summary) for f in expected
    ]
    # The signals carry values (rates, latency quantiles), or the comparison shows nothing.
    assert signals.request_rate and signals.latency
    # Consumed by the cycle's evaluation: the next one, without a render, computes afresh.
    sidecar.evaluate_findings()
    assert sidecar.signal_cache._unevaluated is None


def test_the_exposition_shows_the_signals_whoever_refreshed_them() -> None:
    """The signals are refreshed by the cycle's evaluation and by the canary as well as by
    the render: a render after someone else's refresh exports those signals, not the ones
    it rendered last time."""
    import re

    import bench.diagnose as filled

    sidecar = _sidecar()
    sidecar.exporter.render()  # before any data: no request rate to show
    filled.fill(sidecar, time.time())
    assert sidecar.signal_cache.refresh(), "the new data did not change the signals"
    rate = sidecar.signal_cache.current.request_rate
    assert rate
    sidecar.exporter.render()
    text = sidecar.exporter.body("text", False)[0].decode()
    found = re.search(r"^dynamo_sidecar_dynamo_request_rate\{[^}]*\} (\S+)$", text, re.M)
    assert found, "no request rate in the exposition"
    assert float(found.group(1)) == rate
