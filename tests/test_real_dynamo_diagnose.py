"""Diagnose v2 against a real Dynamo 1.6.1 (frontend + mocker, CPU, loopback): each hard case
where the top finding used to be a symptom, late, or a false critical, and what it is now."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

from agent.core.facts import HealthFacts, TcpFacts
from tests.helpers import base_url, free_port, get_json, wait_for
from tests.real_dynamo import REAL_DYNAMO_MARKS, RealDynamo, own_processes

pytestmark = REAL_DYNAMO_MARKS  # the `dynamo` fixture is in tests/conftest.py


async def _sidecar(make_sidecar, dynamo: RealDynamo, **extra: Any):
    extra.setdefault("canary_enabled", "false")
    extra.setdefault("worker_system_urls", dynamo.worker_url)
    extra.setdefault("log_files", f"{dynamo.frontend_log},{dynamo.worker_log}")
    extra.setdefault("tcp_enabled", "false")
    return await make_sidecar(
        frontend_url=dynamo.frontend_url,
        process_pid="0",
        process_patterns=own_processes(dynamo),
        gpu_enabled="false",
        **extra,
    )


async def _report(http, sidecar) -> dict[str, Any]:
    return await get_json(http, base_url(sidecar) + "/diagnose")


async def _until(http, sidecar, check, timeout: float, what: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        report = await _report(http, sidecar)
        return report if check(report) else None

    return await wait_for(probe, timeout=timeout, interval=0.3, what=what)


def _by_rule(report: dict[str, Any], rule: str) -> dict[str, Any] | None:
    return next((f for f in report["findings"] if f["rule"] == rule), None)


def _top(report: dict[str, Any]) -> dict[str, Any]:
    return report["findings"][0]


async def test_stopped_worker_is_the_root_cause_and_canary_keeps_probing(
    dynamo: RealDynamo, make_sidecar, http
) -> None:
    """Cases 1 and 6: SIGSTOP. The stopped process is the top finding; no-instances and the
    canary failures that follow are folded under it; the canary keeps probing the de-listed
    model. After SIGCONT the worker never re-registers: registration lost is the cause.
    A second sidecar reads no logs and sees the sockets (issue 25): the stopped worker's
    unread probe connections in CLOSE_WAIT are not a leak, and the lost registration is
    found from the facts (a ready worker whose instance the frontend does not list)."""
    dynamo.start_worker()
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar(
        make_sidecar, dynamo, canary_enabled="true", canary_wait="1", canary_timeout="1.5"
    )
    without_logs = await _sidecar(
        make_sidecar,
        dynamo,
        log_files="",
        tcp_enabled="true",
        tcp_interval="0.5",
        thresholds="worker_registration_lost.unlisted_seconds=3",
    )
    await wait_for(lambda: sidecar.ready and without_logs.ready, timeout=20, what="ready")
    dynamo.signal_worker(signal.SIGSTOP)

    report = await _until(
        http,
        sidecar,
        lambda r: r["findings"] and _top(r)["rule"] == "process_stalled",
        timeout=10,
        what="process_stalled on top",
    )
    assert _top(report)["severity"] == "critical"

    def folded(r: dict[str, Any]) -> bool:
        no_instances, canary = _by_rule(r, "frontend_no_instances"), _by_rule(r, "canary_failing")
        return (
            bool(no_instances and canary and no_instances["explained_by"] and canary["explained_by"])
            and _top(r)["rule"] == "process_stalled"
        )

    report = await _until(http, sidecar, folded, timeout=60, what="no instances and canary folded under it")
    canary = _by_rule(report, "canary_failing")
    assert canary is not None and any(e["signal"] == "GET /v1/models" for e in canary["evidence"])
    status = await get_json(http, base_url(sidecar) + "/canaryz")
    assert status["status"] == "failing"
    # ~15 s of probes the stopped worker never read: well past close_wait_leak's 50 sockets.
    unread = without_logs.state.facts(TcpFacts).close_wait.get("worker_system", 0)
    assert unread >= 50, unread
    # Scoped to the worker's sockets: the sidecar sees the host's whole network namespace
    # here, where other tests' sockets (peer role "other") come and go.
    leaks = {
        f["id"] for f in (await _report(http, without_logs))["findings"] if f["rule"] == "close_wait_leak"
    }
    assert "close_wait_leak:worker_system" not in leaks, leaks

    dynamo.signal_worker(signal.SIGCONT)
    await _until(
        http,
        sidecar,
        lambda r: r["findings"] and _top(r)["rule"] == "worker_registration_lost",
        timeout=40,
        what="registration lost on top after SIGCONT",
    )
    report = await _until(
        http,
        without_logs,
        lambda r: r["findings"] and _top(r)["id"] == "worker_registration_lost:discovery",
        timeout=20,
        what="registration lost on top, without log_files",
    )
    assert "answers ready, but the frontend has not listed its instance" in _top(report)["summary"]
    assert "frontend_no_instances:frontend" in _top(report)["explains"]


async def test_wrong_worker_port_is_its_own_finding_not_a_critical(
    dynamo: RealDynamo, make_sidecar, http
) -> None:
    """Case 2: worker_system_urls at a wrong port while everything serves."""
    dynamo.start_worker()
    dynamo.start_frontend()
    dynamo.wait_model()
    wrong = f"http://127.0.0.1:{free_port()}"
    sidecar = await _sidecar(make_sidecar, dynamo, worker_system_urls=wrong)
    report = await _until(
        http, sidecar, lambda r: _by_rule(r, "endpoint_wrong_port") is not None, 20, "endpoint_wrong_port"
    )
    finding = _by_rule(report, "endpoint_wrong_port")
    assert finding is not None and str(dynamo.worker_port) in finding["summary"]
    status, _ = await asyncio.to_thread(dynamo.completion, "served", 2)
    assert status == 200
    report = await _report(http, sidecar)
    assert report["status"] == "warning", [(f["id"], f["severity"]) for f in report["findings"]]
    assert _by_rule(report, "frontend_stale_instances") is None
    assert _top(report)["rule"] == "endpoint_wrong_port"


async def test_sidecar_started_before_dynamo_reports_starting_not_critical(
    dynamo: RealDynamo, make_sidecar, http
) -> None:
    """Case 3: a native sidecar starts before `main`."""
    sidecar = await _sidecar(make_sidecar, dynamo, startup_grace="60")
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    report = await _until(http, sidecar, lambda r: bool(r["findings"]), 10, "a finding")
    assert report["status"] == "ok", [(f["id"], f["severity"]) for f in report["findings"]]
    assert {f["rule"] for f in report["findings"]} == {"dynamo_starting"}
    dynamo.start_worker()
    dynamo.start_frontend()
    dynamo.wait_model()
    report = await _until(
        http, sidecar, lambda r: _by_rule(r, "dynamo_starting") is None, 20, "starting over"
    )
    assert report["status"] == "ok", [(f["id"], f["severity"]) for f in report["findings"]]


async def test_no_dynamo_at_all_ranks_no_process_first(dynamo: RealDynamo, make_sidecar, http) -> None:
    """Case 3, after the grace: nothing runs. The cause is no Dynamo process, not two refusals."""
    sidecar = await _sidecar(make_sidecar, dynamo)
    report = await _until(
        http,
        sidecar,
        lambda r: r["findings"] and _top(r)["rule"] == "no_dynamo_process" and len(_top(r)["explains"]) >= 2,
        10,
        "no process, explaining both refusals",
    )
    assert _top(report)["severity"] == "critical"
    assert {"endpoint_refused:frontend", "endpoint_refused:worker"} <= set(_top(report)["explains"])


async def test_frontend_sigterm_drain_then_shutdown_is_info(dynamo: RealDynamo, make_sidecar, http) -> None:
    """Case 4: a normal drain. Draining, then the closed port, are info, never critical.
    The stream outlasts the frontend's 1 s graceful window, so its port closes first and
    Dynamo logs its shutdown lines again as the process exits, seconds later: that late
    line is not a new drain that turns the closed port into a crash (issue 25)."""
    dynamo.start_worker(speedup=0.1)
    dynamo.start_frontend(extra_env={"DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS": "1"})
    dynamo.wait_model()
    sidecar = await _sidecar(make_sidecar, dynamo, canary_enabled="true", canary_wait="1")
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    thread = threading.Thread(target=lambda: dynamo.completion("inflight", 60, stream=True, timeout=60))
    thread.start()
    await wait_for(lambda: (sidecar.signals.frontend_inflight or 0) >= 1, timeout=20, what="in flight")
    dynamo.frontend.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    await _until(http, sidecar, lambda r: _by_rule(r, "dynamo_draining") is not None, 10, "draining")
    report = await _until(
        http,
        sidecar,
        lambda r: _by_rule(r, "dynamo_stopped_after_drain") is not None,
        30,
        "stopped after drain",
    )
    await asyncio.to_thread(thread.join, 60)
    await asyncio.to_thread(dynamo.frontend.wait, 30)  # type: ignore[union-attr]
    exited = sidecar.state.generation
    # Stays non-critical while the port is closed, through the exit's late log lines.
    while sidecar.state.generation < exited + 10:
        report = await _report(http, sidecar)
        assert report["status"] != "critical", [(f["id"], f["severity"]) for f in report["findings"]]
        await asyncio.sleep(0.3)
    assert _by_rule(report, "endpoint_refused") is None


async def test_worker_killed_mid_stream_is_a_request_failure(dynamo: RealDynamo, make_sidecar, http) -> None:
    """Case 5: HTTP 200 with an in-band error; Dynamo counts it, and now a finding says it."""
    dynamo.start_worker(speedup=0.1)
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar(make_sidecar, dynamo)
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    results: list[tuple[int, bytes]] = []
    thread = threading.Thread(
        target=lambda: results.append(dynamo.completion("midstream", 200, stream=True, timeout=60))
    )
    thread.start()
    await wait_for(lambda: (sidecar.signals.frontend_inflight or 0) >= 1, timeout=20, what="in flight")
    await asyncio.sleep(0.5)
    dynamo.signal_worker(signal.SIGKILL)
    await asyncio.to_thread(thread.join, 60)
    assert results and results[0][0] == 200 and b'"error"' in results[0][1]
    report = await _until(
        http, sidecar, lambda r: _by_rule(r, "request_failures") is not None, 15, "failures"
    )
    finding = _by_rule(report, "request_failures")
    assert finding is not None and finding["summary"].startswith("1 request(s) failed")


async def test_hung_engine_under_traffic_is_found_within_15s(dynamo: RealDynamo, make_sidecar, http) -> None:
    """Case 7: requests in flight, no token produced. The canary does not run under traffic."""
    dynamo.start_worker(speedup=0.1)
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar(make_sidecar, dynamo, hung_engine_after="2")
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    threads = [
        threading.Thread(target=lambda i=i: dynamo.completion(f"hung-{i}", 400, stream=True, timeout=40))
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    await wait_for(lambda: (sidecar.signals.frontend_inflight or 0) >= 3, timeout=20, what="3 in flight")
    stopped_at = asyncio.get_running_loop().time()
    dynamo.signal_worker(signal.SIGSTOP)
    report = await _until(http, sidecar, lambda r: _by_rule(r, "engine_hung") is not None, 15, "engine_hung")
    assert asyncio.get_running_loop().time() - stopped_at < 15
    assert _top(report)["rule"] == "process_stalled"
    assert "engine_hung:engine" in _top(report)["explains"]
    dynamo.signal_worker(signal.SIGCONT)
    dynamo.signal_worker(signal.SIGKILL)
    for thread in threads:
        await asyncio.to_thread(thread.join, 60)


async def test_one_worker_counts_as_one_instance(dynamo: RealDynamo, make_sidecar, http) -> None:
    """Case 8: /health lists one entry per endpoint; the instance count is distinct ids."""
    dynamo.start_worker()
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await _sidecar(make_sidecar, dynamo)
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    view = sidecar.state.facts(HealthFacts).endpoints["frontend"]
    assert view.instance_ids is not None and len(view.instance_ids) == 1
    assert sidecar.state.value("dynamo_sidecar_frontend_instances") == 1
