"""Health and metrics collectors against the simulated Dynamo and against hostile servers:
refused, hung, 5xx, malformed, truncated, 10 MB and never-ending bodies."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from collectors.dynamo_health import DynamoHealthCollector, Target
from collectors.dynamo_metrics import DynamoMetricsCollector, parse_exposition
from tests.helpers import RECORDED, free_port


def frontend_target(url: str) -> Target:
    return Target("frontend", "frontend", url, "/health", "/live")


def worker_target(url: str) -> Target:
    return Target("worker", "worker", url, "/health", "/live")


def value(result, name: str, **labels: str) -> float | None:
    for item in result.samples:
        if item.name == "dynamo_sidecar_" + name and set(labels.items()) <= set(item.labels):
            return item.value
    return None


async def test_healthy_frontend_and_worker(sim) -> None:
    collector = DynamoHealthCollector(
        [frontend_target(sim.url("frontend")), worker_target(sim.url("worker"))], 1, 5, 1
    )
    try:
        before = sim.worker_uptime()
        result = await collector.collect()
        after = sim.worker_uptime()
    finally:
        await collector.close()
    assert value(result, "endpoint_up", endpoint="frontend", probe="health") == 1
    assert value(result, "endpoint_status", endpoint="frontend", probe="health", status="healthy") == 1
    # The recorded /health lists one worker twice (one entry per Dynamo endpoint): one instance.
    assert value(result, "frontend_instances", endpoint="frontend") == 1
    assert value(result, "frontend_registered_endpoints", endpoint="frontend") == 2
    assert value(result, "endpoint_up", endpoint="worker", probe="live") == 1
    assert value(result, "worker_endpoint_ready", endpoint="worker", dynamo_endpoint="generate") == 1
    # The uptime the worker reported (secs + nanos) while the collector asked it.
    uptime = value(result, "worker_uptime_seconds", endpoint="worker")
    assert uptime is not None and before - 1e-6 <= uptime <= after + 1e-6
    facts = result.facts.endpoints
    assert "dyn://dynamo.backend.generate" in (facts["frontend"].registered or [])
    assert facts["frontend"].instance_ids and facts["frontend"].first_ok_at > 0


async def test_outcomes_refused_timeout_5xx_malformed_notready(sim) -> None:
    closed_port = free_port()
    collector = DynamoHealthCollector(
        [
            frontend_target(sim.url("frontend")),
            worker_target(sim.url("worker")),
            Target("gone", "worker", f"http://127.0.0.1:{closed_port}", "/health", "/live"),
        ],
        1,
        5,
        http_timeout=0.3,
    )
    try:
        sim.faults.worker_notready = True
        sim.faults.frontend_5xx = True
        result = await collector.collect()
        assert (
            value(result, "endpoint_probe_outcome", endpoint="gone", probe="health", outcome="refused") == 1
        )
        assert (
            value(result, "endpoint_probe_outcome", endpoint="frontend", probe="health", outcome="http_error")
            == 1
        )
        assert value(result, "endpoint_http_status_code", endpoint="frontend", probe="health") == 500
        assert (
            value(result, "endpoint_probe_outcome", endpoint="worker", probe="health", outcome="unhealthy")
            == 1
        )
        assert value(result, "endpoint_status", endpoint="worker", probe="health", status="notready") == 1
        assert value(result, "endpoint_http_status_code", endpoint="worker", probe="health") == 503
        sim.faults.frontend_5xx = False
        sim.faults.frontend_malformed = True
        sim.faults.worker_hang = True
        started = time.monotonic()
        result = await collector.collect()
        assert time.monotonic() - started < 2.0  # bounded by the per-request timeout
        assert (
            value(result, "endpoint_probe_outcome", endpoint="frontend", probe="health", outcome="malformed")
            == 1
        )
        assert (
            value(result, "endpoint_probe_outcome", endpoint="worker", probe="health", outcome="timeout") == 1
        )
        assert value(result, "endpoint_up", endpoint="worker", probe="health") == 0
    finally:
        await collector.close()


async def test_transitions_and_restarts_are_events(sim) -> None:
    collector = DynamoHealthCollector([worker_target(sim.url("worker"))], 1, 5, 1)
    try:
        first = await collector.collect()
        assert not first.events
        sim.faults.worker_notready = True
        second = await collector.collect()
        assert [e.kind for e in second.events].count("health_transition") == 2  # health and live
        event = second.events[0]
        assert event.attributes["from_status"] == "ready" and event.attributes["to_status"] == "notready"
        assert value(second, "endpoint_transitions_total", endpoint="worker", probe="health") == 1
        sim.faults.worker_notready = False
        sim.worker_started -= 100  # pretend it has been up a while...
        await collector.collect()
        await sim.restart_worker()  # ...then it restarts: uptime goes back to ~0
        collector.targets = [worker_target(sim.url("worker"))]
        after = await collector.collect()
        restarts = [e for e in after.events if e.kind == "worker_restart"]
        assert restarts and "restarted" in restarts[0].message
        assert value(after, "worker_restarts_total", endpoint="worker") == 1
    finally:
        await collector.close()


@pytest.fixture
async def hostile() -> AsyncIterator[str]:
    """A server with every broken /metrics body we care about."""
    recorded = (RECORDED / "worker_system_metrics_after_traffic.prom").read_text()

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text=recorded[:5000] + "\n}}}{{{ not a metric\n\x00\x01\n" + recorded[5000:])

    async def truncated(request: web.Request) -> web.Response:
        return web.Response(text=recorded[: len(recorded) // 2])

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"x_total 1\n" * (1024 * 1024))  # 10 MB

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100_000):
            await response.write(b"dynamo_component_requests_total 1\n")
            await asyncio.sleep(0.01)
        return response

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nope")

    app = web.Application()
    for path, handler in (
        ("/garbage/metrics", garbage),
        ("/truncated/metrics", truncated),
        ("/huge/metrics", huge),
        ("/endless/metrics", endless),
        ("/missing/metrics", not_found),
    ):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_metrics_hostile_bodies_are_recorded_not_fatal(hostile: str, sim) -> None:
    names = ["garbage", "truncated", "huge", "endless", "missing"]
    targets = [Target(n, "worker", f"{hostile}/{n}", "/health", "/live") for n in names] + [
        worker_target(sim.url("worker"))
    ]
    collector = DynamoMetricsCollector(
        targets, "/metrics", 1, 10, http_timeout=1.0, max_bytes=8 * 1024 * 1024
    )
    started = time.monotonic()
    try:
        result = await collector.collect()
    finally:
        await collector.close()
    assert time.monotonic() - started < 5
    facts = result.facts.endpoints
    assert facts["garbage"].up is True and facts["garbage"].skipped_lines >= 1
    assert facts["truncated"].up is True
    assert facts["huge"].up is False and facts["huge"].reason == "too_large"
    assert facts["endless"].up is False and facts["endless"].reason == "timeout"
    assert facts["missing"].up is False and facts["missing"].reason == "http_error"
    assert facts["worker"].up is True
    assert value(result, "scrape_errors_total", endpoint="huge", reason="too_large") == 1
    assert value(result, "scrape_errors_total", endpoint="garbage", reason="partial") == 1
    assert any(f.name == "dynamo_component_requests" for f in result.families)


def test_parse_exposition_salvages_blocks() -> None:
    text = (RECORDED / "frontend_metrics_after_traffic.prom").read_text()
    families, skipped = parse_exposition(text)
    assert skipped == 0 and len(families) > 50
    broken = text.replace(
        'dynamo_frontend_model_ready{model="tiny"} 1', 'dynamo_frontend_model_ready{model="tiny" 1'
    )
    families2, skipped2 = parse_exposition(broken)
    assert skipped2 >= 1
    assert len(families2) >= len(families) - 1
    assert parse_exposition("\x00\x01 garbage {{{\n")[0] == []


def test_refused_is_distinguished_from_timeout() -> None:
    # A listener that never accepts fills its backlog: connects then time out, not refuse.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]

        async def probe() -> str:
            collector = DynamoHealthCollector(
                [worker_target(f"http://127.0.0.1:{port}")], 1, 5, http_timeout=0.3
            )
            try:
                result = await collector.collect()
            finally:
                await collector.close()
            return result.facts.endpoints["worker"].probe().outcome

        assert asyncio.run(probe()) == "timeout"


def test_chunked_parse_equals_the_whole_parse(monkeypatch) -> None:
    """Large bodies are parsed in slices so a budget can stop inside a family; the slices must
    give the same families as one parse (checked on Dynamo's recorded exposition, cut small)."""
    import agent.core.exposition as metrics

    text = (RECORDED / "frontend_metrics_after_traffic.prom").read_text()
    whole, _ = parse_exposition(text)
    monkeypatch.setattr(metrics, "CHUNK_LINES", 7)
    sliced = metrics._chunked(text, metrics.Budget(10), [])

    def shape(families):
        return sorted(
            (f.name, f.type, sorted((s.name, s.labels, s.value) for s in f.samples)) for f in families
        )

    assert shape(whole) == shape(sliced)


async def test_a_run_of_failed_scrapes_keeps_when_it_began(sim) -> None:
    """The rule judges a failed scrape once health has looked after its first failure: the
    collector keeps that moment across the run of failures and forgets it on success."""
    collector = DynamoMetricsCollector(
        [frontend_target(sim.url("frontend"))], "/metrics", 1, 10, http_timeout=1.0, max_bytes=1 << 20
    )
    try:
        sim.faults.frontend_malformed = True
        before = time.time()
        first = (await collector.collect()).facts.endpoints["frontend"]
        second = (await collector.collect()).facts.endpoints["frontend"]
        sim.faults.frontend_malformed = False
        recovered = (await collector.collect()).facts.endpoints["frontend"]
    finally:
        await collector.close()
    assert (first.up, first.reason, second.reason) == (False, "malformed", "malformed")
    assert before <= first.failing_since <= time.time()
    assert second.failing_since == first.failing_since
    assert (recovered.up, recovered.failing_since) == (True, 0.0)
