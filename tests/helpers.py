"""Test helpers: paths, a condition-with-deadline wait (tests never sleep blindly), a free port,
fast sidecar settings and small HTTP calls. Plain functions, imported as `tests.helpers`; the
pytest fixtures built on them live in conftest.py."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from agent.core.samples import CollectResult
from collectors.base import Collector

if TYPE_CHECKING:  # benches import these helpers without paying for the runtime's imports
    from agent.runtime.sidecar import Sidecar

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


class PeakRss:
    """A process's resident memory (this one's by default), sampled every 10 ms in a thread:
    the peak over a span."""

    def __init__(self, pid: int | None = None) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.base = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(5)


class Starts(Collector):
    """A collector that records when each of its runs began (monotonic), for scheduling tests."""

    def __init__(self, name: str, slows: bool = True, interval: float = 3600.0) -> None:
        super().__init__(interval=interval, timeout=1)
        self.name = name
        self.slows_when_quiet = slows
        self.starts: list[float] = []

    async def collect(self) -> CollectResult:
        self.starts.append(time.monotonic())
        return CollectResult()
