"""Assembles the sidecar from a Config: collectors, scheduler, state, exporter, HTTP server;
and runs it until a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.config import Config, redact_url
from agent.core import metrics as m
from agent.core.components import Components, RunState
from agent.core.facts import ProcessFacts
from agent.core.log import get as get_logger
from agent.core.membudget import budget, own_memory_limit
from agent.core.samples import Sample
from agent.core.signals import DynamoNames, Signals, SignalsCache
from agent.core.state import State
from agent.diagnose import diagnose
from agent.diagnose.context import Context
from agent.diagnose.engine import RuleHealth, evaluate
from agent.diagnose.lifecycle import Lifecycle
from agent.runtime.canary import Canary, CanaryConfig
from agent.runtime.drain import DrainConfig, DrainCoordinator, DrainSummary
from agent.runtime.httpguard import ConnectionLimiter
from agent.runtime.quiet import QuietWatch
from agent.runtime.scheduler import Scheduler
from collectors import cgroup, dynamo_logs, gpu, process, tcp  # noqa: F401  (they register)
from collectors.base import Collector, Hooks, registered
from collectors.dynamo_health import targets_from
from collectors.dynamo_metrics import wanted_families
from collectors.process import finder_from
from exporters.otlp import Telemetry
from exporters.prometheus import PrometheusExporter
from exporters.render_loop import RenderLoop, SignalSamples

if TYPE_CHECKING:
    from agent.runtime.server import HttpThread

log = get_logger("dynamo_sidecar.runtime")

SWITCH_INTERVAL = 0.001
EXPORTER_SHUTDOWN = 0.5  # seconds given to the OTLP exporter's teardown at exit
# The sidecar's own series that rules and signals read as rates, increases or trends.
OWN_HISTORY = {
    handle.name
    for handle in (
        m.PROCESS_CPU_SECONDS_TOTAL,
        m.PROCESS_RESIDENT_MEMORY_BYTES,  # the peak, for audit's memory-limit check
        m.CGROUP_CPU_PERIODS_TOTAL,
        m.CGROUP_CPU_THROTTLED_PERIODS_TOTAL,
        m.CGROUP_MEMORY_EVENTS_TOTAL,
        m.TCP_KERNEL_TOTAL,
        m.TCP_SOCKET_RETRANSMITS,
    )
}
__all__ = ["Sidecar", "build_collectors", "targets_from", "wanted_families"]


def build_collectors(
    config: Config,
    dynamo_pids: Callable[[], dict[int, str]] | None = None,
    listening_ports: Callable[[str], list[int]] | None = None,
) -> list[Collector]:
    """The collectors the config turns on, from the registry (collectors/base.py), in order."""
    hooks = Hooks(finder_from(config), dynamo_pids, listening_ports)
    return [spec.factory(config, hooks) for spec in registered() if spec.enabled(config)]


class Sidecar:
    """Composition only: builds the parts from the Config and wires each to the few others
    it needs; the work is theirs."""

    def __init__(self, config: Config, collectors: list[Collector] | None = None) -> None:
        self.config = config
        self.names = DynamoNames(frontend_prefix=config.frontend_metrics_prefix)
        memory_limit = config.memory_limit or own_memory_limit()
        self.state = State(
            history_window=config.history_window,
            min_interval=min(config.process_interval, config.dynamo_interval),
            max_series_per_metric=config.max_series_per_metric,
            max_series=config.max_series,
            max_metric_names=config.max_metric_names,
            max_events=config.max_events,
            # Own metrics and the Dynamo series signals need; the rest only pass through.
            # History only for what rules and signals read over time; every other series
            # needs only its latest value (and Prometheus keeps its history).
            history_filter=frozenset(self.names.history_names() | OWN_HISTORY).__contains__,
            memory_budget=budget(config.memory_budget, memory_limit),
            memory_limit=memory_limit,
        )
        self.collectors = (
            build_collectors(config, self._dynamo_pids, self._listening_ports)
            if collectors is None
            else collectors
        )
        self.scheduler = Scheduler(
            self.collectors, self.state, config.interval_jitter, on_update=lambda _name: self.mark_dirty()
        )
        self.run = RunState(self.scheduler.first_cycle_done)
        self.signal_cache = SignalsCache(self.state, self.names, config.signal_window)
        self.telemetry = Telemetry.from_config(config)
        self.state.event_listeners.append(self.telemetry.record_event)
        self.drain = DrainCoordinator(
            DrainConfig.from_config(config),
            self.state,
            self.names,
            self.run,
            self.scheduler,
            on_finished=self._drain_finished,
        )
        self.canary = Canary(
            CanaryConfig.from_config(config),
            self.state,
            self.names,
            self.signal_cache,
            self.run,
            self.telemetry,
            on_round=self.mark_dirty,
        )
        # Findings over time: every evaluation (one per collection cycle, and each /diagnose)
        # moves the same episodes, so `since` and "resolved" are within one cycle of the truth.
        self.lifecycle = Lifecycle()
        self.quiet = QuietWatch(config, self.state, self.scheduler, self.canary, self.run, self.names)
        self.rule_health = RuleHealth()
        self.connections = ConnectionLimiter(config.max_connections)
        self._signal_samples = SignalSamples(self.signal_cache, config)
        self.exporter = PrometheusExporter(
            self.state,
            extra_samples=self._extra_samples,
            passthrough=config.passthrough,
            allow=config.passthrough_allow,
            deny=config.passthrough_deny,
        )
        self.renderer = RenderLoop(
            self.exporter,
            config,
            self.run,
            after=self.evaluate_findings,
            quiet_factor=lambda: self.scheduler.quiet_factor,
        )
        self.started_monotonic = time.monotonic()
        self._http: HttpThread | None = None
        # The main event loop, where state is read and changed; the HTTP server runs on its
        # own (agent/runtime/server.py) and hands every handler but /metrics over to this one.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int = 0
        self.stopped = asyncio.Event()

    # --- views other parts are given ------------------------------------------------------
    def _dynamo_pids(self) -> dict[int, str]:
        """The Dynamo processes the process collector found, for GPU per-process memory."""
        return {p.pid: p.process for p in self.state.facts(ProcessFacts).readable()}

    def _listening_ports(self, kind: str) -> list[int]:
        """Ports the Dynamo processes of one kind listen on (frontend: dynamo.frontend), and
        the sidecar's own when it watches itself (a simulated Dynamo inside it, as in the
        demo): the health search asks each port whether it answers as that kind."""
        processes = self.state.facts(ProcessFacts).readable()
        return [port for p in processes if p.role == kind or p.own for port in p.listen_ports]

    def _extra_samples(self) -> list[Sample]:
        """The exposition's samples beyond the collectors': derived signals, the parts' own."""
        out = self._signal_samples()
        out.append(m.READY.sample(1 if self.ready else 0))
        out.append(m.DRAINING.sample(1 if self.draining else 0))
        out.extend(self.quiet.samples())
        out.append(m.RENDERS_SKIPPED_TOTAL.sample(self.exporter.renders_skipped))
        if self.drain.summary is not None:
            out.extend(self.drain.summary.samples())
        out.extend(self.canary.samples())
        out.append(m.HTTP_CONNECTIONS.sample(self.connections.active))
        out.append(m.HTTP_CONNECTIONS_REFUSED_TOTAL.sample(self.connections.refused))
        out.append(m.HTTP_CONNECTIONS_SHED_TOTAL.sample(self.connections.shed))
        out.extend(self.telemetry.samples())
        out.extend(self.rule_health.samples())
        return out

    def mark_dirty(self) -> None:
        self.renderer.mark_dirty()

    def _drain_finished(self, summary: DrainSummary) -> None:
        self.mark_dirty()
        error = "deadline reached with work in flight" if summary.work_left else ""
        self.telemetry.record_span(
            "dynamo_sidecar.drain", summary.started_at, summary.ended_at, summary.span_attributes(), error
        )

    @property
    def ready(self) -> bool:
        return self.run.ready

    @property
    def draining(self) -> bool:
        return self.run.draining

    @property
    def signals(self) -> Signals:
        """The signals as of the last render."""
        return self.signal_cache.current

    # --- findings -------------------------------------------------------------------------
    def components(self) -> Components:
        return Components(drain=self.drain.summary, canary=self.canary, otlp=self.telemetry)

    def diagnose_context(self, signals: tuple[Signals, float], window: float | None = None) -> Context:
        """The rules' view as of the moment `signals` (computed then) were."""
        return Context(
            self.state,
            self.config,
            signals[0],
            window=window or self.config.history_window,
            names=self.names,
            draining=self.draining,
            now=signals[1],
            components=self.components(),
        )

    def diagnose_report(self, window: float | None = None, min_severity: str = "info") -> dict[str, Any]:
        # A narrowed window hides windowed findings without their condition ending: such a
        # report reads the episodes but does not move them.
        return diagnose(
            self.diagnose_context(self.signal_cache.now(), window),
            min_severity=min_severity,
            lifecycle=self.lifecycle,
            record=window is None or window >= self.config.history_window,
            health=self.rule_health,
        )

    def evaluate_findings(self) -> None:
        """One evaluation into the lifecycle, once per collection cycle: as of this cycle's
        render when it computed the signals, else now. Its findings set the collectors'
        pace (agent/runtime/quiet.py)."""
        if not self.quiet.should_evaluate():
            return  # a quiet pod's cycle that changed nothing the rules read
        try:
            # Brings the signals up to date when no render did (nobody scrapes): the canary
            # and /signals read them as of the last cycle.
            self.signal_cache.refresh()
            context = self.diagnose_context(self.signal_cache.for_evaluation())
            findings, _ = evaluate(context, lifecycle=self.lifecycle, health=self.rule_health)
        except Exception as exc:  # the report path shows rule errors; this must not stop renders
            log.warning("findings evaluation failed", error=repr(exc)[:300])
            self.quiet.give_up("findings evaluation failed")  # quiet needs a look that worked
            return
        self.quiet.judge(findings)

    async def start(self) -> None:
        from agent.runtime.server import HttpThread

        # A thread running Python (the main loop's render, a collector) holds the GIL until
        # the interpreter asks it to let go, every switch interval (5 ms by default): a scrape
        # arriving on the HTTP thread meanwhile waits that long. 1 ms bounds the wait; the
        # extra hand-offs happen only under contention.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.scheduler.start()
        self.canary.start()
        self.renderer.start()
        self.loop = asyncio.get_running_loop()
        self._http = HttpThread(self)
        self.port = await self._http.start()
        log.info(
            "sidecar listening",
            host=self.config.listen_host,
            port=self.port,
            targets=[redact_url(t.base_url) for t in targets_from(self.config)],
            collectors=[c.name for c in self.collectors],
        )

    async def stop(self) -> None:
        await self.canary.stop()
        await self.renderer.stop()
        await self.scheduler.stop()
        if self._http is not None:
            await self._http.stop()
        # The spans were flushed (flush_timeout) just before; what is left is the exporter's
        # own teardown, given EXPORTER_SHUTDOWN. Exit after the drain therefore takes at most
        # flush_timeout + EXPORTER_SHUTDOWN + the HTTP server's 1 s, inside the 5 s margin
        # drain_timeout leaves by default.
        await self.telemetry.shut_down_within(min(EXPORTER_SHUTDOWN, self.config.flush_timeout))
        self.stopped.set()

    async def flush_telemetry(self) -> None:
        """Final flush at exit; bounded by flush_timeout. The exposition is re-rendered so a
        scrape racing the exit sees the drain's outcome."""
        try:
            self.exporter.render()
        except Exception as exc:
            log.error("final render failed", error=repr(exc))
        if not await asyncio.to_thread(self.telemetry.flush, self.config.flush_timeout):
            log.warning(
                "OTLP flush did not finish", timeout=self.config.flush_timeout, **self.telemetry.status()
            )

    async def run_until_signal(self) -> int:
        await self.start()
        signalled = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(name: str) -> None:
            if self.drain.summary is not None and self.drain.summary.done:
                signalled.set()  # drained already (POST /drain): just exit
                return
            self.drain.trigger(name)
            signalled.set()

        loop.add_signal_handler(signal.SIGTERM, on_signal, "sigterm")
        loop.add_signal_handler(signal.SIGINT, on_signal, "sigint")
        await signalled.wait()
        if self.drain.summary is not None:
            # Never hang past the deadline: the coordinator ends itself there; this is a backstop.
            await self.drain.wait(self.drain.timeout + self.config.drain_interval + 5)
        try:
            await asyncio.wait_for(self.flush_telemetry(), timeout=self.config.flush_timeout)
        except TimeoutError:
            log.warning("final telemetry flush timed out", timeout=self.config.flush_timeout)
        await self.stop()
        log.info("sidecar exiting", drain=self.drain.summary.to_dict() if self.drain.summary else None)
        return 0
