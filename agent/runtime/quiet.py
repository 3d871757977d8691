"""Watching a quiet pod more cheaply: while Dynamo serves nobody, answers its probes and raises
nothing, the collectors that may (Collector.slows_when_quiet: not health, not logs) run
`quiet_slowdown` times slower; on the first sign of anything they run at their own pace again
at once.

What tells a fault first keeps its pace: a hung, refusing or failing endpoint (health, every
dynamo_interval), an error line (logs), an XID (an NVML event, whatever the GPU interval).
What slows is what a quiet pod does not move: Dynamo's counters, process and cgroup use, the
GPUs' readings, the socket table. Traffic ends quiet at the first metrics scrape that sees it.
"""

from __future__ import annotations

import time

from agent.config import Config
from agent.core import metrics as m
from agent.core.components import RunState
from agent.core.facts import GpuFacts, HealthFacts
from agent.core.log import get as get_logger
from agent.core.samples import Sample
from agent.core.signals import DynamoNames
from agent.core.state import State
from agent.diagnose.model import SEVERITY_RANK, Finding
from agent.runtime.canary import Canary, RequestCount
from agent.runtime.scheduler import Scheduler

log = get_logger("dynamo_sidecar.runtime")


BUSY_GPU = 0.1  # a GPU busier than this is working, whatever the frontend says (multinode)


class QuietWatch:
    """Judges quiet once per collection cycle, after the findings evaluation, and sets the
    scheduler's pace."""

    def __init__(
        self,
        config: Config,
        state: State,
        scheduler: Scheduler,
        canary: Canary,
        run: RunState,
        names: DynamoNames,
    ) -> None:
        self.config = config
        self.state = state
        self.names = names
        # The worker's own request count (a worker pod has no frontend to read traffic from),
        # and when it last rose beyond this sidecar's canaries.
        self._worker_requests = RequestCount()
        self.last_worker_traffic = time.time()
        self.scheduler = scheduler
        self.canary = canary
        self.run = run
        # Never before three health cycles: one quiet look is not a quiet pod.
        self.after = max(config.quiet_after, 3 * config.dynamo_interval)
        self.quiet = False
        self.why_not = "starting"
        self.episodes = 0  # times the pod became quiet
        self.last_ended: tuple[float, str] | None = None  # when quiet last ended, and why
        # The inputs the last findings evaluation saw, and when it ran (monotonic).
        self._evaluated: tuple[tuple[object, ...], float] | None = None
        self.evaluations_skipped = 0

    def reason_not_quiet(self, findings: list[Finding], now: float) -> str:
        """Why the pod is not quiet now ("" when it is)."""
        if self.config.quiet_slowdown <= 1:
            return "off"
        if self.run.draining:
            return "draining"
        if not self.run.ready:
            return "starting"
        for finding in findings:
            if finding.active and SEVERITY_RANK[finding.severity] >= SEVERITY_RANK["warning"]:
                return f"finding {finding.id}"
        for endpoint, view in self.state.facts(HealthFacts).endpoints.items():
            if not view.probes or any(probe.outcome != "ok" for probe in view.probes.values()):
                return f"{endpoint} probe not ok"
        for index, gpu in self.state.facts(GpuFacts).gpus.items():
            if gpu.utilization is not None and gpu.utilization > BUSY_GPU:
                return f"GPU {index} busy"
        # The canary's traffic detection at the frontend: new requests (its own subtracted) or
        # work in flight; and the same at the worker, for a pod with no frontend.
        self.canary.observe_traffic(now)
        self._observe_worker(now)
        if now - max(self.canary.last_traffic, self.last_worker_traffic) < self.after:
            return "traffic"
        return ""

    def _observe_worker(self, now: float) -> None:
        total = self.state.latest_total(self.names.worker_requests_total)
        if total is not None and self._worker_requests.new_requests(total, self.canary.sent_through_frontend):
            self.last_worker_traffic = now
        inflight = (self.canary.signals.current.worker_inflight or 0) - self.canary.own_inflight()
        if inflight > 0:
            self.last_worker_traffic = now

    def inputs(self) -> tuple[object, ...]:
        """What can change the findings between two collection cycles: a run of a collector
        that does not vouch for its data (when it ran), the digest of one that does (the
        health probes and logs: CollectResult.digest), each collector's failures, the events
        recorded (restarts, XIDs, instance changes), the canaries' outcomes."""
        state = self.state
        runs: list[object] = []
        for name, status in state.collectors.items():
            latest = state.latest.get(name)
            digest = latest.digest if latest is not None and status.last_success else None
            runs.append(
                (name, status.consecutive_failures, status.last_run_time if digest is None else digest)
            )
        canaries = tuple(
            (model, watch.consecutive_failures, watch.last.outcome if watch.last is not None else "")
            for model, watch in self.canary.models.items()
        )
        return (tuple(runs), sum(state.event_counts.values()), canaries, self.canary.starting_failures)

    def pace(self) -> float:
        """Seconds a quiet pod's findings may go without an evaluation when nothing changed:
        the quiet pace, half an interval short of it (as the render's)."""
        return self.config.dynamo_interval * (self.config.quiet_slowdown - 0.5)

    def should_evaluate(self, now: float | None = None) -> bool:
        """Whether this cycle's findings evaluation runs: always, unless the pod is quiet, its
        inputs are those the last evaluation saw, and that was less than `pace()` ago. A
        quiet pod's cycle that brought only health probes answering as before is not
        judged again; one that brought anything else is, at once."""
        now = time.monotonic() if now is None else now
        inputs = self.inputs()
        last = self._evaluated
        if self.quiet and last is not None and last[0] == inputs and now - last[1] < self.pace():
            self.evaluations_skipped += 1
            return False
        self._evaluated = (inputs, now)
        return True

    def judge(self, findings: list[Finding], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._set(self.reason_not_quiet(findings, now))

    def give_up(self, why: str) -> None:
        """Not quiet, for a reason outside the pod (the evaluation itself failed)."""
        self._set(why)

    def _set(self, why_not: str) -> None:
        quiet = not why_not
        if quiet != self.quiet:
            self.quiet = quiet
            self.scheduler.set_quiet(self.config.quiet_slowdown if quiet else 1)
            if quiet:
                self.episodes += 1
                log.info(
                    "pod quiet: collectors slowed",
                    factor=self.config.quiet_slowdown,
                    collectors=self.scheduler.slowed(),
                )
            else:
                self.last_ended = (time.time(), why_not)
                log.info("pod no longer quiet: collectors at their own pace", reason=why_not)
        self.why_not = why_not

    def status(self) -> dict[str, object]:
        """For /status: whether the pod is quiet, why not, and what runs slower."""
        return {
            "quiet": self.quiet,
            "why_not": self.why_not,
            "factor": self.scheduler.quiet_factor,
            "slowed": self.scheduler.slowed(),
            "last_ended": None
            if self.last_ended is None
            else {"at": self.last_ended[0], "reason": self.last_ended[1]},
        }

    def samples(self) -> list[Sample]:
        return [
            m.QUIET.sample(1 if self.quiet else 0),
            m.EVALUATIONS_SKIPPED_TOTAL.sample(self.evaluations_skipped),
        ]
