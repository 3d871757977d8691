"""SIGTERM-coordinated drain: outlive Dynamo, watch its in-flight work reach zero (or its
processes exit, or the deadline pass), and leave a record.

Modelled on Envoy Gateway's shutdown manager and Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS,
but judged from Dynamo's own gauges: frontend in-flight and queued, worker in-flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from agent.core import metrics as m
from agent.core.aio import wait_event
from agent.core.components import RunState
from agent.core.facts import MetricsFacts, ProcessFacts
from agent.core.log import get as get_logger
from agent.core.samples import Event, Sample
from agent.core.signals import DynamoNames, inflight_now
from agent.core.state import State

if TYPE_CHECKING:
    from agent.config import Config

log = get_logger("dynamo_sidecar.drain")

INFLIGHT_ZERO = "inflight_zero"
PROCESS_EXITED = "process_exited"
DEADLINE = "deadline"
SECOND_SIGNAL = "second_signal"
NOTHING_TO_DRAIN = "nothing_to_drain"  # no Dynamo process and no readable work: exit at once
PROGRESS_EVERY = 10.0  # seconds between "still waiting" log lines
# Dynamo collectors run this fast while draining, so the last state is seen.
DYNAMO_COLLECTORS = ("dynamo_health", "dynamo_metrics", "process")


@dataclass
class DrainSummary:
    trigger: str
    started_at: float
    deadline_at: float
    # "hold": end when in-flight work reaches zero (a frontend's preStop waits on it);
    # "follow": Dynamo drains itself (a worker after SIGTERM): end when its processes exit.
    mode: str = "hold"
    reason: str = ""
    ended_at: float = 0.0
    inflight_at_start: float | None = None
    inflight_at_end: float | None = None
    requests_completed: float = 0.0
    requests_failed: float = 0.0
    processes_at_start: list[int] = field(default_factory=list)
    sources_unreachable: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return (self.ended_at or time.time()) - self.started_at

    @property
    def done(self) -> bool:
        return bool(self.reason)

    @property
    def work_left(self) -> bool:
        return self.reason in {DEADLINE, SECOND_SIGNAL} and bool(self.inflight_at_end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "mode": self.mode,
            "reason": self.reason or "in_progress",
            "started_at": round(self.started_at, 3),
            "ended_at": round(self.ended_at, 3) if self.ended_at else None,
            "duration_seconds": round(self.duration, 3),
            "deadline_at": round(self.deadline_at, 3),
            "inflight_at_start": self.inflight_at_start,
            "inflight_at_end": self.inflight_at_end,
            "requests_completed_during_drain": self.requests_completed,
            "requests_failed_during_drain": self.requests_failed,
            "processes_at_start": self.processes_at_start,
            "sources_unreachable": self.sources_unreachable,
        }

    def span_attributes(self) -> dict[str, Any]:
        return {f"dynamo.drain.{k}": v for k, v in self.to_dict().items() if isinstance(v, str | int | float)}

    def samples(self) -> list[Sample]:
        out = [
            m.DRAIN_DURATION_SECONDS.sample(self.duration),
            m.DRAIN_REQUESTS_FAILED.sample(self.requests_failed),
            m.DRAIN_REQUESTS_COMPLETED.sample(self.requests_completed),
        ]
        if self.inflight_at_start is not None:
            out.append(m.DRAIN_INFLIGHT_AT_START.sample(self.inflight_at_start))
        if self.inflight_at_end is not None:
            out.append(m.DRAIN_INFLIGHT_AT_END.sample(self.inflight_at_end))
        if self.reason:
            out.append(m.DRAIN_REASON.sample(1, reason=self.reason))
        return out


@dataclass(frozen=True)
class DrainConfig:
    """The drain's section of the Config."""

    timeout: float
    interval: float
    settle: float

    @classmethod
    def from_config(cls, config: Config) -> DrainConfig:
        return cls(config.drain_timeout, config.drain_interval, config.drain_settle)


class Collection(Protocol):
    """What the drain asks of the scheduler: a fresh look, at its own pace."""

    def next_run(self, name: str) -> asyncio.Event: ...
    def speed_up(self, interval: float | None, names: Sequence[str] | None = None) -> None: ...


class DrainCoordinator:
    def __init__(
        self,
        config: DrainConfig,
        state: State,
        names: DynamoNames,
        run: RunState,
        collection: Collection,
        on_finished: Callable[[DrainSummary], None] = lambda summary: None,
    ) -> None:
        """`run`: the drain sets its `draining`; `collection`: run Dynamo's collectors at the
        drain's pace; `on_finished`: called with the summary when the drain ends."""
        self.state = state
        self.names = names
        self.run = run
        self.collection = collection
        self.on_finished = on_finished
        self.timeout = config.timeout
        self.interval = config.interval
        self.settle = config.settle
        self.summary: DrainSummary | None = None
        self.finished = asyncio.Event()
        self._shorten = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.summary is not None and not self.summary.done

    def trigger(self, trigger: str, follow: bool = False) -> DrainSummary:
        """Start a drain (idempotent); a second trigger while draining shortens it. `follow`:
        Dynamo drains itself (a worker's preStop returns at once and SIGTERM follows), so the
        drain ends when its processes exit, not when in-flight work first reads zero."""
        if self.summary is not None:
            if not self.summary.done and trigger in {"sigterm", "sigint"}:
                log.warning("second signal during drain: ending it now", trigger=trigger)
                self._shorten.set()
            return self.summary
        now = time.time()
        self.summary = DrainSummary(
            trigger=trigger,
            started_at=now,
            deadline_at=now + self.timeout,
            mode="follow" if follow else "hold",
        )
        self.run.draining = True
        self._task = asyncio.create_task(self._run(), name="drain")
        return self.summary

    def _inflight(self) -> tuple[float | None, list[str]]:
        """Total in-flight work Dynamo reports now, and which sources cannot be read."""
        unreachable = [
            endpoint for endpoint, fact in self.state.facts(MetricsFacts).endpoints.items() if not fact.up
        ]
        return inflight_now(self.state, self.names), unreachable

    def _processes_alive(self, pids: list[int]) -> bool:
        alive = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                continue
        return bool(alive)

    def _counts(self) -> tuple[float, float] | None:
        """Frontend requests (ok, failed) counted so far; None while the frontend's metrics
        cannot be read (gone with its process), so the last readable count stands."""
        frontends = [
            fact
            for endpoint, fact in self.state.facts(MetricsFacts).endpoints.items()
            if endpoint == "frontend"
        ]
        if not frontends or not frontends[0].up:
            return None
        ok = failed = 0.0
        for item in self.state.find(self.names.requests_total):
            if item.label("status") == "error":
                failed += item.value
            else:
                ok += item.value
        return ok, failed

    async def _run(self) -> None:
        summary = self.summary
        assert summary is not None
        fresh = self.collection.next_run("dynamo_metrics")
        self.collection.speed_up(self.interval, DYNAMO_COLLECTORS)
        # One fresh look at Dynamo (the speed-up runs the collectors now) before judging
        # anything: the baseline for "during the drain" is the state at the signal.
        await wait_event(fresh, min(2.0, max(self.interval * 2, 0.5)))
        summary.inflight_at_start, _ = self._inflight()
        summary.processes_at_start = [p.pid for p in self.state.facts(ProcessFacts).readable()]
        counts_start = self._counts()
        counts_last = counts_start
        log.info(
            "drain started",
            trigger=summary.trigger,
            inflight=summary.inflight_at_start,
            processes=summary.processes_at_start,
            deadline_seconds=self.timeout,
        )
        self.state.add_event(
            Event(
                "drain_started",
                "sidecar",
                f"drain started by {summary.trigger}",
                attributes={"inflight": summary.inflight_at_start},
            )
        )
        if summary.mode == "follow" and not summary.processes_at_start:
            # No Dynamo process to follow (no shareProcessNamespace?): judge by in-flight work.
            summary.mode = "hold"
        zero_since: float | None = None
        reason = DEADLINE
        if not summary.processes_at_start and summary.inflight_at_start is None:
            # Dynamo is not running (or already gone) and no in-flight work can be read:
            # waiting would only hold the pod for the whole grace period.
            reason = NOTHING_TO_DRAIN
        else:
            log.info(
                "drain waiting for Dynamo's in-flight work to finish or its processes to exit; "
                "send the signal again to end the drain now",
                inflight=summary.inflight_at_start,
                processes=summary.processes_at_start,
                deadline_in_seconds=round(summary.deadline_at - time.time(), 1),
            )
        last_progress = time.monotonic()
        while reason != NOTHING_TO_DRAIN:
            now = time.time()
            inflight, unreachable = self._inflight()
            # When Dynamo's metrics go away with its process, the last value seen stands.
            if inflight is not None:
                summary.inflight_at_end = inflight
            summary.sources_unreachable = unreachable
            counts_last = self._counts() or counts_last
            if summary.processes_at_start and not self._processes_alive(summary.processes_at_start):
                reason = PROCESS_EXITED
                break
            if inflight == 0 and not unreachable and summary.mode == "hold":
                zero_since = zero_since or now
                if now - zero_since >= self.settle:
                    reason = INFLIGHT_ZERO
                    break
            else:
                zero_since = None
            remaining = summary.deadline_at - now
            if remaining <= 0:
                reason = DEADLINE
                break
            if time.monotonic() - last_progress >= PROGRESS_EVERY:
                last_progress = time.monotonic()
                log.info(
                    "drain still waiting; send the signal again to end it now",
                    inflight=inflight,
                    unreachable=unreachable,
                    deadline_in_seconds=round(remaining, 1),
                )
            if await wait_event(self._shorten, min(self.interval, remaining)):
                reason = SECOND_SIGNAL
                break
        counts_last = self._counts() or counts_last
        if counts_start is not None and counts_last is not None:
            summary.requests_completed = max(0.0, counts_last[0] - counts_start[0])
            summary.requests_failed = max(0.0, counts_last[1] - counts_start[1])
        summary.reason = reason
        summary.ended_at = time.time()
        self.state.add_event(
            Event("drain_finished", "sidecar", f"drain finished: {reason}", attributes=summary.to_dict())
        )
        fields = summary.to_dict()
        if summary.work_left:
            log.warning("drain deadline reached with work in flight", **fields)
        else:
            log.info("drain finished", **fields)
        self.collection.speed_up(None)  # the collectors' own pace again
        self.on_finished(summary)
        self.finished.set()

    async def wait(self, timeout: float) -> DrainSummary | None:
        await wait_event(self.finished, timeout)
        return self.summary
