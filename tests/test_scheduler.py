from __future__ import annotations

import asyncio
import json

from agent.samples import CollectResult, sample
from agent.scheduler import Scheduler
from agent.state import State
from collectors.base import Collector
from tests.helpers import wait_for


class Good(Collector):
    name = "good"

    def __init__(self) -> None:
        super().__init__(interval=0.05, timeout=1)
        self.runs = 0

    async def collect(self) -> CollectResult:
        self.runs += 1
        return CollectResult(samples=[sample("dynamo_sidecar_processes_matched", self.runs)])


class Hangs(Collector):
    name = "hangs"

    def __init__(self) -> None:
        super().__init__(interval=0.05, timeout=0.1)
        self.cancelled = 0

    async def collect(self) -> CollectResult:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return CollectResult()


class Raises(Collector):
    name = "raises"

    def __init__(self) -> None:
        super().__init__(interval=0.05, timeout=1)

    async def collect(self) -> CollectResult:
        raise RuntimeError("boom")


class Garbage(Collector):
    name = "garbage"

    def __init__(self) -> None:
        super().__init__(interval=0.05, timeout=1)

    async def collect(self) -> CollectResult:
        return "not a result"  # type: ignore[return-value]


async def test_failures_are_isolated_and_timeouts_cancel() -> None:
    state = State()
    good, hangs = Good(), Hangs()
    scheduler = Scheduler([good, hangs, Raises(), Garbage()], state, jitter=0)
    scheduler.start()
    try:
        await wait_for(
            lambda: good.runs >= 5 and hangs.cancelled >= 2, timeout=10, what="collectors to cycle"
        )
        await wait_for(lambda: scheduler.first_cycle_done.is_set(), what="first cycle")
    finally:
        await scheduler.stop()
    statuses = state.collectors
    assert statuses["good"].last_success is True and statuses["good"].runs["error"] == 0
    assert statuses["hangs"].last_success is False and statuses["hangs"].runs["timeout"] >= 2
    assert "0.1s" in statuses["hangs"].last_error
    assert statuses["raises"].runs["error"] >= 1 and "boom" in statuses["raises"].last_error
    assert statuses["garbage"].last_success is False and "CollectResult" in statuses["garbage"].last_error
    assert state.value("dynamo_sidecar_processes_matched") is not None


async def test_speed_up_wakes_collectors_now() -> None:
    state = State()
    good = Good()
    good.interval = 60
    scheduler = Scheduler([good], state, jitter=0)
    scheduler.start()
    try:
        await wait_for(lambda: good.runs == 1, what="first run")
        scheduler.speed_up(0.05)
        await wait_for(lambda: good.runs >= 4, timeout=5, what="faster runs")
    finally:
        await scheduler.stop()


class Fatal(BaseException):
    """Not an Exception: the collector loop does not catch it, so the loop task ends."""


class Dies(Collector):
    name = "dies"

    def __init__(self) -> None:
        super().__init__(interval=0.05, timeout=1)

    async def collect(self) -> CollectResult:
        raise Fatal("the loop cannot survive this")


async def test_a_dead_collector_loop_is_named_and_healthz_fails(make_sidecar, http) -> None:
    from tests.helpers import base_url, get_text

    good = Good()
    sidecar = await make_sidecar(collectors=[good, Dies()])
    assert await wait_for(lambda: sidecar.scheduler.dead_tasks() == ["collector:dies"], what="dead loop")
    runs = good.runs
    await wait_for(lambda: good.runs > runs, what="the other collector still running")
    status, body = await get_text(http, base_url(sidecar) + "/healthz")
    assert (status, json.loads(body)) == (503, {"status": "unhealthy", "dead_tasks": ["collector:dies"]})
