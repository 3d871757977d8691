"""Issue 25 against a real Dynamo 1.6.1: each misdiagnosis a fault suite found, reproduced
here for real, and what the sidecar says now. Rule-level cases on recorded states are in
tests/test_findings_honest.py.

One "pod" (a frontend and two mocker workers, --max-num-seqs 2 each) is shared by the tests
that leave it serving; the test that kills a worker runs last in this module."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from agent.core.facts import TcpFacts
from tests.helpers import base_url, get_json, wait_for
from tests.real_dynamo import (
    ETCD_MISSING,
    REAL_DYNAMO_MARKS,
    Etcd,
    RealDynamo,
    dynamo_python,
    etcd_binary,
    free_i16_port,
    http_get,
    own_processes,
)

pytestmark = REAL_DYNAMO_MARKS


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealDynamo]:
    python = dynamo_python()
    assert python is not None
    real = RealDynamo(python, tmp_path_factory.mktemp("pod"))
    try:
        ports = []
        for _ in range(2):
            real.worker_port = free_i16_port()
            real.start_worker(speedup=1.0, extra_args=["--max-num-seqs", "2"])
            ports.append(real.worker_port)
        real.start_frontend()
        real.wait_model()
        real.worker_urls = [f"http://127.0.0.1:{port}" for port in ports]  # type: ignore[attr-defined]
        yield real
    finally:
        real.stop()


async def _sidecar(make_sidecar: Any, dynamo: RealDynamo, **extra: Any) -> Any:
    extra.setdefault("canary_enabled", "false")
    extra.setdefault("worker_system_urls", ",".join(getattr(dynamo, "worker_urls", [dynamo.worker_url])))
    sidecar = await make_sidecar(
        frontend_url=dynamo.frontend_url,
        process_pid="0",
        process_patterns=own_processes(dynamo),
        gpu_enabled="false",
        **extra,
    )
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    return sidecar


def _ids(report: dict[str, Any]) -> dict[str, str]:
    return {f["id"]: f["severity"] for f in report["findings"]}


def _by_id(report: dict[str, Any], finding: str) -> dict[str, Any] | None:
    return next((f for f in report["findings"] if f["id"] == finding), None)


async def _until(http: aiohttp.ClientSession, sidecar: Any, check: Any, timeout: float, what: str) -> Any:
    async def probe() -> dict[str, Any] | None:
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        return report if check(report) else None

    return await wait_for(probe, timeout=timeout, interval=0.3, what=what)


def _idle(dynamo: RealDynamo) -> bool:
    status, body = http_get(dynamo.frontend_url + "/metrics")
    lines = [line for line in body.splitlines() if line.startswith("dynamo_frontend_inflight_requests")]
    return status == 200 and all(line.rsplit(" ", 1)[1] in {"0", "0.0"} for line in lines)


async def _streams(url: str, clients: int, stop: asyncio.Event, tokens: int = 200) -> None:
    """Clients that keep a long stream each in flight until `stop` (bounded by it)."""

    async def one(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                body = {"model": "tiny", "prompt": "hi", "max_tokens": tokens, "stream": True}
                async with session.post(url + "/v1/completions", json=body) as response:
                    async for _ in response.content.iter_any():
                        if stop.is_set():
                            return
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))


async def test_a_sidecar_restarted_next_to_a_serving_dynamo_probes_at_once(
    pod: RealDynamo, make_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    """Dynamo serves; the sidecar (re)starts with the default 60 s start-up grace. The
    canary probes within one canary interval, not after 60 s."""
    await wait_for(lambda: _idle(pod), timeout=30, what="the pod idle")
    started = time.monotonic()
    sidecar = await _sidecar(make_sidecar, pod, canary_enabled="true", canary_wait="1", startup_grace="60")
    await wait_for(lambda: "tiny" in sidecar.canary.models, timeout=10, what="a first canary result")
    assert time.monotonic() - started < 1 + 1 + 3  # canary_wait + one interval + start-up
    status = await get_json(http, base_url(sidecar) + "/canaryz")
    assert status["status"] == "ok", status
    assert status["canary"]["models"]["tiny"]["last"]["outcome"] == "ok", status


async def test_client_cancellations_are_not_request_failures(
    pod: RealDynamo, make_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    """Clients that close their streams: Dynamo counts them as status="error",
    error_type="cancelled"; that is not a failure of the server."""
    sidecar = await _sidecar(make_sidecar, pod)
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            body = {"model": "tiny", "prompt": "hi", "max_tokens": 200, "stream": True}
            async with session.post(pod.frontend_url + "/v1/completions", json=body) as response:
                await response.content.readline()  # the first chunk, then the client goes away

    def cancelled() -> float:
        return sum(
            s.value
            for s in sidecar.state.find("dynamo_frontend_requests_total", "dynamo_metrics")
            if dict(s.labels).get("error_type") == "cancelled"
        )

    seen = cancelled()
    await wait_for(
        lambda: cancelled() >= seen + 4 or cancelled() >= 4, timeout=10, what="4 cancellations counted"
    )
    report = await get_json(http, base_url(sidecar) + "/diagnose")
    assert not [f for f in report["findings"] if f["rule"] == "request_failures"], _ids(report)


async def test_a_queue_there_from_the_first_sample_is_found(
    pod: RealDynamo, make_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    """16 streams against two workers of --max-num-seqs 2: 12 wait behind 4 running from
    the first sample the sidecar takes. Never "growing", so it read as OK for minutes."""
    stop = asyncio.Event()
    load = asyncio.create_task(_streams(pod.frontend_url, 16, stop))
    try:

        def queued() -> bool:
            status, body = http_get(pod.frontend_url + "/metrics")
            values = [
                line for line in body.splitlines() if line.startswith("dynamo_frontend_queued_requests")
            ]
            return status == 200 and any(float(line.rsplit(" ", 1)[1]) >= 10 for line in values)

        await wait_for(queued, timeout=20, what="a queue of 10 at the frontend")
        sidecar = await _sidecar(make_sidecar, pod, thresholds="queue_growing.for_seconds=3")
        report = await _until(
            http, sidecar, lambda r: _by_id(r, "queue_growing:frontend") is not None, 15, "queue_growing"
        )
        finding = _by_id(report, "queue_growing:frontend")
        assert finding is not None and finding["severity"] == "warning"
        assert "with 4 running" in finding["summary"], finding["summary"]
    finally:
        stop.set()
        await asyncio.gather(load, return_exceptions=True)


async def test_a_worker_lost_of_two_says_what_is_left_and_is_a_warning(
    pod: RealDynamo, make_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    """Last in this module: it kills one of the pod's workers. One of two workers gone
    while the other serves used to be a critical with no capacity context, and the search
    for a wrong port took the live worker's port for the dead one's."""
    await wait_for(lambda: _idle(pod), timeout=30, what="the pod idle")
    sidecar = await _sidecar(make_sidecar, pod)
    stop = asyncio.Event()
    load = asyncio.create_task(_streams(pod.frontend_url, 3, stop, tokens=20))
    try:
        await wait_for(lambda: (sidecar.signals.frontend_inflight or 0) >= 1, timeout=20, what="traffic")
        pod.workers[0].send_signal(signal.SIGKILL)
        report = await _until(
            http,
            sidecar,
            lambda r: _by_id(r, "endpoint_refused:worker-0") is not None,
            15,
            "worker-0 refused",
        )
        deadline = time.monotonic() + 3  # and never critical while the other worker serves
        while True:
            assert report["status"] != "critical", _ids(report)
            assert "endpoint_wrong_port:worker-0" not in _ids(report)
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
            report = await get_json(http, base_url(sidecar) + "/diagnose")
        refused = _by_id(report, "endpoint_refused:worker-0")
        assert refused is not None and refused["severity"] == "warning"
        assert "1 of 2 workers in this pod still answer (worker-1)" in refused["summary"]
    finally:
        stop.set()
        await asyncio.gather(load, return_exceptions=True)


# --- their own Dynamo ---------------------------------------------------------------------------


async def test_a_slow_start_is_starting_and_a_renamed_model_leaves_the_canary(
    dynamo: RealDynamo, make_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    """The worker registers, then its engine takes 4 s to start (mocker --startup-time):
    a request waiting then was called a critical hung engine inside the start-up grace.
    Then the worker comes back serving another model name: /canaryz used to keep probing
    the old name for the 15-minute history window."""
    dynamo.start_frontend()
    sidecar = await _sidecar(
        make_sidecar, dynamo, startup_grace="60", canary_enabled="true", canary_wait="1", canary_timeout="1.5"
    )
    dynamo.start_worker(extra_args=["--startup-time", "4"])
    dynamo.wait_model()
    results: list[tuple[int, bytes]] = []
    waiting = threading.Thread(target=lambda: results.append(dynamo.completion("slow-start", 3, timeout=40)))
    waiting.start()
    report = await _until(
        http, sidecar, lambda r: _by_id(r, "dynamo_starting:engine") is not None, 15, "the engine starting"
    )
    while waiting.is_alive():  # info while it starts, never critical, until it serves
        assert report["status"] == "ok", _ids(report)
        await asyncio.sleep(0.3)
        report = await get_json(http, base_url(sidecar) + "/diagnose")
    await asyncio.to_thread(waiting.join)
    assert results and results[0][0] == 200
    await wait_for(lambda: sidecar.canary.failing_models == [], timeout=10, what="no failing canary")

    assert dynamo.worker is not None
    dynamo.worker.send_signal(signal.SIGTERM)
    dynamo.worker.wait(timeout=30)
    dynamo.start_worker(extra_args=["--model-name", "tiny2"])
    dynamo.wait_model(model="tiny2")
    listed = time.monotonic()
    rounds = sidecar.canary.rounds

    async def only_tiny2() -> bool:
        status = await get_json(http, base_url(sidecar) + "/canaryz")
        return set(status["canary"]["models"]) == {"tiny2"} and status["status"] == "ok"

    await wait_for(only_tiny2, timeout=20, what="/canaryz with tiny2 alone")
    assert sidecar.canary.rounds - rounds <= 2, "within a round or two of the new name being listed"
    assert time.monotonic() - listed < 10


@pytest.mark.skipif(etcd_binary() is None, reason=ETCD_MISSING)
async def test_etcd_lost_is_the_cause_of_dynamos_shutdown(
    dynamo: RealDynamo, make_sidecar: Any, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    """An etcd-backed Dynamo (DYN_DISCOVERY_BACKEND=etcd, ETCD_ENDPOINTS=http://...).
    Healthy: no etcd finding (GET / used to answer 404: critical from the first second).
    etcd killed: it is the top finding, and Dynamo's own shutdown a lease TTL later (through
    its SIGTERM stages) is folded under it, not a drain."""
    etcd = Etcd(tmp_path)
    etcd.start()
    try:
        dynamo.env.update(DYN_DISCOVERY_BACKEND="etcd", ETCD_ENDPOINTS=etcd.url, ETCD_LEASE_TTL="3")
        dynamo.start_worker()
        dynamo.start_frontend()
        dynamo.wait_model()
        sidecar = await _sidecar(
            make_sidecar,
            dynamo,
            tcp_enabled="true",
            tcp_interval="0.3",
            tcp_probe_targets="etcd=" + etcd.url,
            log_files=f"{dynamo.frontend_log},{dynamo.worker_log}",
        )

        def etcd_probes() -> int:
            facts = sidecar.state.facts(TcpFacts)
            return sum(1 for p in facts.probes.values() if p.role == "etcd" and p.outcome == "ok")

        await wait_for(etcd_probes, timeout=10, what="etcd probed ok")
        generation = sidecar.state.generation
        await wait_for(
            lambda: sidecar.state.generation >= generation + 6, timeout=10, what="more collections"
        )
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        assert not [f for f in report["findings"] if f["rule"] == "dependency_unreachable"], _ids(report)

        etcd.kill()
        report = await _until(
            http,
            sidecar,
            lambda r: r["findings"] and r["findings"][0]["id"] == "dependency_unreachable:etcd",
            10,
            "etcd on top",
        )
        assert dynamo.worker is not None
        await asyncio.to_thread(dynamo.worker.wait, 30)  # Dynamo gives up its lost lease

        def folded(r: dict[str, Any]) -> bool:
            refused = _by_id(r, "endpoint_refused:worker")
            return bool(refused and "dependency_unreachable:etcd" in refused["explained_by"])

        report = await _until(http, sidecar, folded, 15, "the worker's shutdown folded under etcd")
        top = report["findings"][0]
        assert top["id"] == "dependency_unreachable:etcd" and top["severity"] == "critical"
        assert not [f for f in report["findings"] if f["rule"] == "dynamo_stopped_after_drain"], _ids(report)
        unexplained = [
            f["id"] for f in report["findings"] if f["severity"] == "critical" and not f["explained_by"]
        ]
        # Beside etcd only the host's own sockets may speak (this machine runs other tests).
        assert unexplained == ["dependency_unreachable:etcd"], unexplained
    finally:
        etcd.kill()
