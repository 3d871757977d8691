"""Findings from real faults in the simulated Dynamo, read through /diagnose."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from agent.core.facts import HealthFacts
from agent.core.samples import CollectResult
from collectors.base import Collector
from tests.helpers import base_url, finding_ids, free_port, get_json, wait_for


async def _finding(http: aiohttp.ClientSession, sidecar, finding_id: str, timeout: float = 10) -> dict:
    async def find() -> dict | None:
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        return next((f for f in report["findings"] if f["id"] == finding_id), None)

    return await wait_for(find, timeout=timeout, what=finding_id)


class Hanging(Collector):
    name = "hanging"

    def __init__(self) -> None:
        super().__init__(interval=0.1, timeout=0.2)

    async def collect(self) -> CollectResult:
        await asyncio.Event().wait()
        return CollectResult()


async def test_collector_failure_is_a_finding_with_evidence(make_sidecar, http) -> None:
    sidecar = await make_sidecar(collectors=[Hanging()])
    finding = await _finding(http, sidecar, "collector_failing:hanging")
    assert finding["category"] == "sidecar" and finding["severity"] == "warning"
    assert any("did not finish within 0.2s" in str(e["value"]) for e in finding["evidence"])


async def test_worker_hang_is_timeout_not_refused(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    sim.faults.worker_hang = True
    finding = await _finding(http, sidecar, "endpoint_timeout:worker")
    assert finding["severity"] == "critical" and finding["category"] == "connection_anomaly"
    assert "endpoint_refused:worker" not in await finding_ids(http, sidecar)


async def test_worker_notready_with_ready_endpoints(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    sim.faults.worker_notready = True
    finding = await _finding(http, sidecar, "worker_notready_endpoints_ready:worker")
    assert "DYN_HEALTH_CHECK_ENABLED" in finding["actions"][0]
    assert any(
        e["signal"] == "per-endpoint status"
        and e["value"] == {"generate": "ready", "worker_kv_query_source_acf640f27427f": "ready"}
        for e in finding["evidence"]
    )
    # The generic "not ready" rule stays quiet: the specific one explains it.
    assert "dynamo_not_ready:worker" not in await finding_ids(http, sidecar)


async def test_frontend_healthy_with_zero_instances(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    sim.faults.worker_gone = True
    finding = await _finding(http, sidecar, "frontend_no_instances:frontend")
    assert finding["severity"] == "critical"
    assert any(
        e["signal"].startswith("dynamo_sidecar_frontend_instances") and e["value"] == 0
        for e in finding["evidence"]
    )


async def test_malformed_health_body_is_recorded(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    sim.faults.frontend_malformed = True
    finding = await _finding(http, sidecar, "endpoint_bad_response:frontend")
    assert any("not JSON" in str(e["value"]) for e in finding["evidence"])
    scrape = await _finding(http, sidecar, "metrics_scrape_failing:frontend")
    assert scrape["severity"] == "warning"


async def test_healthy_run_has_no_warnings(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim)
    await wait_for(lambda: sidecar.ready, what="ready")
    await wait_for(lambda: sidecar.state.collectors["dynamo_health"].runs["ok"] >= 3, what="a few cycles")
    report = await get_json(http, base_url(sidecar) + "/diagnose?severity=warning")
    assert report["findings"] == [] and report["status"] == "ok"


async def test_wrong_worker_port_names_the_port_dynamo_answers_on(sim, make_sidecar, http) -> None:
    """The process collector sees which ports the Dynamo process (here: this test process,
    which serves the simulator) listens on; the health collector finds the worker's health on
    one of them. The frontend's port answers health too, but with a frontend's body."""
    wrong = f"http://127.0.0.1:{free_port()}"
    sidecar = await make_sidecar(sim, worker_system_urls=wrong)

    async def finding() -> dict | None:
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        return next((f for f in report["findings"] if f["rule"] == "endpoint_wrong_port"), None)

    found = await wait_for(finding, timeout=15, what="endpoint_wrong_port")
    assert f"port {sim.ports['worker']}" in found["summary"]
    view = sidecar.state.facts(HealthFacts).endpoints["worker"]
    assert view.answers_on is not None and view.answers_on.port == sim.ports["worker"]
    frontend = sidecar.state.facts(HealthFacts).endpoints["frontend"]
    assert frontend.first_ok_at > 0 and frontend.models_seen == {"tiny": pytest.approx(time.time(), abs=30)}
