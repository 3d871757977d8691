"""Shared fixtures: a real simulated Dynamo on loopback, a real sidecar pointed at it, and a
condition-with-deadline wait (tests never sleep blindly)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import load_config
from agent.dynamo_sim import DynamoSim
from agent.runtime import Sidecar

ROOT = Path(__file__).resolve().parent.parent
# Responses recorded from a real Dynamo 1.6.1, shipped in the package for the simulator.
RECORDED = ROOT / "agent" / "dynamo_sim" / "recorded"
PYTHON = sys.executable


async def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `condition` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def wait_for_sync(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fast_overrides(**extra: Any) -> dict[str, Any]:
    base = {
        "listen_host": "127.0.0.1",
        "listen_port": "0",
        "process_interval": "0.2",
        "dynamo_interval": "0.2",
        "collector_timeout": "1",
        "http_timeout": "0.5",
        "interval_jitter": "0",
        "startup_grace": "0",
        "process_pid": str(os.getpid()),
        # The host's socket table is not the test's: TCP tests enable it in a namespace or
        # scope their assertions to the sockets they made.
        "tcp_enabled": "false",
    }
    base.update({k: str(v) for k, v in extra.items()})
    return base


@pytest.fixture
async def sim() -> AsyncIterator[DynamoSim]:
    simulated = DynamoSim()
    await simulated.start("127.0.0.1", 0, 0, control_port=0)
    try:
        yield simulated
    finally:
        await simulated.stop()


@pytest.fixture
def sim_process() -> Iterator[dict[str, int]]:
    """`python -m agent.dynamo_sim` as its own process with the control port: its ports and pid."""
    import signal
    import subprocess

    from tests.procs import start_sim

    proc, ports = start_sim(control=True)
    try:
        yield ports
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
async def make_sidecar() -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    started: list[Sidecar] = []

    async def factory(
        sim: DynamoSim | None = None, collectors: list[Any] | None = None, **overrides: Any
    ) -> Sidecar:
        if sim is not None:
            overrides.setdefault("frontend_url", sim.url("frontend"))
            overrides.setdefault("worker_system_urls", sim.url("worker"))
        config = load_config(overrides=fast_overrides(**overrides))
        sidecar = Sidecar(config, collectors=collectors)
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield factory
    for sidecar in started:
        await sidecar.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def base_url(sidecar: Sidecar) -> str:
    return f"http://127.0.0.1:{sidecar.port}"


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json(content_type=None)


async def get_text(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str]:
    async with session.get(url, **kwargs) as response:
        return response.status, await response.text()


async def finding_ids(session: aiohttp.ClientSession, sidecar: Sidecar) -> set[str]:
    report = await get_json(session, base_url(sidecar) + "/diagnose")
    return {f["id"] for f in report["findings"]}


async def post_completion(session: aiohttp.ClientSession, frontend: str, **body: Any) -> tuple[int, bytes]:
    payload = {"model": "tiny", "prompt": "hi", "max_tokens": 2, **body}
    async with session.post(frontend + "/v1/completions", json=payload) as response:
        return response.status, await response.read()


@pytest.fixture
def dynamo(tmp_path: Path) -> Iterator[Any]:
    """A real Dynamo 1.6.1 (frontend + mocker) in tmp_path; tests start its parts."""
    from tests.real_dynamo import RealDynamo, dynamo_python

    python = dynamo_python()
    assert python is not None
    real = RealDynamo(python, tmp_path)
    try:
        yield real
    finally:
        real.stop()
