"""Hostile Dynamo endpoints on loopback: what Dynamo (or something on its port) could send,
and what the sidecar must still do — answer /metrics and /diagnose, keep its memory within
its caps, and come back clean when the input does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import base_url, get_json, get_text, wait_for

WORKER_OK = {"status": "ready", "uptime": {"secs": 10, "nanos": 0}, "endpoints": {"generate": "ready"}}
FRONTEND_OK = {"status": "healthy", "endpoints": ["dyn://dynamo.backend.generate"], "instances": []}


class Hostile:
    """A frontend and a worker whose answers a test sets per path."""

    def __init__(self) -> None:
        self.bodies: dict[str, Callable[[], bytes]] = {}
        self.metrics_calls = 0
        self.models_calls = 0
        self.completions = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    def set(self, path: str, body: bytes | Callable[[], bytes]) -> None:
        self.bodies[path] = body if callable(body) else (lambda: body)

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        if path.endswith("/metrics"):
            self.metrics_calls += 1
        if path.endswith("/v1/models"):
            self.models_calls += 1
        if path.startswith("/v1/completions"):
            self.completions += 1
            return web.Response(status=503, text='{"message":"no"}', content_type="application/json")
        maker = self.bodies.get(path)
        if maker is None:
            default = WORKER_OK if path.startswith("/w/") else FRONTEND_OK
            body = json.dumps(default).encode() if not path.endswith("/metrics") else b"up 1\n"
        else:
            body = maker()
        return web.Response(body=body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    @property
    def frontend(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker(self) -> str:
        return f"http://127.0.0.1:{self.port}/w"


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    server = Hostile()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


async def _sidecar(make_sidecar, hostile: Hostile, **extra: Any):
    extra.setdefault("canary_enabled", "false")
    return await make_sidecar(
        frontend_url=hostile.frontend, worker_system_urls=hostile.worker, gpu_enabled="false", **extra
    )


async def _everything_answers(http: aiohttp.ClientSession, sidecar) -> None:
    for path in ("/metrics", "/diagnose", "/diagnose?format=html", "/diagnose?format=text", "/status"):
        status, _ = await get_text(http, base_url(sidecar) + path)
        assert status == 200, path
    async with http.get(
        base_url(sidecar) + "/metrics", headers={"Accept": "application/openmetrics-text"}
    ) as r:
        assert r.status == 200


SURROGATE_HEALTH = (
    b'{"status":"ready\\ud800","endpoints":{"gen\\udfffrate":"ready\\ud800"},"uptime":{"secs":1,"nanos":0}}'
)


async def test_lone_surrogates_never_break_the_exposition(make_sidecar, hostile, http) -> None:
    hostile.set("/w/health", SURROGATE_HEALTH)
    hostile.set("/v1/models", b'{"object":"list","data":[{"id":"tiny\\ud800"}]}')
    hostile.set(
        "/health",
        b'{"status":"healthy\\udfff","endpoints":["dyn://x\\ud800"],"instances":[{"instance_id":"\\ud800"}]}',
    )
    sidecar = await _sidecar(make_sidecar, hostile, canary_enabled="true", canary_wait="0.3")
    await wait_for(lambda: hostile.completions >= 1, timeout=10, what="a canary for the surrogate model")
    await _everything_answers(http, sidecar)
    _, text = await get_text(http, base_url(sidecar) + "/metrics")
    assert "\ufffd" in text  # replaced, not dropped, not a 500
    # Clean again: the replaced values age out with the state; every endpoint keeps answering.
    hostile.bodies.clear()
    await _everything_answers(http, sidecar)


async def test_deep_json_and_huge_numbers_fail_one_value(make_sidecar, hostile, http) -> None:
    hostile.set("/w/health", b"[" * 100_000 + b"]" * 100_000)
    hostile.set("/w/live", b'{"status":"ready","uptime":{"secs":' + b"9" * 400 + b',"nanos":0}}')
    hostile.set("/v1/models", b'{"data":[{"id":' + b"1" * 5000 + b"}]}")
    sidecar = await _sidecar(make_sidecar, hostile)
    await wait_for(
        lambda: sidecar.state.collectors["dynamo_health"].runs["ok"] >= 3, timeout=10, what="health runs ok"
    )
    assert sidecar.state.collectors["dynamo_health"].runs["error"] == 0
    report = await get_json(http, base_url(sidecar) + "/diagnose")
    bad = next(f for f in report["findings"] if f["id"] == "endpoint_bad_response:worker")
    assert any("deeper" in str(e["value"]) for e in bad["evidence"])
    # The frontend still counts: one bad target does not blind the collector to the rest.
    assert sidecar.state.value("dynamo_sidecar_endpoint_up", endpoint="frontend", probe="health") == 1
    await _everything_answers(http, sidecar)


def _many_names(start: int, count: int) -> bytes:
    return "".join(f"bomb_{start + i} 1\n" for i in range(count)).encode()


async def test_a_flood_of_new_metric_names_is_capped_and_a_finding(make_sidecar, hostile, http) -> None:
    calls = {"n": 0}

    def flood() -> bytes:
        calls["n"] += 1
        return _many_names(calls["n"] * 5000, 5000)  # 5,000 new names every scrape

    hostile.set("/metrics", flood)
    sidecar = await _sidecar(make_sidecar, hostile, max_metric_names="1000", max_series="5000")
    await wait_for(lambda: calls["n"] >= 6, timeout=30, what="six flooded scrapes")
    assert len(sidecar.state._series_per_metric) <= 1000
    assert len(sidecar.state._last_seen) <= 5000
    assert len(sidecar.state.dropped) <= 101  # 100 names, then one bucket
    report = await get_json(http, base_url(sidecar) + "/diagnose")
    assert "series_dropped:cardinality" in {f["id"] for f in report["findings"]}
    _, text = await get_text(http, base_url(sidecar) + "/metrics")
    assert 'dynamo_sidecar_series_caps_hit_total{cap="metric_names"}' in text


async def test_a_cardinality_bomb_by_label_is_capped(make_sidecar, hostile, http) -> None:
    calls = {"n": 0}

    def bomb() -> bytes:
        calls["n"] += 1
        return "".join(f'bomb{{id="{calls["n"]}-{i}"}} 1\n' for i in range(3000)).encode()

    hostile.set("/metrics", bomb)
    sidecar = await _sidecar(make_sidecar, hostile, max_series_per_metric="500")
    await wait_for(lambda: calls["n"] >= 4, timeout=30, what="four bombs")
    assert sidecar.state._series_per_metric.get("bomb", 0) <= 500
    assert sidecar.state.caps_hit.get("series_per_metric", 0) > 0
    # Counted once per scrape of Dynamo, not once per render: a second render of the same
    # scrape (no collector runs between these two synchronous renders) counts nothing more.
    sidecar.exporter.render()
    counted = dict(sidecar.state.caps_hit)
    sidecar.exporter.render()
    assert sidecar.state.caps_hit == counted
    await _everything_answers(http, sidecar)


async def test_model_churn_bounds_canary_load_and_state(make_sidecar, hostile, http) -> None:
    def churn() -> bytes:
        start = hostile.models_calls * 256
        return json.dumps({"data": [{"id": f"m{start + i}"} for i in range(256)]}).encode()

    hostile.set("/v1/models", churn)
    sidecar = await _sidecar(
        make_sidecar, hostile, canary_enabled="true", canary_wait="0.2", canary_timeout="0.5"
    )
    await wait_for(lambda: hostile.models_calls >= 20, timeout=30, what="20 model listings")
    from agent.core.facts import HealthFacts

    view = sidecar.state.facts(HealthFacts).endpoints["frontend"]
    assert len(view.models_seen) <= 64
    assert len(sidecar.canary.models) <= 64
    rounds = max(1, sidecar.canary.rounds)
    assert hostile.completions <= rounds * sidecar.config.canary_max_models
    _, text = await get_text(http, base_url(sidecar) + "/metrics")
    assert len(text) < 2_000_000


async def test_huge_status_strings_are_capped(make_sidecar, hostile, http) -> None:
    calls = {"n": 0}

    def huge() -> bytes:
        calls["n"] += 1
        status = f"{calls['n']}" + "x" * 200_000
        return json.dumps({"status": status, "endpoints": {}, "uptime": {"secs": 1, "nanos": 0}}).encode()

    hostile.set("/w/health", huge)
    sidecar = await _sidecar(make_sidecar, hostile)
    await wait_for(lambda: calls["n"] >= 8, timeout=20, what="eight huge statuses")
    for event in sidecar.state.events:
        assert len(event.message) < 2000
        assert len(json.dumps(event.attributes, default=str)) < 4000
    status, body = await get_text(http, base_url(sidecar) + "/diagnose")
    assert status == 200 and len(body) < 500_000


async def test_a_connection_reset_is_worded_as_one(make_sidecar, hostile, http) -> None:
    import asyncio
    import socket
    import struct

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        writer.close()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sidecar = await make_sidecar(
            frontend_url=hostile.frontend, worker_system_urls=f"http://127.0.0.1:{port}", gpu_enabled="false"
        )

        async def finding() -> dict | None:
            report = await get_json(http, base_url(sidecar) + "/diagnose")
            return next((f for f in report["findings"] if f["id"] == "endpoint_bad_response:worker"), None)

        found = await wait_for(finding, timeout=10, what="the reset endpoint's finding")
        assert "resets the connection" in found["summary"], found["summary"]
    finally:
        server.close()
        await server.wait_closed()


def test_a_device_as_pid_file_is_refused_not_read() -> None:
    from collectors.process import ProcessFinder

    finder = ProcessFinder([], pid_file="/dev/urandom")
    assert finder.find() == []
    assert "not a regular file" in finder.last_error


def test_a_parse_stops_its_own_work_at_its_budget() -> None:
    """A 200k-series family: the parse thread ends at the budget instead of running on after
    the collector gave up on it."""
    import time

    from agent.core.exposition import Budget, parse_exposition

    text = "# TYPE big gauge\n" + "".join(f'big{{i="{i}"}} 1\n' for i in range(200_000))
    budget = Budget(0.2, max_series=1_000_000)
    families, _ = parse_exposition(text, budget)
    assert budget.exhausted == "time"
    # It stopped before the end (the whole body takes several seconds; how far it got
    # depends on this machine's load, so no number is pinned here: bench/ measures it).
    assert sum(len(f.samples) for f in families) < 200_000

    class RunsOutAfterOneChunk(Budget):
        """Time runs out right after the first chunk, whatever the load."""

        def spend(self, series: int) -> None:
            super().spend(series)
            self.deadline = time.monotonic() - 1

    cut = RunsOutAfterOneChunk(30, max_series=1_000_000)
    families, _ = parse_exposition(text, cut)
    assert cut.exhausted == "time"
    assert 0 < sum(len(f.samples) for f in families) < 200_000  # what was parsed is kept
    capped = Budget(30, max_series=10_000)
    parse_exposition(text, capped)
    assert capped.exhausted == "series"


async def test_status_never_shows_credentials(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(
        sim,
        tcp_probe_targets="etcd=http://root:hunter2@127.0.0.1:2379/health,nats=nats://tok3n@127.0.0.1:4222",
        auth_token="s3cret",
    )
    status, body = await get_text(http, base_url(sidecar) + "/status")
    assert status == 200
    assert "hunter2" not in body and "tok3n" not in body and "s3cret" not in body
    assert "<redacted>" in body
