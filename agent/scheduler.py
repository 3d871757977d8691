"""Runs each collector on its own interval with jitter, cancels it at its timeout and keeps
one collector's failure from touching any other.

One timer serves every collector: collectors due at about the same moment (within their
jitter) start together, so collectors sharing an interval stay in step and cost one wake-up
of the event loop per cycle, not one each (a wake-up costs ~90 us of CPU on a VM: the idle
sidecar's largest single overhead after its work, bench/overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence

from agent.log import get as get_logger
from agent.samples import CollectResult
from agent.state import State
from collectors.base import Collector

log = get_logger("dynamo_sidecar.scheduler")

IDLE_WAIT = 3600.0  # the timer's wait with every collector running (a run's end wakes it)


class Scheduler:
    def __init__(
        self,
        collectors: Sequence[Collector],
        state: State,
        jitter: float = 0.1,
        on_update: Callable[[str], None] | None = None,
    ) -> None:
        self.collectors = list(collectors)
        self.state = state
        self.jitter = jitter
        self.on_update = on_update
        self._tasks: list[asyncio.Task[None]] = []  # the timer: /healthz reports it if it died
        self._running: dict[str, asyncio.Task[None]] = {}  # collector -> its run in progress
        self._due: dict[str, float] = {}  # collector -> monotonic time of its next run
        self._wake = asyncio.Event()
        self._stopping = False
        self._interval_override: float | None = None
        self._completed: set[str] = set()
        self.first_cycle_done = asyncio.Event()
        self._next_run: dict[str, list[asyncio.Event]] = {}
        for collector in self.collectors:
            state.register_collector(collector.name, collector.interval, collector.timeout)

    def start(self) -> None:
        # A small random start offset (one for all: they start together).
        fastest = min((c.interval for c in self.collectors), default=1.0)
        first = time.monotonic() + random.uniform(0, min(0.2, fastest * self.jitter))
        for collector in self.collectors:
            self._due[collector.name] = first
        if self.collectors:
            self._tasks.append(asyncio.create_task(self._timer(), name="scheduler"))
        else:
            self.first_cycle_done.set()

    def dead_tasks(self) -> list[str]:
        """The scheduler's own tasks that have ended (its timer, "scheduler"). It runs until
        stop(), so while the sidecar runs, a timer that is done has crashed: what /healthz
        reports. A collector's run is a task of its own each time: one that fails is recorded
        as that collector's failure, and the timer starts it again."""
        return [task.get_name() for task in self._tasks if task.done()]

    async def stop(self) -> None:
        self._stopping = True  # the timer starts nothing more, even if a wake-up races this
        tasks = [*self._tasks, *self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._running.clear()
        for collector in self.collectors:
            try:
                await asyncio.wait_for(collector.close(), timeout=5)
            except Exception as exc:  # a close that fails must not stop the others
                log.warning("collector close failed", collector=collector.name, error=repr(exc))

    def speed_up(self, interval: float | None, names: Sequence[str] | None = None) -> None:
        """Run collectors at `interval` (None restores their own) and wake them now."""
        self._interval_override = interval
        self.run_now(names)

    def next_run(self, name: str) -> asyncio.Event:
        """An event set when the named collector next finishes a run."""
        event = asyncio.Event()
        self._next_run.setdefault(name, []).append(event)
        return event

    def run_now(self, names: Sequence[str] | None = None) -> None:
        now = time.monotonic()
        for collector in self.collectors:
            if names is None or collector.name in names:
                self._due[collector.name] = now
        self._wake.set()

    def _interval_for(self, collector: Collector) -> float:
        if self._interval_override is not None:
            return min(collector.interval, self._interval_override)
        return collector.interval

    async def _timer(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            # One draw per wake-up: collectors started together stay together.
            factor = 1 + random.uniform(-self.jitter, self.jitter)
            # Collectors of different intervals drift apart by up to two jitters of the
            # fastest between their common cycles: due within that, they run with the others.
            fastest = min(self._interval_for(c) for c in self.collectors)
            together = 2 * fastest * max(self.jitter, 0.01)
            for collector in self.collectors:
                name = collector.name
                if name in self._running:
                    continue
                interval = self._interval_for(collector)
                if self._due[name] <= now + max(interval * max(self.jitter, 0.01), together):
                    self._due[name] = now + interval * factor  # counted from this start
                    task = asyncio.create_task(self._run(collector), name=f"collector:{name}")
                    self._running[name] = task
            waiting = [self._due[c.name] for c in self.collectors if c.name not in self._running]
            delay = max(0.0, min(waiting) - time.monotonic()) if waiting else IDLE_WAIT
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns normally when the
            # event is set as the task is cancelled (each run's end sets it, and stop() cancels
            # the runs with the timer), and the timer would outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _run(self, collector: Collector) -> None:
        try:
            await self.run_once(collector)
        finally:
            self._running.pop(collector.name, None)
            if not self._stopping:
                self._wake.set()  # a run that outlasted its interval is due again at once

    async def run_once(self, collector: Collector) -> None:
        status = self.state.collectors[collector.name]
        started = time.monotonic()
        now = time.time()
        outcome = "ok"
        error = ""
        result: CollectResult | None = None
        try:
            async with asyncio.timeout(collector.timeout):
                result = await collector.collect()
            if not isinstance(result, CollectResult):
                outcome, error = "error", f"collect() returned {type(result).__name__}, not CollectResult"
        except TimeoutError:
            outcome, error = "timeout", f"did not finish within {collector.timeout:g}s"
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except (
            BaseException
        ) as exc:  # a collector's own BaseException is its failed run, never the timer's end
            outcome, error = "error", f"{type(exc).__name__}: {exc}"[:500]
        duration = time.monotonic() - started
        status.runs[outcome] += 1
        status.last_duration = duration
        status.last_run_time = now
        if outcome == "ok" and result is not None:
            try:
                self.state.update(collector.name, result, now=now)
            except Exception as exc:  # garbage samples: this collector fails, nobody else
                outcome, error = "error", f"bad result: {type(exc).__name__}: {exc}"[:500]
                status.runs["ok"] -= 1
                status.runs["error"] += 1
        if outcome == "ok":
            if status.consecutive_failures:
                log.info(
                    "collector recovered",
                    collector=collector.name,
                    after_failures=status.consecutive_failures,
                )
            status.last_success = True
            status.last_success_time = now
            status.last_error = ""
            status.consecutive_failures = 0
        else:
            if status.consecutive_failures == 0:
                status.first_failure_time = now
                log.warning("collector failed", collector=collector.name, outcome=outcome, error=error)
            status.last_success = False
            status.last_error = error
            status.consecutive_failures += 1
            self.state.generation += 1
        for event in self._next_run.pop(collector.name, []):
            event.set()
        self._completed.add(collector.name)
        if len(self._completed) == len(self.collectors):
            self.first_cycle_done.set()
        if self.on_update is not None:
            self.on_update(collector.name)
