"""Shared fixtures: a real simulated Dynamo on loopback, a real sidecar pointed at it, an HTTP
session, a real Dynamo. Only fixtures live here; the plain helpers they use are in tests/helpers.py
(import those from `tests.helpers`, never from conftest)."""

from __future__ import annotations

import os

# Before agent/ is imported, and inherited by the sidecars tests start as subprocesses: an
# emission the catalogue does not declare raises instead of being counted (agent/core/handles.py).
os.environ["DYNAMO_SIDECAR_STRICT_METRICS"] = "1"

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import load_config
from agent.dynamo_sim import DynamoSim
from agent.runtime.sidecar import Sidecar
from tests.helpers import fast_overrides


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
