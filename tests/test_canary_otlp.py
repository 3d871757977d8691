"""Canaries against the simulated Dynamo, and their OTLP traces in a real collector process
(rotel, tests/otlp_receiver.py) over OTLP/HTTP and OTLP/gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from exporters.otlp import BoundedBatchProcessor, Telemetry
from exporters.otlp_settings import OtlpSettings
from tests.helpers import base_url, free_port, get_json, get_text, post_completion, wait_for
from tests.otlp_receiver import ReceivedSpan, Rotel, rotel_binary
from tests.procs import PYTHON, start_sim

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def canary_requests(sim) -> list[dict[str, str]]:
    return [h for h in sim.requests_seen if h.get("x-request-id", "").startswith("canary-")]


@pytest.fixture
def rotel(tmp_path: Path) -> Iterator[Rotel]:
    """A real OTLP collector process on loopback (gRPC and HTTP); tests/otlp_receiver.py."""
    binary = rotel_binary()
    if binary is None:
        pytest.skip("rotel not installed: pip install -e '.[test]' (PyPI rotel)")
    receiver = Rotel(binary, tmp_path)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


K8S_ENV = {
    "POD_NAME": "dynamo-worker-0",
    "POD_NAMESPACE": "inference",
    "NODE_NAME": "gpu-node-7",
    "CONTAINER_NAME": "dynamo-sidecar",
}


def set_otlp_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, protocol: str) -> None:
    for name in os.environ:
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)  # a base URL: /v1/traces is added for http
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")  # milliseconds
    for key, value in K8S_ENV.items():
        monkeypatch.setenv(key, value)


async def test_idle_fires_canary_with_request_id_and_traceparent(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, canary_wait="1")
    started = time.monotonic()
    await wait_for(lambda: canary_requests(sim), timeout=10, what="a canary request")
    assert time.monotonic() - started < 1 + 1 + 1.5  # canary_wait + one interval + start-up
    headers = canary_requests(sim)[0]
    assert TRACEPARENT.match(headers["traceparent"])
    text = await wait_for(
        lambda: _metrics_with(
            http, sidecar, 'dynamo_sidecar_canary_requests_total{model="tiny",outcome="ok"} 1.0'
        ),
        what="canary metrics",
    )
    assert 'dynamo_sidecar_canary_latency_seconds_count{model="tiny"} 1.0' in text
    status, _ = await get_text(http, base_url(sidecar) + "/canaryz")
    assert status == 200


async def _metrics_with(http, sidecar, needle: str) -> str | None:
    _, text = await get_text(http, base_url(sidecar) + "/metrics")
    return text if needle in text else None


async def test_no_canary_while_traffic_flows(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, canary_wait="2")
    await wait_for(lambda: sidecar.ready, what="ready")
    # Two clients keep requests in flight the whole time (each ~0.4 s of tokens), so there is
    # never an idle moment, even if this machine stalls for a second.
    sim.faults.token_delay = 0.05
    stop = asyncio.Event()

    async def client() -> int:
        sent = 0
        while not stop.is_set() and sent < 100:  # bounded traffic
            assert (await post_completion(http, sim.url("frontend"), max_tokens=8))[0] == 200
            sent += 1
        return sent

    clients = [asyncio.create_task(client()) for _ in range(2)]
    # Well past canary_wait of traffic (about 5 s), observed by the requests it took.
    started = sim.completed
    await wait_for(lambda: sim.completed - started >= 24, timeout=30, what="24 requests served")
    assert canary_requests(sim) == []
    stop.set()
    await asyncio.gather(*clients)
    sim.faults.token_delay = 0.002
    # Traffic stops: the canary comes after canary_wait.
    await wait_for(lambda: canary_requests(sim), timeout=10, what="canary after traffic stops")
    # Its own request does not count as traffic: a second one follows a period later.
    await wait_for(lambda: len(canary_requests(sim)) >= 2, timeout=10, what="second canary")


async def test_hung_engine_marks_model_failing(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, canary_wait="0.5", canary_timeout="0.5", canary_failures="2")
    await wait_for(
        lambda: sidecar.canary.models.get("tiny") and sidecar.canary.models["tiny"].counts["ok"] >= 1,
        timeout=10,
        what="a good canary first",
    )
    sim.faults.engine_hang = True
    started = time.monotonic()

    async def failing() -> dict | None:
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        return next((f for f in report["findings"] if f["id"] == "canary_failing:tiny"), None)

    finding = await wait_for(failing, timeout=15, what="canary_failing finding")
    # Two attempts, each after an idle period and a timeout.
    assert time.monotonic() - started >= 2 * 0.5
    evidence = {e["signal"]: e for e in finding["evidence"]}
    assert evidence["last canary outcome"]["value"] == "timeout"
    assert evidence["x-request-id"]["value"].startswith("canary-")
    status, body = await get_text(http, base_url(sidecar) + "/canaryz")
    assert status == 503 and "tiny" in body
    sim.faults.engine_hang = False
    await wait_for(lambda: not sidecar.canary.failing_models, timeout=10, what="recovery")


async def test_canary_outcomes(sim, make_sidecar) -> None:
    import aiohttp

    from agent.runtime.canary import CONNECT_ERROR, HTTP_ERROR, OK, send_canary

    async with aiohttp.ClientSession() as session:
        front = sim.url("frontend")
        assert (await send_canary(session, front, "tiny", 2, "completions", False)).outcome == OK
        streamed = await send_canary(session, front, "tiny", 2, "chat", True)
        assert streamed.outcome == OK and streamed.ttft is not None
        assert (await send_canary(session, front, "nope", 2, "completions", False)).outcome == HTTP_ERROR
        await sim.kill_worker()
        result = await send_canary(session, front, "tiny", 2, "completions", False)
        assert result.outcome == HTTP_ERROR and result.status == 503
        closed = f"http://127.0.0.1:{free_port()}"
        assert (await send_canary(session, closed, "tiny", 2, "completions", False)).outcome == CONNECT_ERROR


async def flushed_spans(sidecar, rotel: Rotel, name: str, prefix: bool = False) -> list[ReceivedSpan]:
    async def check() -> list[ReceivedSpan]:
        await asyncio.to_thread(sidecar.telemetry.flush, 2)
        return [s for s in rotel.spans() if (s.name.startswith(name) if prefix else s.name == name)]

    return await wait_for(check, timeout=15, what=f"span {name}")


async def test_otlp_http_receives_canary_spans_with_k8s_resource(
    sim, make_sidecar, rotel, monkeypatch
) -> None:
    set_otlp_env(monkeypatch, rotel.http_url, "http/protobuf")
    sidecar = await make_sidecar(sim, canary_wait="0.5")
    await wait_for(lambda: canary_requests(sim), timeout=10, what="canary")
    span = (await flushed_spans(sidecar, rotel, "POST /v1/completions"))[0]
    assert span.kind == "SPAN_KIND_CLIENT"
    assert span.attributes["gen_ai.request.model"] == "tiny"
    assert span.attributes["dynamo.canary.outcome"] == "ok"
    assert span.attributes["http.response.status_code"] == 200
    for key, value in {
        "k8s.pod.name": "dynamo-worker-0",
        "k8s.namespace.name": "inference",
        "k8s.node.name": "gpu-node-7",
        "k8s.container.name": "dynamo-sidecar",
        "service.name": "dynamo-sidecar",
    }.items():
        assert span.resource[key] == value
    assert span.resource["service.instance.id"].startswith("dynamo-worker-0")
    # The traceparent the simulated Dynamo received is this span's.
    sent = next(
        h for h in canary_requests(sim) if h["x-request-id"] == span.attributes["dynamo.x_request_id"]
    )
    match = TRACEPARENT.match(sent["traceparent"])
    assert match and match.group(1) == span.trace_id and match.group(2) == span.span_id


async def test_otlp_grpc_receives_health_transition_events(sim, make_sidecar, rotel, monkeypatch) -> None:
    set_otlp_env(monkeypatch, rotel.grpc_url, "grpc")
    sidecar = await make_sidecar(sim, canary_enabled="false")
    await wait_for(lambda: sidecar.ready, what="ready")
    sim.faults.worker_notready = True
    await wait_for(lambda: sidecar.state.recent_events(kind="health_transition"), what="transition")
    spans = await flushed_spans(sidecar, rotel, "dynamo_sidecar.health_transition")
    assert "health_transition" in spans[0].events
    assert spans[0].resource["k8s.namespace.name"] == "inference"


async def test_drain_span_is_exported(sim, make_sidecar, rotel, http, monkeypatch) -> None:
    set_otlp_env(monkeypatch, rotel.http_url, "http/protobuf")
    sidecar = await make_sidecar(sim, drain_settle="0.2", drain_interval="0.1", canary_enabled="false")
    async with http.post(base_url(sidecar) + "/drain") as response:
        assert (await response.json())["reason"] == "inflight_zero"
    await sidecar.flush_telemetry()
    spans = await flushed_spans(sidecar, rotel, "dynamo_sidecar.drain")
    assert spans[0].attributes["dynamo.drain.reason"] == "inflight_zero"
    assert rotel.named("dynamo_sidecar.drain_started")  # the events too


class SlowExporter(SpanExporter):
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    def export(self, spans) -> SpanExportResult:
        self.calls += 1
        time.sleep(0.2)
        return SpanExportResult.FAILURE if self.fail else SpanExportResult.SUCCESS


def test_bounded_queue_drops_and_counts_never_grows() -> None:
    exporter = SlowExporter(fail=True)
    processor = BoundedBatchProcessor(exporter, max_queue=50, batch_size=10, delay=0.05)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    started = time.monotonic()
    for index in range(5000):
        tracer.start_span(f"s{index}").end()
    assert time.monotonic() - started < 2.0  # ending spans never waits on the receiver
    assert len(processor._queue) <= 50
    assert processor.dropped["queue_full"] >= 4900
    # Flushed to the end (a deadline, not a guess: <= 50 queued spans, 0.2 s per batch of 10),
    # every span is accounted for: dropped at the queue or dropped by the failing export.
    assert processor.force_flush(10_000)
    processor.shutdown()
    assert processor.exported == 0 and processor.dropped["export_failed"] > 0
    assert processor.dropped["queue_full"] + processor.dropped["export_failed"] == 5000
    assert processor.failures >= 1 and processor.last_error == "receiver did not accept the batch"


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_unreachable_receiver_is_a_counter_and_a_log_line(
    sim, make_sidecar, http, monkeypatch, caplog, protocol: str
) -> None:
    set_otlp_env(monkeypatch, f"http://127.0.0.1:{free_port()}", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
    sidecar = await make_sidecar(sim, canary_wait="0.3")
    await wait_for(lambda: len(canary_requests(sim)) >= 1, timeout=10, what="canary")

    async def finding() -> dict | None:
        await asyncio.to_thread(sidecar.telemetry.flush, 3)
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        return next((f for f in report["findings"] if f["rule"] == "otlp_export_failing"), None)

    found = await wait_for(finding, timeout=20, what="otlp finding")
    assert found["category"] == "sidecar"

    async def dropped() -> str | None:  # /metrics is rendered once per cycle
        _, text = await get_text(http, base_url(sidecar) + "/metrics")
        return text if re.search(r'otlp_spans_dropped_total\{reason="export_failed"\} [1-9]', text) else None

    text = await wait_for(dropped, timeout=10, what="export_failed drops on /metrics")
    assert f'dynamo_sidecar_otlp_enabled{{protocol="{protocol}"}} 1.0' in text
    # The exporter's own error line, once per failed batch: the receiver it could not reach.
    failed = [r for r in caplog.records if r.levelname == "ERROR" and "Failed to export" in r.getMessage()]
    assert failed, [r.getMessage() for r in caplog.records][-5:]


def test_disabled_without_endpoint_and_bad_protocol() -> None:
    assert not Telemetry().enabled
    assert not Telemetry(OtlpSettings(endpoint="")).enabled
    bad = Telemetry(OtlpSettings(endpoint="http://127.0.0.1:1", protocol="carrier-pigeon"))
    assert not bad.enabled and "carrier-pigeon" in bad.error


def test_cli_canary_round() -> None:
    proc, ports = start_sim()
    try:
        result = subprocess.run(
            [
                PYTHON,
                "-m",
                "agent.cli",
                "canary",
                "--frontend-url",
                f"http://127.0.0.1:{ports['frontend']}",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        line = json.loads(result.stdout.splitlines()[0])
        assert (
            line["model"] == "tiny" and line["outcome"] == "ok" and line["request_id"].startswith("canary-")
        )
        down = subprocess.run(
            [PYTHON, "-m", "agent.cli", "canary", "--frontend-url", f"http://127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # The frontend could not be asked: a round not made is "unknown" (3), not a failure.
        assert down.returncode == 3 and "no models to probe" in down.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_canary_reads_an_in_band_stream_error_as_a_failure() -> None:
    """What Dynamo 1.6.1 sends when a worker dies mid-stream: HTTP 200, then an error event
    and [DONE] (recorded from the real frontend). A status code alone would call it a success."""
    import aiohttp
    from aiohttp import web

    from agent.runtime.canary import BAD_RESPONSE, send_canary

    async def midstream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            b'data: {"error":{"message":"Service temporarily unavailable",'
            b'"type":"service_unavailable","code":503}}\n\n'
        )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/completions", midstream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            result = await send_canary(session, url, "tiny", 2, "completions", True)
        assert result.outcome == BAD_RESPONSE and result.status == 200
        assert result.error.startswith("in-band error") and "service_unavailable" in result.error
    finally:
        await runner.cleanup()
