from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import urllib.error
import urllib.request

from agent.core.samples import CollectResult, sample
from agent.core.state import State
from agent.runtime.scheduler import Scheduler
from collectors.base import Collector
from tests.helpers import Starts, wait_for


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


async def test_a_collector_woken_from_another_thread_runs_now_and_a_storm_at_most_once_a_gap() -> None:
    from agent.runtime.scheduler import WAKE_GAP

    state = State()
    stamps = Starts("stamps")
    scheduler = Scheduler([stamps], state, jitter=0)
    scheduler.start()
    try:
        await wait_for(lambda: len(stamps.starts) == 1, what="the first run")
        await asyncio.sleep(WAKE_GAP)  # past the gap: one wake-up is one run, at once
        woke = time.monotonic()
        threading.Thread(target=stamps.wake).start()
        await wait_for(lambda: len(stamps.starts) == 2, timeout=5, what="the woken run")
        assert stamps.starts[1] - woke < WAKE_GAP / 2
        # 200 wake-ups from a thread over ~1.5 gaps: runs spaced a gap apart, not 200.
        storm_until = time.monotonic() + 1.5 * WAKE_GAP

        def storm() -> None:
            while time.monotonic() < storm_until:
                stamps.wake()
                time.sleep(1.5 * WAKE_GAP / 200)

        thread = threading.Thread(target=storm)
        thread.start()
        await asyncio.to_thread(thread.join)
        await wait_for(lambda: len(stamps.starts) == 4, timeout=5, what="the storm's runs")
        await asyncio.sleep(WAKE_GAP * 1.2)
        assert len(stamps.starts) == 4  # the storm's last wake-up ran once, nothing queued after
        gaps = [b - a for a, b in itertools.pairwise(stamps.starts[1:])]
        assert min(gaps) >= WAKE_GAP * 0.99, gaps
    finally:
        await scheduler.stop()


class Fatal(BaseException):
    """Not an Exception: what a collector's own code must never carry into its loop."""


class Dies(Collector):
    name = "dies"

    def __init__(self) -> None:
        super().__init__(interval=0.05, timeout=1)
        self.runs = 0

    async def collect(self) -> CollectResult:
        self.runs += 1
        raise Fatal("a BaseException from the collector's own code")


async def test_a_collector_raising_a_base_exception_fails_its_run_and_is_run_again(
    make_sidecar, http
) -> None:
    from tests.helpers import base_url, get_text

    good, dies = Good(), Dies()
    sidecar = await make_sidecar(collectors=[good, dies])
    await wait_for(lambda: dies.runs >= 3, what="the failing collector run again")
    status = sidecar.state.collectors["dies"]
    assert (status.last_success, status.last_error) == (
        False,
        "Fatal: a BaseException from the collector's own code",
    )
    runs = good.runs
    await wait_for(lambda: good.runs > runs, what="the other collector still running")
    assert sidecar.scheduler.dead_tasks() == []
    code, body = await get_text(http, base_url(sidecar) + "/healthz")
    assert (code, json.loads(body)["status"]) == (200, "ok")


class BreaksItsLoop(Good):
    """Its interval, which its loop reads after every run, raises once armed: the scheduler's
    own code failing, which no collector run catches."""

    name = "breaker"
    armed = False

    @property  # type: ignore[override]
    def interval(self) -> float:
        if self.armed:
            raise Fatal("the loop cannot survive this")
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        self._interval = value


async def test_a_dead_collector_loop_is_named_and_healthz_fails(make_sidecar, http) -> None:
    from tests.helpers import base_url, get_text

    breaker = BreaksItsLoop()
    sidecar = await make_sidecar(collectors=[breaker])
    await wait_for(lambda: breaker.runs >= 1, what="a first run")
    breaker.armed = True
    sidecar.scheduler.run_now()
    assert await wait_for(lambda: sidecar.scheduler.dead_tasks() == ["collector:breaker"], what="dead loop")
    code, body = await get_text(http, base_url(sidecar) + "/healthz")
    assert (code, json.loads(body)) == (503, {"status": "unhealthy", "dead_tasks": ["collector:breaker"]})


class Slow(Collector):
    """Always in the middle of a run."""

    name = "slow"

    def __init__(self) -> None:
        super().__init__(interval=0.05, timeout=30)
        self.started = 0

    async def collect(self) -> CollectResult:
        self.started += 1
        await asyncio.sleep(20)
        return CollectResult()


async def test_stop_ends_the_loops_while_runs_are_in_progress() -> None:
    """stop() with runs in progress and the loops' wake-ups pending (run_now(), as a drain's
    speed-up does) as it cancels them: stop() returns and nothing runs after it. (A
    sidecar hung at exit when Python 3.11's wait_for lost a loop's cancellation to a
    wake-up arriving with it; this ordering does not always meet that race.)"""
    state = State()
    slow, good = Slow(), Good()
    scheduler = Scheduler([slow, good], state, jitter=0)
    scheduler.start()
    await wait_for(lambda: slow.started == 1 and good.runs >= 2, what="a run in progress")
    scheduler.run_now()  # wake-ups pending as stop() cancels the loops (a drain does this)
    try:
        async with asyncio.timeout(10):
            await scheduler.stop()  # cancels the loops in this very step
    except TimeoutError:
        raise AssertionError("stop() did not return: a loop survived its cancellation") from None
    assert scheduler._tasks == []  # every loop ended and was let go
    runs = good.runs
    await asyncio.sleep(0.2)  # four of its intervals: nothing may run after stop()
    assert good.runs == runs


class BlocksTheLoop(Collector):
    """Once armed, one run blocks the whole event loop (a stuck rule or a CPU-bound step
    would), and says when the block began and ended."""

    name = "blocker"

    def __init__(self, seconds: float) -> None:
        super().__init__(interval=0.05, timeout=0.2)
        self.seconds = seconds
        self.armed = False
        self.blocking = threading.Event()
        self.ended_at = 0.0

    async def collect(self) -> CollectResult:
        if self.armed:
            self.armed = False
            self.blocking.set()
            time.sleep(self.seconds)  # blocks the loop on purpose
            self.ended_at = time.monotonic()
        return CollectResult()


def _healthz(url: str) -> tuple[int, dict[str, object], float]:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, json.loads(body), time.monotonic()


async def test_healthz_answers_while_the_main_loop_is_busy(make_sidecar) -> None:
    """The kubelet's probe is answered by the HTTP thread: a main loop held for 2 s (a long
    render step, a slow rule) neither delays the answer nor fails it."""
    from tests.helpers import base_url

    blocker = BlocksTheLoop(seconds=2.0)
    sidecar = await make_sidecar(collectors=[blocker])
    url = base_url(sidecar)
    answers: list[tuple[int, dict[str, object], float]] = []

    def probe() -> None:
        blocker.blocking.wait(10)
        answers.append(_healthz(url))

    prober = threading.Thread(target=probe)
    prober.start()
    blocker.armed = True
    await wait_for(lambda: blocker.ended_at > 0, timeout=15, what="the block to end")
    await asyncio.to_thread(prober.join, 10)
    status, body, answered_at = answers[0]
    assert (status, body) == (200, {"status": "ok"})
    assert answered_at < blocker.ended_at, "answered only after the main loop was free again"


async def test_a_main_loop_stuck_past_the_stall_limit_fails_healthz_and_recovers(make_sidecar) -> None:
    from tests.helpers import base_url

    blocker = BlocksTheLoop(seconds=3.0)
    sidecar = await make_sidecar(collectors=[blocker])
    sidecar.scheduler.stall_floor = 0.0  # the limit is then 3 x (0.05 + 0.2) = 0.75 s
    url = base_url(sidecar)
    answers: list[tuple[int, dict[str, object], float]] = []

    def probe_until_unhealthy() -> None:
        blocker.blocking.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answers.append(_healthz(url))
            if answers[-1][0] == 503:
                return
            time.sleep(0.1)

    prober = threading.Thread(target=probe_until_unhealthy)
    prober.start()
    blocker.armed = True
    await wait_for(lambda: blocker.ended_at > 0, timeout=15, what="the block to end")
    await asyncio.to_thread(prober.join, 15)
    status, body, answered_at = answers[-1]
    assert status == 503 and body["status"] == "unhealthy" and body["dead_tasks"] == []
    stalled = body["main_loop_stalled_seconds"]
    assert isinstance(stalled, float) and stalled > sidecar.scheduler.stall_limit() == 0.75
    assert answered_at < blocker.ended_at
    status_after, body_after, _ = await asyncio.to_thread(_healthz, url)
    assert (status_after, body_after) == (200, {"status": "ok"})
