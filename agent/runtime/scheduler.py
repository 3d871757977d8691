"""Runs each collector on its own interval with jitter, cancels it at its timeout and keeps
one collector's failure from touching any other.

Each collector has its own loop and timer. One timer starting the collectors due together
was tried (issue 28) and measured dearer on the idle sidecar: collectors running at once
contend for the GIL in the thread pool, and the threads' wake-ups went up 2-20x while the
event loop's did not go down (bench/RESULTS.md). While the pod is quiet, the slowed
collectors run on a common beat instead, a few tens of milliseconds apart (`_until_beat`):
one findings evaluation then judges a beat's data, where independent timers spread it over
every cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections.abc import Callable, Sequence

from agent.core.log import get as get_logger
from agent.core.samples import CollectResult
from agent.core.state import State
from collectors.base import Collector

log = get_logger("dynamo_sidecar.scheduler")

# Seconds between the runs of two slowed collectors on a quiet beat: apart, so they do not
# contend for the GIL, and all inside the render loop's 0.2 s debounce, so one evaluation
# judges them together.
BEAT_STAGGER = 0.03
WAKE_GAP = 1.0  # seconds: the least time between the starts of two runs a collector woke itself


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
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeups: dict[str, asyncio.Event] = {}
        self._interval_override: float | None = None
        # How many times slower the collectors that may (Collector.slows_when_quiet) run
        # while the pod is quiet; 1 otherwise. Set by set_quiet().
        self.quiet_factor = 1
        self._completed: set[str] = set()
        self.first_cycle_done = asyncio.Event()
        self._next_run: dict[str, list[asyncio.Event]] = {}
        self._started: dict[str, float] = {}  # when each collector's current or last run began
        self._pending_wake: dict[str, asyncio.TimerHandle] = {}
        self._beat_anchor = 0.0  # the quiet beat's origin (monotonic): set as the pod becomes quiet
        self._stopping = False
        # When a collector run last ended (monotonic): /healthz reads it from the HTTP thread
        # (one float, written whole) to tell a stuck main loop without waiting on that loop.
        self.last_progress = time.monotonic()
        self.stall_floor = 30.0
        self._slowest = 0.0
        for collector in self.collectors:
            state.register_collector(collector.name, collector.interval, collector.timeout)

    def start(self) -> None:
        # Read once here, on the main loop: /healthz asks from the HTTP thread.
        self._slowest = max((c.interval + c.timeout for c in self.collectors), default=0.0)
        self.last_progress = time.monotonic()
        loop = asyncio.get_running_loop()
        for collector in self.collectors:
            self._wakeups[collector.name] = asyncio.Event()
            collector.wake = functools.partial(self._wake_from_thread, loop, collector.name)
            task = asyncio.create_task(self._loop(collector), name=f"collector:{collector.name}")
            self._tasks.append(task)
        if not self.collectors:
            self.first_cycle_done.set()

    def stall_limit(self) -> float:
        """How long with no collector run ending means the main loop is stuck: three times
        the slowest collector's interval and timeout (a run that times out still ends), and
        never under stall_floor (30 s): a long render step or rule evaluation is not a stall."""
        return max(self.stall_floor, 3 * self._slowest)

    def stalled_for(self) -> float:
        """Seconds since a collector run last ended, once that is past stall_limit; else 0."""
        if not self.collectors or self._stopping:
            return 0.0
        quiet = time.monotonic() - self.last_progress
        return quiet if quiet > self.stall_limit() else 0.0

    def dead_tasks(self) -> list[str]:
        """The names of the collector loops that have ended. Each runs until stop(), so while
        the sidecar runs, one that is done has crashed: what /healthz reports. A collector's
        own exception (a BaseException too) is its failed run, not its loop's end."""
        return [task.get_name() for task in self._tasks if task.done()]

    async def stop(self) -> None:
        self._stopping = True  # a loop whose cancellation is lost ends at its next turn
        for handle in self._pending_wake.values():
            handle.cancel()
        self._pending_wake.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for collector in self.collectors:
            try:
                await asyncio.wait_for(collector.close(), timeout=5)
            except Exception as exc:  # a close that fails must not stop the others
                log.warning("collector close failed", collector=collector.name, error=repr(exc))

    def speed_up(self, interval: float | None, names: Sequence[str] | None = None) -> None:
        """Run collectors at `interval` (None restores their own) and wake them now."""
        self._interval_override = interval
        for collector in self.collectors:
            if names is None or collector.name in names:
                self._wakeups[collector.name].set()

    def next_run(self, name: str) -> asyncio.Event:
        """An event set when the named collector next finishes a run."""
        event = asyncio.Event()
        self._next_run.setdefault(name, []).append(event)
        return event

    def run_now(self, names: Sequence[str] | None = None) -> None:
        for name, wakeup in self._wakeups.items():
            if names is None or name in names:
                wakeup.set()

    def _wake_from_thread(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the sidecar is exiting
            loop.call_soon_threadsafe(self._woken, name)

    def _woken(self, name: str) -> None:
        """A collector's own wake-up (Collector.wake): a run now, or WAKE_GAP after the last
        one began, so a source that signals without pause (an XID storm) cannot keep its
        collector running back to back."""
        if name in self._pending_wake:
            return
        wait = self._started.get(name, -math.inf) + WAKE_GAP - time.monotonic()
        if wait <= 0:
            self.run_now([name])
            return

        def later() -> None:
            del self._pending_wake[name]
            self.run_now([name])

        self._pending_wake[name] = asyncio.get_running_loop().call_later(wait, later)

    def set_quiet(self, factor: int) -> None:
        """Stretch the intervals of the collectors that may slow by `factor` (1: their own).
        Going back to 1 wakes the stretched ones now: the first anomaly is looked at with
        every source, not at the quiet pace."""
        was, self.quiet_factor = self.quiet_factor, max(1, factor)
        if self.quiet_factor > 1 and was == 1:
            # Quiet begins in a render-loop cycle, and those follow each other every fastest
            # slowed interval while health keeps marking them: half of one later, a beat's
            # staggered runs are all in before the cycle that judges them.
            fastest = min((c.interval for c in self.collectors if c.slows_when_quiet), default=0.0)
            self._beat_anchor = time.monotonic() + fastest / 2
        if self.quiet_factor < was:
            self.run_now([c.name for c in self.collectors if c.slows_when_quiet])

    def slowed(self) -> list[str]:
        """The collectors running slower now."""
        if self.quiet_factor == 1 or self._interval_override is not None:
            return []
        return [c.name for c in self.collectors if c.slows_when_quiet]

    def _until_beat(self, collector: Collector, started: float) -> float | None:
        """While the pod is quiet, the seconds until a slowed collector's next run on the quiet
        beat (None when it runs on its own interval). The beat is the fastest slowed
        interval (process, cgroup and Dynamo metrics: 2 x 5 s), anchored when quiet began;
        each slowed collector runs on the first beat past most of its own slowed interval
        (GPU and TCP: every other one), at its own small offset into the beat, one after
        the other. A beat's new data is then judged by one findings evaluation, where
        independent timers spread them over every cycle and each cycle was judged (the
        evaluation is what a quiet pod's cycle costs most); running them at the very same
        moment was measured dearer (bench/RESULTS.md: the pool threads contend for the GIL)."""
        if self.quiet_factor == 1 or self._interval_override is not None or not collector.slows_when_quiet:
            return None
        slowed = [c for c in self.collectors if c.slows_when_quiet]
        beat = min(c.interval for c in slowed) * self.quiet_factor
        due = started + collector.interval * self.quiet_factor - beat / 2
        beats = math.ceil((due - self._beat_anchor) / beat)
        offset = slowed.index(collector) * min(BEAT_STAGGER, beat / (4 * len(slowed)))
        return max(0.0, self._beat_anchor + beats * beat + offset - time.monotonic())

    def _interval_for(self, collector: Collector) -> float:
        if self._interval_override is not None:
            return min(collector.interval, self._interval_override)
        if collector.slows_when_quiet:
            return collector.interval * self.quiet_factor
        return collector.interval

    async def _loop(self, collector: Collector) -> None:
        # A small random start offset keeps collectors from firing in lock-step.
        await asyncio.sleep(random.uniform(0, min(0.2, collector.interval * self.jitter)))
        wakeup = self._wakeups[collector.name]
        while not self._stopping:
            started = self._started[collector.name] = time.monotonic()
            # Cleared before the run, not after: a wake-up asked for during the run (an XID
            # after the run read the events) runs it again at once instead of being lost.
            wakeup.clear()
            await self.run_once(collector)
            interval = self._interval_for(collector)
            delay = interval * (1 + random.uniform(-self.jitter, self.jitter))
            remaining = max(0.0, delay - (time.monotonic() - started))
            on_beat = self._until_beat(collector, started)
            if on_beat is not None:
                remaining = on_beat
            # The interval's end sets the same event a wake-up does: the sleep ends without a
            # timeout's cancellation and exception (~0.1 ms each on an idle sidecar), and a
            # stop() cancelling the task meanwhile ends it (the timer is cancelled with it).
            timer = asyncio.get_running_loop().call_later(remaining, wakeup.set)
            try:
                await wakeup.wait()
            finally:
                timer.cancel()

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
        except BaseException as exc:  # the collector's own (even not an Exception): its failed run
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
        self.last_progress = time.monotonic()
        for event in self._next_run.pop(collector.name, []):
            event.set()
        self._completed.add(collector.name)
        if len(self._completed) == len(self.collectors):
            self.first_cycle_done.set()
        if self.on_update is not None:
            self.on_update(collector.name)
