"""The metric handles (agent/core/metrics.py, generated from the catalogue): label names
checked, strict mode raising, production counting and exporting what it would have raised."""

from __future__ import annotations

import re
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core import handles, metrics
from agent.core.catalogue import CATALOGUE, PREFIX
from agent.core.samples import Sample
from agent.core.state import State
from exporters.prometheus import self_samples


@pytest.fixture
def production() -> Iterator[None]:
    """Strict mode off (as in production) and the undeclared counter empty, restored after."""
    saved = handles.STRICT, dict(handles.UNDECLARED), set(handles._LOGGED)
    handles.STRICT = False
    handles.UNDECLARED.clear()
    try:
        yield
    finally:
        handles.STRICT = saved[0]
        handles.UNDECLARED.clear()
        handles.UNDECLARED.update(saved[1])
        handles._LOGGED.clear()
        handles._LOGGED.update(saved[2])


def test_every_catalogue_metric_has_a_handle_with_its_name() -> None:
    for spec in CATALOGUE:
        handle = getattr(metrics, spec.name[len(PREFIX) :].upper())
        assert handle.name == spec.name
        assert handle.spec is spec


def test_a_handle_makes_the_sample_the_old_helper_made() -> None:
    made = metrics.GPU_POWER_WATTS.sample(250, gpu=0, uuid="GPU-0")
    assert made == Sample("dynamo_sidecar_gpu_power_watts", (("gpu", "0"), ("uuid", "GPU-0")), 250.0)
    assert metrics.READY.sample(1) == Sample("dynamo_sidecar_ready", (), 1.0)


def test_the_tests_run_in_strict_mode() -> None:
    assert handles.STRICT, "tests/conftest.py sets DYNAMO_SIDECAR_STRICT_METRICS=1"


def test_wrong_label_names_raise_in_strict_mode() -> None:
    labels: dict[str, Any] = {"gpu": 0}  # uuid missing: built at runtime, so mypy cannot see it
    with pytest.raises(handles.UndeclaredMetricError, match="gpu_power_watts"):
        metrics.GPU_POWER_WATTS.sample(250, **labels)
    with pytest.raises(handles.UndeclaredMetricError, match="'pid'"):
        metrics.READY.sample_of(1, {"pid": 3})


def test_a_value_outside_a_closed_set_raises_in_strict_mode() -> None:
    with pytest.raises(handles.UndeclaredMetricError, match="outcome='crashed'"):
        metrics.COLLECTOR_RUNS_TOTAL.sample(1, collector="gpu", outcome="crashed")
    assert metrics.COLLECTOR_RUNS_TOTAL.sample(1, collector="gpu", outcome="timeout").value == 1.0


def test_in_production_a_wrong_emission_is_kept_counted_and_exported(production: None) -> None:
    labels: dict[str, Any] = {"gpu": 0}
    kept = metrics.GPU_POWER_WATTS.sample(250, **labels)
    metrics.GPU_POWER_WATTS.sample(260, **labels)
    assert kept == Sample("dynamo_sidecar_gpu_power_watts", (("gpu", "0"),), 250.0)
    assert handles.UNDECLARED == {"dynamo_sidecar_gpu_power_watts": 2}
    own = [s for s in self_samples(State(), 0.0) if s.name == "dynamo_sidecar_undeclared_emissions_total"]
    assert own == [
        Sample(
            "dynamo_sidecar_undeclared_emissions_total",
            (("metric", "dynamo_sidecar_gpu_power_watts"),),
            2.0,
        )
    ]


def test_nothing_undeclared_exports_no_counter(production: None) -> None:
    names = {s.name for s in self_samples(State(), 0.0)}
    assert "dynamo_sidecar_undeclared_emissions_total" not in names


def test_selectors_quote_uniformly_in_the_order_given() -> None:
    assert metrics.PROCESS_OPEN_FDS.selector(pid=12) == 'dynamo_sidecar_process_open_fds{pid="12"}'
    assert (
        metrics.PRESSURE_STALL_RATIO.selector(scope="pod", resource="memory", kind="some", window="60s")
        == 'dynamo_sidecar_pressure_stall_ratio{scope="pod",resource="memory",kind="some",window="60s"}'
    )
    assert metrics.READY.selector() == "dynamo_sidecar_ready"
    assert metrics.ENDPOINT_UP.selector(endpoint='a"b') == 'dynamo_sidecar_endpoint_up{endpoint="a\\"b"}'
    with pytest.raises(handles.UndeclaredMetricError):
        metrics.READY.selector(**{"pid": 1})


def test_histogram_handles_make_bucket_sum_and_count() -> None:
    latency = metrics.CANARY_LATENCY_SECONDS
    assert latency.bucket(3, le="0.5", model="m").name == "dynamo_sidecar_canary_latency_seconds_bucket"
    assert latency.sum(1.5, model="m") == Sample(
        "dynamo_sidecar_canary_latency_seconds_sum", (("model", "m"),), 1.5
    )
    assert latency.count(3, model="m").name == "dynamo_sidecar_canary_latency_seconds_count"
    with pytest.raises(handles.UndeclaredMetricError):
        latency.bucket(3, **{"model": "m"})


# The webhook is a separate server with its own prometheus_client registry and metrics
# (dynamo_sidecar_webhook_*), not the sidecar's catalogue.
NOT_THE_SIDECARS = {"agent/tools/webhook.py"}
GENERATED_OR_SOURCE = {"agent/core/catalogue.py", "agent/core/metrics.py"}


def test_no_metric_name_is_built_from_strings_outside_the_catalogue() -> None:
    """Code names the sidecar's metrics only through handles: a string literal that starts
    with the prefix, or `PREFIX +`, is a metric named by hand (prose that mentions a metric
    inside a sentence is fine)."""
    root = Path(__file__).resolve().parent.parent
    found = []
    for folder in ("agent", "collectors", "exporters"):
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative in NOT_THE_SIDECARS | GENERATED_OR_SOURCE:
                continue
            with path.open("rb") as handle:
                for token in tokenize.tokenize(handle.readline):
                    text = token.string
                    literal = token.type == tokenize.STRING and re.match(
                        r"[rbfRBF]*['\"]dynamo_sidecar_", text
                    )
                    concatenated = (
                        token.type == tokenize.NAME
                        and text == "PREFIX"
                        and relative != "agent/tools/inject.py"
                    )
                    if literal or (concatenated and _is_concatenation(path, token.start[0])):
                        found.append(f"{relative}:{token.start[0]}: {text[:60]}")
    assert not found, "\n".join(found)


def _is_concatenation(path: Path, line: int) -> bool:
    return "PREFIX +" in path.read_text().splitlines()[line - 1]
