"""`verify` against a hostile frontend on loopback (issue 26 item 8): deep JSON in a stream,
redirects to another host, a flood of tokens. The drill goes on, judges those requests bad,
writes its report, never talks to another host, and keeps its memory bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.core import exitcodes
from tests.procs import ENV, PYTHON

TOKEN_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":" a"}}]}\n\n'
DONE = b"data: [DONE]\n\n"
FLOOD_EVENTS = 20_000  # ~1 MiB of token events for a request that asked for 16


class HostileFrontend:
    """An OpenAI-style frontend whose completions misbehave as `mode` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.redirect_to = ""
        self.models_redirect = False
        self.hits = 0
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def models(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.models_redirect:
            raise web.HTTPFound(self.redirect_to + "/v1/models")
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text="")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.mode == "redirect":
            raise web.HTTPTemporaryRedirect(self.redirect_to + request.path)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(TOKEN_EVENT)
            if self.mode == "deep":
                await response.write(b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n")
            elif self.mode == "flood":
                for _ in range(FLOOD_EVENTS // 1000):
                    await response.write(TOKEN_EVENT * 1000)
            await response.write(DONE)
        except ConnectionResetError:
            pass  # verify stopped reading (the flood is cut): what this test wants
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/chat/completions", self.completions)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def frontends() -> AsyncIterator[tuple[HostileFrontend, HostileFrontend]]:
    """The frontend verify is pointed at, and another host it must never reach."""
    hostile, other = HostileFrontend(), HostileFrontend()
    await hostile.start()
    await other.start()
    hostile.redirect_to = other.url
    yield hostile, other
    for server in (hostile, other):
        assert server.runner is not None
        await server.runner.cleanup()


async def run_verify(frontend: str, *extra: str) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in kB) of `verify` as a subprocess."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "agent.cli", "verify", "--frontend-url", frontend, "--quiet",
        "--phase-seconds", "1", "--concurrency", "2", "--overload-concurrency", "4", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while proc.returncode is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    await watcher
    assert proc.returncode is not None
    return proc.returncode, err.decode(), peak


def _report(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text())
    assert report["kind"] == "dynamo-sidecar verify"
    return report


async def test_deep_json_in_a_stream_is_a_bad_response_and_the_report_is_written(
    frontends: tuple[HostileFrontend, HostileFrontend], tmp_path: Path
) -> None:
    hostile, _ = frontends
    hostile.mode = "deep"
    output = tmp_path / "report.json"
    code, err, _ = await run_verify(hostile.url, "--format", "json", "--output", str(output))
    assert code == exitcodes.WARNING, err
    assert "Traceback" not in err and "internal error" not in err
    standard = _report(output)["phases"]["standard"]
    assert standard["successes"] == 0 and standard["requests"] > 0
    assert standard["errors_by_type"] == {"bad_response": standard["requests"]}
    assert standard["error_examples"]["bad_response"] == (
        "a stream event is not usable JSON: JSON nested deeper than 32 levels"
    )


async def test_a_redirect_to_another_host_is_never_followed(
    frontends: tuple[HostileFrontend, HostileFrontend], tmp_path: Path
) -> None:
    hostile, other = frontends
    hostile.mode = "redirect"
    output = tmp_path / "report.json"
    code, err, _ = await run_verify(hostile.url, "--format", "json", "--output", str(output))
    assert code == exitcodes.WARNING, err
    standard = _report(output)["phases"]["standard"]
    assert standard["successes"] == 0 and set(standard["errors_by_type"]) == {"http_307"}
    assert "not followed (verify talks only to --frontend-url)" in standard["error_examples"]["http_307"]
    assert other.hits == 0

    # The model list redirected: nothing to drill, one line, exit 3, the other host untouched.
    hostile.models_redirect = True
    code, err, _ = await run_verify(hostile.url)
    assert code == exitcodes.UNKNOWN
    assert len(err.strip().splitlines()) == 1 and "verify does not follow redirects" in err, err
    assert other.hits == 0


async def test_a_token_flood_is_cut_and_memory_stays_bounded(
    frontends: tuple[HostileFrontend, HostileFrontend], tmp_path: Path
) -> None:
    hostile, _ = frontends
    hostile.mode = "flood"
    output = tmp_path / "report.json"
    code, err, peak_kb = await run_verify(
        hostile.url, "--phase-seconds", "2", "--format", "json", "--output", str(output)
    )
    assert code == exitcodes.WARNING, err
    report = _report(output)
    standard = report["phases"]["standard"]
    assert standard["error_examples"]["bad_response"] == "more than 80 token chunks for max_tokens=16"
    requests = sum(report["phases"][p]["requests"] for p in ("standard", "overload", "recovery"))
    assert requests >= 10
    # Each request stops at 81 chunks: no more is read or kept (it was ~0.85 MB a request).
    assert standard["output_tokens"] == 0
    assert peak_kb < 150_000, f"verify peaked at {peak_kb} kB over {requests} requests"
