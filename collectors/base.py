"""The collector contract the scheduler runs."""

from __future__ import annotations

import abc

from agent.samples import CollectResult


class Collector(abc.ABC):
    """A source of samples. `collect()` is called every `interval` seconds and is cancelled
    after `timeout`; raising marks only this collector failed for this run."""

    name: str = "collector"

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout

    @abc.abstractmethod
    async def collect(self) -> CollectResult: ...

    async def close(self) -> None:
        """Release sessions, threads, file handles. Called once at shutdown."""
        return None
