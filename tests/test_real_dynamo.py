"""The sidecar against a real Dynamo 1.6.1 (frontend + mocker engine on CPU, loopback only).

Each behaviour of a real Dynamo worth a finding (docs/development.md lists them) is
reproduced here against the real thing, and the sidecar's view must name it.
"""

from __future__ import annotations

import asyncio
import signal
import threading

from agent.core.facts import HealthFacts
from tests.helpers import base_url, get_json, get_text, wait_for
from tests.real_dynamo import REAL_DYNAMO_MARKS, RealDynamo, own_processes

pytestmark = REAL_DYNAMO_MARKS  # the `dynamo` fixture is in tests/conftest.py


async def _finding(http, sidecar, finding_id: str, timeout: float = 30) -> dict:
    async def find() -> dict | None:
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        return next((f for f in report["findings"] if f["id"] == finding_id), None)

    return await wait_for(find, timeout=timeout, interval=0.2, what=finding_id)


async def _sidecar_for(make_sidecar, dynamo: RealDynamo, **extra):
    extra.setdefault("canary_enabled", "false")  # counts must be the test's own requests
    return await make_sidecar(
        frontend_url=dynamo.frontend_url,
        worker_system_urls=dynamo.worker_url,
        process_pid="0",
        process_patterns=own_processes(dynamo),  # not other Dynamo processes on this machine
        log_files=f"{dynamo.frontend_log},{dynamo.worker_log}",
        **extra,
    )


def _requests_total(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("dynamo_frontend_requests_total{") and 'status="success"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_sidecar_view_matches_real_dynamo(dynamo: RealDynamo, make_sidecar, http) -> None:
    dynamo.start_worker()
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar_for(make_sidecar, dynamo)
    await wait_for(lambda: sidecar.ready, timeout=20, what="sidecar ready")
    for index in range(6):
        status, _ = await asyncio.to_thread(dynamo.completion, f"real-{index}", 4, index % 2 == 0)
        assert status == 200
    _, direct = await get_text(http, dynamo.frontend_url + "/metrics")
    assert _requests_total(direct) == 6

    async def sidecar_metrics() -> str | None:
        _, text = await get_text(http, base_url(sidecar) + "/metrics")
        return text if _requests_total(text) == 6 else None

    text = await wait_for(sidecar_metrics, timeout=20, what="sidecar passthrough to show 6 requests")
    for needle in (
        'dynamo_sidecar_endpoint_up{endpoint="frontend",probe="health"} 1.0',
        'dynamo_sidecar_endpoint_up{endpoint="worker",probe="health"} 1.0',
        'dynamo_sidecar_worker_endpoint_ready{dynamo_endpoint="generate",endpoint="worker"} 1.0',
        'dynamo_sidecar_frontend_models{endpoint="frontend"} 1.0',
        "dynamo_component_requests_total{",
        "dynamo_frontend_time_to_first_token_seconds_bucket{",
        'process="dynamo.mocker"',
        'process="dynamo.frontend"',
    ):
        assert needle in text, needle
    assert sidecar.state.value("dynamo_sidecar_frontend_instances") >= 1
    # TTFT quantiles derived from Dynamo's histogram.
    await wait_for(lambda: ("ttft", 0.99) in sidecar.signals.latency, timeout=20, what="ttft p99")

    # The request's Dynamo log lines, by the x-request-id we sent.
    async def lines() -> dict | None:
        async with http.get(base_url(sidecar) + "/diagnose/request/real-3") as response:
            return await response.json() if response.status == 200 else None

    found = await wait_for(lines, timeout=20, what="log lines of real-3")
    assert all(line["x_request_id"] == "real-3" for line in found["lines"])
    report = await get_json(http, base_url(sidecar) + "/diagnose?severity=warning")
    assert report["findings"] == [], report["findings"]


async def test_frontend_healthy_with_zero_instances(dynamo: RealDynamo, make_sidecar, http) -> None:
    dynamo.start_frontend()
    sidecar = await make_sidecar(
        frontend_url=dynamo.frontend_url,
        role="frontend",
        process_pid="0",
        process_patterns=own_processes(dynamo),
    )
    finding = await _finding(http, sidecar, "frontend_no_instances:frontend")
    assert finding["severity"] == "critical"
    health = sidecar.state.facts(HealthFacts).endpoints["frontend"].probe()
    assert health.status == "healthy" and health.status_code == 200  # what a k8s probe sees


async def test_worker_notready_without_health_check_payloads(dynamo: RealDynamo, make_sidecar, http) -> None:
    dynamo.start_worker(health_check=False)
    sidecar = await make_sidecar(
        worker_system_urls=dynamo.worker_url,
        role="worker",
        process_pid="0",
        process_patterns=own_processes(dynamo),
    )
    finding = await _finding(http, sidecar, "worker_notready_endpoints_ready:worker")
    assert "DYN_HEALTH_CHECK_ENABLED" in finding["actions"][0]
    probe = sidecar.state.facts(HealthFacts).endpoints["worker"].probe()
    assert probe.status_code == 503 and probe.status == "notready"


async def test_worker_sigkill_stale_instance_then_restart(dynamo: RealDynamo, make_sidecar, http) -> None:
    dynamo.start_worker()
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar_for(make_sidecar, dynamo)
    await wait_for(
        lambda: sidecar.state.value("dynamo_sidecar_worker_uptime_seconds", default=0) > 1.5,
        timeout=30,
        what="worker uptime > 1.5s",
    )
    dynamo.signal_worker(signal.SIGKILL)
    refused = await _finding(http, sidecar, "endpoint_refused:worker")
    assert refused["severity"] == "critical"
    # Requests through the frontend fail while /health (and, for ~8 s, /v1/models) still list
    # the dead instance. A refused worker probe alone is no proof of a stale registration (the
    # sidecar may probe a wrong port); the failed requests are.
    status, body = await asyncio.to_thread(dynamo.completion, "after-kill", 2)
    assert status == 503, body

    async def stale_with_failures() -> dict | None:
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        found = next((f for f in report["findings"] if f["id"] == "frontend_stale_instances:frontend"), None)
        if found is None or not any("failures_total" in e["signal"] for e in found["evidence"]):
            return None
        return found

    stale = await wait_for(stale_with_failures, timeout=10, what="stale instances shown by failed requests")
    assert "endpoint_refused:worker" in stale["explained_by"]
    dynamo.worker.wait(timeout=10)  # type: ignore[union-attr]
    dynamo.start_worker()
    restarted = await _finding(http, sidecar, "worker_restarted:worker", timeout=60)
    assert "restarted" in restarted["evidence"][0]["value"]
    dynamo.wait_model()
    await wait_for(
        lambda: sidecar.state.value("dynamo_sidecar_endpoint_up", endpoint="worker", probe="health") == 1,
        timeout=30,
        what="worker up again",
    )


async def test_worker_sigterm_under_load(dynamo: RealDynamo, make_sidecar, http) -> None:
    dynamo.start_worker(speedup=0.1)  # ~57 ms a token
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar_for(make_sidecar, dynamo)
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(dynamo.completion(f"load-{i}", 40, timeout=60)[0]))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    # The frontend's in-flight gauge counts a request before it is routed: one the frontend
    # routes after the signal gets a 503 (the worker has already left discovery). That split
    # is Dynamo's and varies with load, so this test pins the sidecar's view, not Dynamo's.
    await wait_for(
        lambda: (sidecar.signals.inflight_total() or 0) >= 4, timeout=20, what="4 in-flight requests seen"
    )
    dynamo.signal_worker(signal.SIGTERM)
    # The system port closes at once: the sidecar names it "refused" (not a hang).
    await wait_for(
        lambda: (
            sidecar.state.value(
                "dynamo_sidecar_endpoint_probe_outcome", endpoint="worker", probe="health", outcome="refused"
            )
            == 1
        ),
        timeout=20,
        what="worker refused",
    )
    for thread in threads:
        await asyncio.to_thread(thread.join, 60)
    # Every request ended with an answer, none hung past the timeout (a hang raises in the
    # thread and leaves results short).
    assert len(results) == 4 and set(results) <= {200, 503}, results
    events = [
        e for e in sidecar.state.events if e.kind == "health_transition" and e.source == "worker/health"
    ]
    assert events and events[-1].attributes["to_outcome"] == "refused"


async def test_frontend_sigterm_is_draining(dynamo: RealDynamo, make_sidecar, http) -> None:
    dynamo.start_worker(speedup=0.1)
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar_for(make_sidecar, dynamo)
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(dynamo.completion("inflight", 40, stream=True, timeout=60)[0])
    )
    thread.start()
    await wait_for(lambda: (sidecar.signals.frontend_inflight or 0) >= 1, timeout=20, what="in flight")
    dynamo.frontend.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    finding = await _finding(http, sidecar, "dynamo_draining:frontend", timeout=10)
    assert finding["category"] == "shutdown"
    live = sidecar.state.facts(HealthFacts).endpoints["frontend"].probe("live")
    assert live.status == "shutting_down" and live.status_code == 503
    await asyncio.to_thread(thread.join, 60)
    assert results == [200]


async def test_canary_through_real_dynamo_is_found_in_its_logs(
    dynamo: RealDynamo, make_sidecar, http
) -> None:
    dynamo.start_worker()
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar_for(
        make_sidecar, dynamo, canary_enabled="true", canary_wait="1", canary_stream="true"
    )
    await wait_for(
        lambda: sidecar.canary.models.get("tiny") and sidecar.canary.models["tiny"].counts["ok"] >= 1,
        timeout=30,
        what="a successful canary through the real frontend",
    )
    last = sidecar.canary.models["tiny"].last
    assert last is not None and last.ttft is not None

    async def logged() -> dict | None:
        async with http.get(base_url(sidecar) + f"/diagnose/request/{last.request_id}") as response:
            return await response.json() if response.status == 200 else None

    found = await wait_for(logged, timeout=20, what="the canary's x_request_id in Dynamo's JSONL logs")
    trace_id = last.traceparent.split("-")[1]
    assert any(line.get("trace_id") == trace_id for line in found["lines"])  # traceparent joined
