"""The simulated Dynamo must speak exactly what the real one (1.6.1) spoke: compare it with
the responses recorded from a real Dynamo (agent/dynamo_sim/recorded/)."""

from __future__ import annotations

import json
import re

import aiohttp

from tests.helpers import RECORDED


def rec(name: str) -> str:
    return (RECORDED / name).read_text()


def keys_deep(obj):
    if isinstance(obj, dict):
        return {k: keys_deep(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [keys_deep(v) for v in obj[:1]]
    return type(obj).__name__ if obj is not None else None


async def test_frontend_bodies_are_byte_identical(sim, http: aiohttp.ClientSession) -> None:
    front = sim.url("frontend")
    for path, name in (
        ("/health", "frontend_health_healthy.json"),
        ("/live", "frontend_live.json"),
        ("/v1/models", "frontend_v1_models.json"),
    ):
        async with http.get(front + path) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            assert await response.text() == rec(name).strip(), path
    async with http.get(front + "/metrics") as response:
        assert await response.text() == rec("frontend_metrics_after_traffic.prom")


async def test_worker_bodies_match_recordings(sim, http: aiohttp.ClientSession) -> None:
    sim.faults.worker_notready = True  # the recording was made without DYN_HEALTH_CHECK_ENABLED
    for path, name in (("/health", "worker_system_health.json"), ("/live", "worker_system_live.json")):
        async with http.get(sim.url("worker") + path) as response:
            assert response.status == 503
            body = await response.text()
        uptime = re.compile(r'"uptime":\{"secs":\d+,"nanos":\d+\}')
        assert uptime.sub("U", body) == uptime.sub("U", rec(name).strip())
    async with http.get(sim.url("worker") + "/metrics") as response:
        body = await response.text()
    strip = re.compile(r"^dynamo_component_uptime_seconds\{.*$", re.M)
    assert strip.sub("", body) == strip.sub("", rec("worker_system_metrics_after_traffic.prom"))


async def test_completion_shapes_and_errors(sim, http: aiohttp.ClientSession) -> None:
    front = sim.url("frontend")
    payload = {"model": "tiny", "prompt": "hi", "max_tokens": 1}
    async with http.post(
        front + "/v1/completions", json=payload, headers={"x-request-id": "rec-0001"}
    ) as response:
        assert response.status == 200 and response.headers["x-request-id"] == "rec-0001"
        body = await response.json()
    assert keys_deep(body) == keys_deep(json.loads(rec("completions_max_tokens_1.json")))
    async with http.post(
        front + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    ) as response:
        chat = await response.json()
    assert keys_deep(chat) == keys_deep(json.loads(rec("chat_completions_max_tokens_1.json")))
    async with http.post(front + "/v1/completions", json={**payload, "model": "unknown_model"}) as response:
        assert response.status == 404
        assert await response.text() == rec("completions_unknown_model.txt").splitlines()[0]
    async with http.post(
        front + "/v1/completions", data=b"{1:2}", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert await response.text() == rec("completions_bad_json.txt").splitlines()[0]


async def test_streaming_framing(sim, http: aiohttp.ClientSession) -> None:
    async with http.post(
        sim.url("frontend") + "/v1/completions",
        json={"model": "tiny", "prompt": "hi", "max_tokens": 1, "stream": True},
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = await response.text()
    recorded = rec("completions_stream.sse")
    assert text.endswith("data: [DONE]\n\n") and recorded.endswith("data: [DONE]\n\n")
    first = json.loads(text.split("\n\n")[0].removeprefix("data: "))
    expected = json.loads(recorded.split("\n\n")[0].removeprefix("data: "))
    assert keys_deep(first) == keys_deep(expected)
    async with http.post(
        sim.url("frontend") + "/v1/chat/completions",
        json={"model": "tiny", "messages": [], "max_tokens": 3, "stream": True},
    ) as response:
        chat = await response.text()
    chunks = [json.loads(c.removeprefix("data: ")) for c in chat.split("\n\n") if c.startswith("data: {")]
    recorded_first = json.loads(rec("chat_completions_stream.sse").split("\n\n")[0].removeprefix("data: "))
    assert chunks[0] == {**recorded_first, "id": chunks[0]["id"], "created": chunks[0]["created"]}


async def test_worker_death_and_draining_bodies(sim, http: aiohttp.ClientSession) -> None:
    front = sim.url("frontend")
    await sim.kill_worker()
    async with http.get(front + "/health") as response:
        # Stale registration: the dead instance is still listed (as the real frontend does).
        assert json.loads(await response.text())["instances"]
    async with http.get(front + "/v1/models") as response:
        assert await response.text() == rec("scenario_worker_sigkill_v1_models.json").strip()
    async with http.post(
        front + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}
    ) as response:
        assert response.status == 503
        assert await response.text() == rec("scenario_worker_sigkill_completion.txt").splitlines()[0]
    # Found against the real Dynamo: later requests get "model not ready", and the
    # counters say why (error_type="unavailable", failures by class/reason).
    async with http.post(
        front + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}
    ) as response:
        assert response.status == 503
        assert "is not ready to serve requests yet" in await response.text()
    async with http.get(front + "/metrics") as response:
        metrics = await response.text()
    assert 'error_type="unavailable",model="tiny",request_type="unary",status="error"} 2' in metrics
    assert (
        'dynamo_frontend_failures_total{class="Unavailable",reason="transport.cannot_connect"} 1' in metrics
    )
    assert 'dynamo_frontend_failures_total{class="Unavailable",reason="backend.unavailable"} 1' in metrics
    sim.faults.frontend_draining = True
    recorded = rec("scenario_frontend_sigterm_with_inflight.txt").splitlines()[0]
    async with http.get(front + "/live") as response:
        assert response.status == 503 and f"live={await response.text()} 503" in recorded
    async with http.get(front + "/health") as response:
        assert response.status == 503 and f"health={await response.text()} 503" in recorded
