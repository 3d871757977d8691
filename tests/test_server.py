"""The HTTP surface against a real sidecar on a loopback port, watching a simulated Dynamo."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess

import aiohttp
import pytest

from agent.core.catalogue import BY_NAME, CATALOGUE, PREFIX, spec_for_sample
from tests.helpers import base_url, finding_ids, get_json, get_text, post_completion, wait_for


async def _ready(http: aiohttp.ClientSession, sidecar) -> None:
    async def ready() -> bool:
        async with http.get(base_url(sidecar) + "/readyz") as response:
            return response.status == 200

    await wait_for(ready, what="/readyz 200")


async def _metrics_with(http: aiohttp.ClientSession, sidecar, needle: str) -> str:
    async def body() -> str | None:
        status, text = await get_text(http, base_url(sidecar) + "/metrics")
        return text if status == 200 and needle in text else None

    return await wait_for(body, what=f"{needle} in /metrics")


async def test_metrics_show_process_self_metrics_and_dynamo_health(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    await _ready(http, sidecar)
    for _ in range(3):
        assert (await post_completion(http, sim.url("frontend")))[0] == 200
    text = await _metrics_with(
        http, sidecar, 'dynamo_sidecar_endpoint_up{endpoint="worker",probe="health"} 1.0'
    )
    assert re.search(
        r'^dynamo_sidecar_process_resident_memory_bytes\{pid="\d+",process="[^"]+"\} \d', text, re.M
    )
    assert 'dynamo_sidecar_collector_success{collector="dynamo_health"} 1.0' in text
    assert 'dynamo_sidecar_collector_duration_seconds{collector="process"}' in text
    assert 'dynamo_sidecar_collector_last_success_timestamp_seconds{collector="cgroup"}' in text
    assert 'dynamo_sidecar_endpoint_up{endpoint="frontend",probe="health"} 1.0' in text
    # Dynamo's own series pass through with their names and labels untouched.
    # Unchanged: as Dynamo wrote them (its own number formatting).
    assert 'dynamo_frontend_model_ready{model="tiny"} 1\n' in text
    assert "dynamo_component_uptime_seconds{worker_id=" in text
    assert "# TYPE dynamo_frontend_time_to_first_token_seconds histogram" in text


async def test_every_sidecar_metric_is_declared_in_the_catalogue(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    await _ready(http, sidecar)
    await post_completion(http, sim.url("frontend"))
    text = await _metrics_with(http, sidecar, "dynamo_sidecar_dynamo_request_rate")
    emitted = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith(PREFIX)}
    assert emitted
    undeclared = {name for name in emitted if spec_for_sample(name) is None}
    assert not undeclared, f"emitted but not in agent/core/catalogue.py: {undeclared}"
    assert not sidecar.exporter.undeclared
    # Each rule's health, from the first render: its failures counter starts at zero.
    assert 'dynamo_sidecar_rule_evaluation_failures_total{rule="endpoint_refused"} 0.0' in text
    # ... and its duration once a cycle's evaluation has run (renders may come first).
    await _metrics_with(
        http, sidecar, 'dynamo_sidecar_rule_evaluation_duration_seconds{rule="endpoint_refused"}'
    )
    for name in emitted:
        spec = spec_for_sample(name)
        assert spec is not None
        assert f"# TYPE {spec.name} {spec.type}" in text or f"# TYPE {spec.family} {spec.type}" in text


async def test_openmetrics_negotiation_and_gzip(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    await _ready(http, sidecar)
    await _metrics_with(http, sidecar, "dynamo_sidecar_endpoint_up")
    async with http.get(
        base_url(sidecar) + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        body = await response.text()
    assert body.rstrip().endswith("# EOF")
    assert "# TYPE dynamo_sidecar_collector_runs counter" in body
    async with http.get(
        base_url(sidecar) + "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    ) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        raw = await response.read()
    assert b"dynamo_sidecar_endpoint_up" in gzip.decompress(raw)
    # Once a scraper asked for gzip, the next cycle's body is compressed off the event loop
    # right after its render, before any scrape asks.
    exporter = sidecar.exporter
    before = exporter.precompressed
    async with http.get(base_url(sidecar) + "/metrics", headers={"Accept-Encoding": "gzip"}) as response:
        await response.read()
    await wait_for(
        lambda: exporter.precompressed > before, timeout=20, what="a gzip body made after a render"
    )
    cache = exporter._cache
    if ("text", True) in cache:  # unless a newer render has replaced it already
        assert gzip.decompress(cache[("text", True)]) == cache[("text", False)]


async def test_scrape_is_served_from_cache_between_cycles(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, dynamo_interval="60", process_interval="60")
    await _ready(http, sidecar)
    await _metrics_with(http, sidecar, "dynamo_sidecar_endpoint_up")
    generation = sidecar.exporter._rendered_generation
    for _ in range(5):
        await get_text(http, base_url(sidecar) + "/metrics")
    assert sidecar.exporter._rendered_generation == generation


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
async def test_promtool_check_metrics_is_clean(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    await _ready(http, sidecar)
    await post_completion(http, sim.url("frontend"))
    text = await _metrics_with(http, sidecar, "dynamo_sidecar_dynamo_request_rate")
    own = "\n".join(line for line in text.splitlines() if PREFIX in line) + "\n"
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=own, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
    # The whole surface, Dynamo's passthrough included, must at least parse.
    whole = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (whole.stdout + whole.stderr).splitlines() if line.strip()]
    assert not any("error while linting" in line for line in problems)
    # What promtool still flags is Dynamo's own naming (`_ms`, `vllm:`), passed through unchanged.
    assert all(not line.startswith(PREFIX) for line in problems), problems


async def test_healthz_readyz_status(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    status, _ = await get_text(http, base_url(sidecar) + "/healthz")
    assert status == 200
    await _ready(http, sidecar)
    data = await get_json(http, base_url(sidecar) + "/status")
    assert set(data["collectors"]) == {"process", "cgroup", "dynamo_health", "dynamo_metrics", "gpu"}
    assert data["config"]["frontend_url"] == sim.url("frontend")
    assert data["ready"] is True
    # Tasks by what they run (for leak hunting): one loop per collector, the rest named too.
    assert data["tasks_by_coroutine"]["Scheduler._loop"] == len(data["collectors"])
    assert sum(data["tasks_by_coroutine"].values()) == data["tasks"]


async def test_diagnose_formats_and_bad_parameters(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    await _ready(http, sidecar)
    report = await get_json(http, base_url(sidecar) + "/diagnose")
    assert report["version"] == 1 and report["status"] == "ok" and isinstance(report["findings"], list)
    status, text = await get_text(http, base_url(sidecar) + "/diagnose?format=text")
    assert status == 200 and text.startswith("dynamo-sidecar diagnose: OK")
    status, page = await get_text(http, base_url(sidecar) + "/diagnose", headers={"Accept": "text/html"})
    assert status == 200 and "<html>" in page
    for query in ("?format=xml", "?since=yesterday", "?severity=loud"):
        status, _ = await get_text(http, base_url(sidecar) + "/diagnose" + query)
        assert status == 400


async def test_killing_the_frontend_becomes_a_finding_and_sidecar_keeps_serving(
    sim, make_sidecar, http
) -> None:
    sidecar = await make_sidecar(sim)
    await _ready(http, sidecar)
    await sim.stop_part("frontend")
    ids = await wait_for(
        lambda: _has(http, sidecar, "endpoint_refused:frontend"), timeout=10, what="refused finding"
    )
    assert "endpoint_refused:frontend" in ids
    report = await get_json(http, base_url(sidecar) + "/diagnose")
    finding = next(f for f in report["findings"] if f["id"] == "endpoint_refused:frontend")
    assert finding["severity"] == "critical" and finding["category"] == "startup_failure"
    assert any(
        "endpoint_probe_outcome" in e["signal"] and e["value"] == "refused" for e in finding["evidence"]
    )
    # The scrape of the same endpoint fails too, but a closed port says it all: no second
    # finding for the same cause.
    assert "metrics_scrape_failing:frontend" not in {f["id"] for f in report["findings"]}
    assert sidecar.state.value("dynamo_sidecar_scrape_up", endpoint="frontend") == 0
    status, _ = await get_text(http, base_url(sidecar) + "/metrics")
    assert status == 200
    text = await _metrics_with(
        http,
        sidecar,
        'dynamo_sidecar_endpoint_probe_outcome{endpoint="frontend",outcome="refused",probe="health"} 1.0',
    )
    assert text


async def _has(http: aiohttp.ClientSession, sidecar, finding_id: str) -> set[str] | None:
    ids = await finding_ids(http, sidecar)
    return ids if finding_id in ids else None


def test_catalogue_names_are_unique_and_prefixed() -> None:
    names = [spec.name for spec in CATALOGUE]  # the declarations, before a dict collapses duplicates
    assert len(names) == len(set(names))
    assert all(name.startswith(PREFIX) for name in names)
    assert all(spec.type in {"gauge", "counter", "histogram"} for spec in BY_NAME.values())
    assert all(spec.name.endswith("_total") for spec in BY_NAME.values() if spec.type == "counter")


async def test_passthrough_allow_deny_and_off(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(
        sim, passthrough_allow="^dynamo_frontend_", passthrough_deny="_bucket$,^dynamo_frontend_model_"
    )
    await _ready(http, sidecar)
    text = await _metrics_with(http, sidecar, "dynamo_frontend_requests_total")
    assert "dynamo_component_" not in text  # not allowed
    assert "dynamo_frontend_model_ready" not in text  # denied
    # Derived signals still use the series the filters hide from /metrics.
    assert sidecar.state.history.get("dynamo_component_requests_total")
    off = await make_sidecar(sim, passthrough="false")
    await _ready(http, off)
    text = await _metrics_with(http, off, "dynamo_sidecar_scrape_up")
    assert not [line for line in text.splitlines() if line.startswith("dynamo_frontend_")]


def test_prometheus_gets_the_cached_text_and_openmetrics_only_when_asked_for_alone() -> None:
    from exporters.prometheus import OPENMETRICS, TEXT, negotiate

    # What Prometheus 2.42 sends: OpenMetrics preferred, text accepted.
    prometheus = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    assert negotiate(prometheus) == TEXT
    assert negotiate("") == TEXT
    assert negotiate("application/openmetrics-text; version=1.0.0") == OPENMETRICS
