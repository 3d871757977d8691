"""Scenario suite: drive the simulated Dynamo (and real sockets, processes and signals) into
distinct faults; the top finding of /diagnose must name the fault, its category, and the
signal that shows it. A healthy run produces nothing at warning or above."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agent.core.samples import CollectResult
from collectors.base import Collector
from tests.helpers import base_url, free_port, get_json, post_completion, wait_for


@dataclass
class Scenario:
    name: str
    top: str  # expected top finding id
    category: str
    evidence: str  # a substring of one of its evidence signals
    overrides: dict[str, Any]
    fault: Callable[..., Awaitable[Any]]
    timeout: float = 20.0


async def _report(http, sidecar) -> dict:
    return await get_json(http, base_url(sidecar) + "/diagnose?severity=info")


async def kill_frontend(sim, sidecar, http) -> None:
    await sim.stop_part("frontend")


async def hang_worker(sim, sidecar, http) -> None:
    sim.faults.worker_hang = True


async def worker_notready(sim, sidecar, http) -> None:
    sim.faults.worker_notready = True


async def worker_gone(sim, sidecar, http) -> None:
    sim.faults.worker_gone = True


async def stale_instance(sim, sidecar, http) -> None:
    await sim.kill_worker()
    for _ in range(2):
        await post_completion(http, sim.url("frontend"))


async def malformed(sim, sidecar, http) -> None:
    sim.faults.frontend_malformed = True


async def draining(sim, sidecar, http) -> None:
    sim.faults.frontend_draining = True


async def engine_hang(sim, sidecar, http) -> None:
    await wait_for(lambda: sidecar.canary.rounds >= 1, what="a first canary")
    sim.faults.engine_hang = True


async def restart_worker(sim, sidecar, http) -> None:
    await wait_for(
        lambda: sidecar.state.value("dynamo_sidecar_worker_uptime_seconds", default=0) > 0.5, what="uptime"
    )
    sim.worker_started -= 60
    await wait_for(
        lambda: sidecar.state.value("dynamo_sidecar_worker_uptime_seconds", default=0) > 50,
        what="old uptime seen",
    )
    await sim.restart_worker()


LEAKED: list[socket.socket] = []
TASKS: list[asyncio.Task[Any]] = []  # a scenario's own load, cancelled after it


async def close_wait(sim, sidecar, http) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", int(sidecar.config.tcp_peer_roles[0].split("=")[0])))
    server.listen(128)
    for _ in range(60):
        LEAKED.append(socket.create_connection(server.getsockname()))
        conn, _ = server.accept()
        conn.close()
    LEAKED.append(server)


async def dependency_down(sim, sidecar, http) -> None:
    sim.faults.worker_gone = True  # what an etcd outage looks like from the frontend


async def queue_growth(sim, sidecar, http) -> None:
    sim.faults.max_concurrency = 1
    sim.faults.token_delay = 0.05
    tasks = []
    for _ in range(12):  # bounded: 12 requests of ~1 s each, one at a time
        tasks.append(asyncio.create_task(post_completion(http, sim.url("frontend"), max_tokens=20)))
        await asyncio.sleep(0.3)
    TASKS.extend(tasks)


async def fd_exhaustion(sim, sidecar, http) -> None:
    return None  # the process is started with its fds nearly exhausted


class Hanging(Collector):
    name = "stuck_source"

    def __init__(self) -> None:
        super().__init__(interval=0.2, timeout=0.2)

    async def collect(self) -> CollectResult:
        await asyncio.Event().wait()
        return CollectResult()


CLOSED = free_port()
LEAK_PORT = free_port()

SCENARIOS = [
    Scenario(
        "frontend killed",
        "endpoint_refused:frontend",
        "startup_failure",
        "endpoint_probe_outcome",
        {},
        kill_frontend,
    ),
    Scenario(
        "worker hung",
        "endpoint_timeout:worker",
        "connection_anomaly",
        "endpoint_probe_outcome",
        {},
        hang_worker,
    ),
    Scenario(
        "worker notready",
        "worker_notready_endpoints_ready:worker",
        "startup_failure",
        "per-endpoint status",
        {},
        worker_notready,
    ),
    Scenario(
        "no workers",
        "frontend_no_instances:frontend",
        "startup_failure",
        "frontend_instances",
        {},
        worker_gone,
    ),
    Scenario(
        "stale instance",
        "frontend_stale_instances:frontend",
        "connection_anomaly",
        "failures_total",
        {"role": "frontend"},
        stale_instance,
    ),
    Scenario(
        "malformed health",
        "endpoint_bad_response:frontend",
        "connection_anomaly",
        "probe error",
        {},
        malformed,
    ),
    Scenario(
        "frontend draining", "dynamo_draining:frontend", "shutdown", "endpoint_probe_outcome", {}, draining
    ),
    Scenario(
        "hung engine",
        "canary_failing:tiny",
        "performance_degradation",
        "canary_consecutive_failures",
        {"canary_wait": "0.5", "canary_timeout": "0.5", "canary_failures": "2"},
        engine_hang,
    ),
    Scenario(
        "worker restart",
        "worker_restarted:worker",
        "startup_failure",
        "worker_restart event",
        {},
        restart_worker,
    ),
    Scenario(
        "CLOSE_WAIT leak",
        "close_wait_leak:nats",
        "connection_anomaly",
        "close_wait",
        {"tcp_peer_roles": f"{LEAK_PORT}=nats", "tcp_interval": "0.3", "tcp_enabled": "true"},
        close_wait,
    ),
    Scenario(
        "etcd unreachable",
        "dependency_unreachable:etcd",
        "connection_anomaly",
        "probe_outcome",
        {"tcp_probe_targets": f"etcd=127.0.0.1:{CLOSED}", "tcp_interval": "0.3", "tcp_enabled": "true"},
        dependency_down,
    ),
    Scenario(
        "queue growth",
        "queue_growing:frontend",
        "performance_degradation",
        "dynamo_frontend_queued_requests",
        # A queue counts once it stood for `for_seconds` (30 s by default); these 12 requests
        # keep one standing for ~10 s.
        {"signal_window": "10", "canary_enabled": "false", "thresholds": "queue_growing.for_seconds=3"},
        queue_growth,
        timeout=30,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario_top_finding(scenario: Scenario, sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, **scenario.overrides)
    await wait_for(lambda: sidecar.ready, what="ready")
    await scenario.fault(sim, sidecar, http)

    async def top() -> dict | None:
        report = await _report(http, sidecar)
        findings = report["findings"]
        return findings[0] if findings and findings[0]["id"] == scenario.top else None

    try:
        finding = await wait_for(
            top, timeout=scenario.timeout, interval=0.2, what=f"top finding {scenario.top}"
        )
    except AssertionError:
        report = await _report(http, sidecar)
        raise AssertionError(f"top findings: {[f['id'] for f in report['findings']]}") from None
    assert finding["category"] == scenario.category
    assert any(scenario.evidence in e["signal"] for e in finding["evidence"]), finding["evidence"]
    assert finding["actions"]
    while TASKS:
        TASKS.pop().cancel()
    while LEAKED:
        LEAKED.pop().close()


@pytest.mark.slow
async def test_dependency_outage_explains_missing_instances(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(
        sim, tcp_probe_targets=f"etcd=127.0.0.1:{CLOSED}", tcp_interval="0.3", tcp_enabled="true"
    )
    sim.faults.worker_gone = True

    async def linked() -> dict | None:
        report = await _report(http, sidecar)
        found = {f["id"]: f for f in report["findings"]}
        effect = found.get("frontend_no_instances:frontend")
        return effect if effect and "dependency_unreachable:etcd" in effect["explained_by"] else None

    effect = await wait_for(linked, timeout=15, interval=0.2, what="etcd outage explains no instances")
    assert effect["severity"] == "critical"


@pytest.mark.slow
async def test_collector_failing_scenario(make_sidecar, http) -> None:
    sidecar = await make_sidecar(collectors=[Hanging()])
    report = await wait_for(
        lambda: _top_is(http, sidecar, "collector_failing:stuck_source"), timeout=10, what="collector finding"
    )
    assert report["category"] == "sidecar"


async def _top_is(http, sidecar, finding_id: str) -> dict | None:
    report = await _report(http, sidecar)
    return report["findings"][0] if report["findings"] and report["findings"][0]["id"] == finding_id else None


@pytest.mark.slow
async def test_fd_exhaustion_of_a_real_process(sim, make_sidecar, http) -> None:
    code = (
        "import resource, os, time\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "files = [open(os.devnull) for _ in range(60)]\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        sidecar = await make_sidecar(sim, process_pid=str(proc.pid))
        finding = await wait_for(lambda: _find(http, sidecar, "fd_exhaustion"), timeout=10, what="fd finding")
        assert finding["subject"].endswith(f"/{proc.pid}")
        assert finding["category"] == "resource_pressure"
    finally:
        proc.kill()
        proc.wait()


async def _find(http, sidecar, rule: str) -> dict | None:
    report = await _report(http, sidecar)
    return next((f for f in report["findings"] if f["rule"] == rule), None)


@pytest.mark.slow
async def test_ttft_regression_against_own_baseline(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, signal_window="10", canary_enabled="false", dynamo_interval="0.5")
    deadline = time.monotonic() + 22
    sent = 0
    while time.monotonic() < deadline and sent < 400:  # baseline: fast first tokens
        await post_completion(http, sim.url("frontend"), max_tokens=1)
        sent += 1
        await asyncio.sleep(0.1)
    sim.faults.ttft_extra = 0.3  # then every first token takes 300 ms longer
    finding = None
    deadline = time.monotonic() + 15
    while finding is None and time.monotonic() < deadline and sent < 800:
        await post_completion(http, sim.url("frontend"), max_tokens=1)
        sent += 1
        finding = await _find(http, sidecar, "latency_regression")
    assert finding is not None and finding["subject"] == "ttft"
    assert finding["category"] == "performance_degradation"
    assert any("time_to_first_token" in e["signal"] for e in finding["evidence"])


@pytest.mark.slow
async def test_healthy_run_no_warnings(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, canary_wait="0.5")
    await wait_for(lambda: sidecar.canary.rounds >= 2, timeout=15, what="two canary rounds")
    for _ in range(10):
        assert (await post_completion(http, sim.url("frontend")))[0] == 200
    report = await get_json(http, base_url(sidecar) + "/diagnose?severity=warning")
    assert report["findings"] == [], [f["id"] for f in report["findings"]]
    assert report["status"] == "ok"
