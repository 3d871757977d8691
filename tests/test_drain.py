"""Drain with real processes and real signals: the sidecar and a simulated Dynamo serving
slow streaming requests get SIGTERM together, as Kubernetes sends it to every container."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from agent.runtime.server import _allowed
from tests.helpers import (
    base_url,
    get_json,
    get_text,
    post_completion,
    wait_for,
    wait_for_sync,
)
from tests.procs import http_get, log_lines, spawn_sidecar, start_sidecar, start_sim


class Client:
    """Streaming completions in threads, recording when each one ended and how."""

    def __init__(self, frontend: str, count: int, max_tokens: int) -> None:
        self.results: list[dict[str, Any]] = []
        self.threads = [
            threading.Thread(target=self._one, args=(frontend, i, max_tokens)) for i in range(count)
        ]
        self._lock = threading.Lock()

    def _one(self, frontend: str, index: int, max_tokens: int) -> None:
        body = json.dumps(
            {"model": "tiny", "prompt": "hi", "max_tokens": max_tokens, "stream": True}
        ).encode()
        request = urllib.request.Request(
            frontend + "/v1/completions",
            data=body,
            headers={"Content-Type": "application/json", "x-request-id": f"drain-{index}"},
        )
        status, complete = 0, False
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status = response.status
                text = response.read().decode()
                complete = text.endswith("data: [DONE]\n\n") and '"error"' not in text
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, http.client.HTTPException):
            status = 0
        with self._lock:
            self.results.append({"status": status, "complete": complete, "ended": time.time()})

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=90)


@pytest.fixture
def slow_dynamo() -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    proc, ports = start_sim("--token-delay", "0.05")
    yield proc, ports
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def inflight_seen(url: str, at_least: int) -> bool:
    _, body = http_get(url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith('dynamo_sidecar_dynamo_inflight_requests{source="frontend"}'):
            return float(line.rsplit(" ", 1)[1]) >= at_least
    return False


@pytest.mark.slow
def test_sidecar_exits_only_after_the_last_request(slow_dynamo) -> None:
    dynamo, ports = slow_dynamo
    sidecar, url = start_sidecar(
        ports, "--termination-grace-period", "30", "--drain-settle", "0.5", interval="0.5"
    )
    client = Client(f"http://127.0.0.1:{ports['frontend']}", count=4, max_tokens=50)  # ~2.5 s each
    client.start()
    wait_for_sync(lambda: inflight_seen(url, 4), timeout=20, what="4 requests in flight")
    dynamo.send_signal(signal.SIGTERM)
    sidecar.send_signal(signal.SIGTERM)
    signalled = time.time()
    # While draining, readiness fails (once the sidecar has handled the signal: a request can
    # overtake it, as a kubelet's probe can) and metrics keep being served.
    wait_for_sync(lambda: http_get(url + "/readyz")[0] == 503, timeout=5, what="readiness failing")
    assert http_get(url + "/metrics")[0] == 200
    out, err = sidecar.communicate(timeout=40)
    sidecar_exit = time.time()
    client.join()
    assert sidecar.returncode == 0, err
    assert [r["status"] for r in client.results] == [200] * 4
    assert all(r["complete"] for r in client.results)
    last_request = max(r["ended"] for r in client.results)
    assert sidecar_exit >= last_request, "the sidecar exited before the last request finished"
    assert last_request > signalled + 0.5  # the requests really were still running at SIGTERM
    finished = [line for line in log_lines(out) if line["message"] == "drain finished"]
    assert finished, out
    summary = finished[0]
    assert summary["reason"] in {"inflight_zero", "process_exited"}
    assert summary["inflight_at_start"] >= 4
    assert summary["requests_failed_during_drain"] == 0
    # The drain summary accounts for every request in flight at the signal, as of the last
    # look at Dynamo's metrics: finished, failed, or still in flight then.
    accounted = (
        summary["requests_completed_during_drain"]
        + summary["requests_failed_during_drain"]
        + summary["inflight_at_end"]
    )
    assert accounted == summary["inflight_at_start"] == 4, summary


@pytest.mark.slow
def test_deadline_shorter_than_requests_reports_leftover(slow_dynamo) -> None:
    dynamo, ports = slow_dynamo
    sidecar, url = start_sidecar(
        ports, "--termination-grace-period", "10", "--drain-timeout", "1.5", interval="0.5"
    )
    client = Client(f"http://127.0.0.1:{ports['frontend']}", count=3, max_tokens=160)  # ~8 s each
    client.start()
    wait_for_sync(lambda: inflight_seen(url, 3), timeout=20, what="3 requests in flight")
    dynamo.send_signal(signal.SIGTERM)
    sidecar.send_signal(signal.SIGTERM)
    started = time.time()
    out, err = sidecar.communicate(timeout=30)
    elapsed = time.time() - started
    assert sidecar.returncode == 0, err
    assert elapsed < 1.5 + 3 + 3  # deadline + flush + start-up slack: never hangs past it
    lines = log_lines(out)
    warning = next(line for line in lines if line["message"] == "drain deadline reached with work in flight")
    assert warning["level"] == "WARN"
    assert warning["reason"] == "deadline" and warning["inflight_at_end"] >= 3
    client.join()


@pytest.mark.slow
def test_second_signal_shortens_the_drain(slow_dynamo) -> None:
    dynamo, ports = slow_dynamo
    sidecar, url = start_sidecar(ports, "--termination-grace-period", "60", interval="0.5")
    client = Client(f"http://127.0.0.1:{ports['frontend']}", count=1, max_tokens=400)  # ~20 s
    client.start()
    wait_for_sync(lambda: inflight_seen(url, 1), timeout=20, what="1 request in flight")
    sidecar.send_signal(signal.SIGTERM)
    wait_for_sync(lambda: http_get(url + "/readyz")[0] == 503, timeout=10, what="draining")
    sidecar.send_signal(signal.SIGTERM)
    out, _ = sidecar.communicate(timeout=15)
    assert sidecar.returncode == 0
    finished = [line for line in log_lines(out) if "drain" in line["message"] and "reason" in line]
    assert finished and finished[0]["reason"] == "second_signal"
    dynamo.send_signal(signal.SIGKILL)
    client.join()


async def test_post_drain_blocks_and_reports_then_diagnose_names_it(sim, make_sidecar, http) -> None:
    sim.faults.token_delay = 0.05
    sidecar = await make_sidecar(sim, drain_timeout="1", termination_grace_period="10", drain_interval="0.2")
    await wait_for(lambda: sidecar.ready, what="ready")
    import asyncio

    slow = asyncio.create_task(post_completion(http, sim.url("frontend"), max_tokens=80))
    await wait_for(lambda: sim.inflight >= 1, what="request in flight")
    await wait_for(lambda: (sidecar.signals.frontend_inflight or 0) >= 1, what="sidecar sees it")
    async with http.post(base_url(sidecar) + "/drain") as response:
        assert response.status == 200
        summary = await response.json()
    assert summary["trigger"] == "http" and summary["reason"] == "deadline"
    assert summary["inflight_at_end"] >= 1
    status, _ = await get_text(http, base_url(sidecar) + "/readyz")
    assert status == 503
    report = await get_json(http, base_url(sidecar) + "/diagnose")
    finding = next(f for f in report["findings"] if f["id"] == "drain_deadline_with_work:drain")
    assert finding["category"] == "shutdown" and finding["severity"] == "critical"
    await slow
    _, text = await get_text(http, base_url(sidecar) + "/metrics")
    assert 'dynamo_sidecar_drain_reason{reason="deadline"} 1.0' in text


async def test_post_drain_inflight_zero(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, drain_settle="0.3", drain_interval="0.1")
    await wait_for(lambda: sidecar.ready, what="ready")
    async with http.post(base_url(sidecar) + "/drain") as response:
        summary = await response.json()
    assert summary["reason"] == "inflight_zero" and summary["inflight_at_end"] == 0


def test_mutating_endpoint_access() -> None:
    config = SimpleNamespace(auth_token="s3cret", auth_token_file="", auth_require_token=False)
    loopback = SimpleNamespace(remote="127.0.0.1", headers={})
    mesh_proxy = SimpleNamespace(remote="127.0.0.6", headers={})  # Istio's inbound source address
    remote = SimpleNamespace(remote="10.1.2.3", headers={})
    remote_token = SimpleNamespace(remote="10.1.2.3", headers={"Authorization": "Bearer s3cret"})
    remote_wrong = SimpleNamespace(remote="10.1.2.3", headers={"Authorization": "Bearer nope"})
    assert _allowed(loopback, config)  # type: ignore[arg-type]
    assert not _allowed(mesh_proxy, config)  # type: ignore[arg-type]
    assert not _allowed(remote, config)  # type: ignore[arg-type]
    assert _allowed(remote_token, config)  # type: ignore[arg-type]
    assert not _allowed(remote_wrong, config)  # type: ignore[arg-type]
    no_token = SimpleNamespace(auth_token="", auth_token_file="", auth_require_token=False)
    assert not _allowed(remote, no_token)  # type: ignore[arg-type]
    strict = SimpleNamespace(auth_token="s3cret", auth_token_file="", auth_require_token=True)
    assert not _allowed(loopback, strict)  # type: ignore[arg-type]
    assert _allowed(SimpleNamespace(remote="127.0.0.1", headers={"Authorization": "Bearer s3cret"}), strict)  # type: ignore[arg-type]


def test_nothing_to_drain_exits_at_once() -> None:
    """No Dynamo process and nothing answering: SIGTERM must not hold the pod for the whole
    grace period."""
    from tests.helpers import free_port

    sidecar, _ = spawn_sidecar(
        f"http://127.0.0.1:{free_port()}",
        f"http://127.0.0.1:{free_port()}",
        "--process-pid-file",
        "/nonexistent/dynamo.pid",
        "--termination-grace-period",
        "60",
    )
    signalled = time.monotonic()
    sidecar.send_signal(signal.SIGTERM)
    out, _ = sidecar.communicate(timeout=30)
    elapsed = time.monotonic() - signalled
    assert sidecar.returncode == 0
    finished = [line for line in log_lines(out) if line["message"] == "drain finished"]
    assert finished and finished[0]["reason"] == "nothing_to_drain", out[-2000:]
    assert elapsed < 10, (
        f"exit took {elapsed:.1f}s"
    )  # the bound is checked loosely; bench/drain.py measures it


def test_a_waiting_drain_says_what_it_waits_for_and_how_to_end_it(slow_dynamo) -> None:
    dynamo, ports = slow_dynamo
    sidecar, url = start_sidecar(ports, "--termination-grace-period", "60", interval="0.5")
    client = Client(f"http://127.0.0.1:{ports['frontend']}", count=1, max_tokens=400)
    client.start()
    wait_for_sync(lambda: inflight_seen(url, 1), timeout=20, what="1 request in flight")
    sidecar.send_signal(signal.SIGTERM)
    wait_for_sync(lambda: http_get(url + "/readyz")[0] == 503, timeout=10, what="draining")
    sidecar.send_signal(signal.SIGTERM)
    out, _ = sidecar.communicate(timeout=15)
    waiting = [line for line in log_lines(out) if line["message"].startswith("drain waiting")]
    assert waiting and "send the signal again" in waiting[0]["message"]
    assert waiting[0]["inflight"] >= 1
    dynamo.send_signal(signal.SIGKILL)
    client.join()


def test_a_workers_hook_returns_at_once_and_the_drain_follows_dynamos_own_shutdown(slow_dynamo) -> None:
    """The preStop `inject` gives a worker: POST /drain?wait=false answers 202 at once, so
    the kubelet sends SIGTERM to Dynamo with the whole grace period left for its own shutdown
    (unregister, 5 s, in-flight, engine clean-up). The drain does not end when in-flight work
    first reads zero (Dynamo is still shutting down) but when Dynamo's process exits."""
    dynamo, ports = slow_dynamo
    sidecar, url = start_sidecar(
        ports, "--role", "worker", "--drain-settle", "0.3", "--drain-interval", "0.2", interval="0.3"
    )
    try:
        request = urllib.request.Request(url + "/drain?wait=false", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
            summary = json.loads(response.read())
        assert summary["mode"] == "follow" and summary["reason"] == "in_progress"
        started = summary["started_at"]

        def drain() -> dict[str, Any]:
            return json.loads(http_get(url + "/status")[1])["drain"]

        # Idle Dynamo: in-flight reads 0 well past the settle time, and the drain goes on.
        seen = wait_for_sync(
            lambda: (d := drain())["inflight_at_end"] == 0 and time.time() - started > 1.0 and d,
            timeout=20,
            what="in-flight read as zero past the settle time",
        )
        assert seen["reason"] == "in_progress" and seen["processes_at_start"] == [ports["pid"]]
        dynamo.send_signal(signal.SIGTERM)  # what the kubelet does once the hook returned
        done = wait_for_sync(
            lambda: (d := drain())["reason"] != "in_progress" and d, timeout=20, what="drain end"
        )
        assert done["reason"] == "process_exited"
        bad = urllib.request.Request(url + "/drain?wait=maybe", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=5)
        assert refused.value.code == 400
    finally:
        sidecar.kill()
        sidecar.communicate(timeout=30)
