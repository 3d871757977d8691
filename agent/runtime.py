"""Assembles the sidecar from a Config: collectors, scheduler, state, exporter, HTTP server;
and runs it until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.trace import Status, StatusCode

from agent import __version__
from agent.aio import wait_event
from agent.canary import Canary
from agent.catalogue import metric
from agent.config import Config, redact_url
from agent.diagnose import diagnose
from agent.diagnose.context import Context
from agent.diagnose.engine import RuleHealth, evaluate
from agent.diagnose.lifecycle import Lifecycle
from agent.drain import DrainCoordinator, DrainSummary
from agent.facts import ProcessFacts
from agent.httpguard import ConnectionLimiter
from agent.log import get as get_logger
from agent.membudget import budget, own_memory_limit
from agent.samples import Sample, sample
from agent.scheduler import Scheduler
from agent.signals import SLO_OBJECTIVES, DynamoNames, Signals, compute, slo_observations
from agent.state import State
from collectors.base import Collector
from collectors.cgroup import CgroupCollector
from collectors.dynamo_health import DynamoHealthCollector, Target
from collectors.dynamo_logs import DynamoLogCollector
from collectors.dynamo_metrics import DynamoMetricsCollector
from collectors.exposition import base_name
from collectors.gpu import GpuCollector
from collectors.process import ProcessCollector, ProcessFinder
from collectors.tcp import TcpCollector, parse_probe_target
from exporters.otlp import Telemetry
from exporters.prometheus import PrometheusExporter

if TYPE_CHECKING:
    from agent.server import HttpThread

log = get_logger("dynamo_sidecar.runtime")

RENDER_DEBOUNCE = 0.2
SWITCH_INTERVAL = 0.001
EXPORTER_SHUTDOWN = 0.5  # seconds given to the OTLP exporter's teardown at exit
# The sidecar's own series that rules and signals read as rates, increases or trends.
OWN_HISTORY = {
    metric(name)
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",  # the peak, for audit's memory-limit check
        "cgroup_cpu_periods_total",
        "cgroup_cpu_throttled_periods_total",
        "cgroup_memory_events_total",
        "tcp_kernel_total",
        "tcp_socket_retransmits",
    )
}  # collectors that finish together cost one render


def targets_from(config: Config) -> list[Target]:
    targets = []
    if config.watch_frontend:
        targets.append(
            Target(
                "frontend",
                "frontend",
                config.frontend_url,
                config.frontend_health_path,
                config.frontend_live_path,
            )
        )
    if config.watch_workers:
        many = len(config.worker_system_urls) > 1
        for index, url in enumerate(config.worker_system_urls):
            name = f"worker-{index}" if many else "worker"
            targets.append(Target(name, "worker", url, config.worker_health_path, config.worker_live_path))
    return targets


def service_ports(config: Config) -> dict[int, str]:
    """The Dynamo ports this pod serves (by the configured URLs)."""
    ports: dict[int, str] = {}
    for target in targets_from(config):
        port = urlsplit(target.base_url).port
        if port:
            ports[port] = "frontend" if target.kind == "frontend" else "worker_system"
    return ports


def wanted_families(names: DynamoNames) -> Callable[[str], bool]:
    """The scraped families signals and rules read (parsed into samples); the rest of
    Dynamo's surface passes through as checked text."""
    bases = {base_name(name) for name in names.history_names()}
    return lambda family: base_name(family) in bases


def build_collectors(
    config: Config,
    dynamo_pids: Callable[[], dict[int, str]] | None = None,
    listening_ports: Callable[[str], list[int]] | None = None,
) -> list[Collector]:
    finder = ProcessFinder(
        config.process_patterns, config.process_pid, config.process_pid_file, config.proc_root
    )
    targets = targets_from(config)
    collectors: list[Collector] = [
        ProcessCollector(finder, config.process_interval, config.collector_timeout),
        CgroupCollector(
            finder, config.cgroup_root, config.proc_root, config.process_interval, config.collector_timeout
        ),
    ]
    if targets:
        collectors.append(
            DynamoHealthCollector(
                targets,
                config.dynamo_interval,
                config.collector_timeout,
                config.http_timeout,
                listening_ports=listening_ports,
                models_memory=config.history_window,
            )
        )
        collectors.append(
            DynamoMetricsCollector(
                targets,
                config.metrics_path,
                config.dynamo_interval,
                config.collector_timeout,
                config.http_timeout,
                config.max_response_bytes,
                wanted=wanted_families(DynamoNames(frontend_prefix=config.frontend_metrics_prefix)),
            )
        )
    if config.gpu_enabled:
        collectors.append(
            GpuCollector(config.gpu_interval, config.collector_timeout, dynamo_pids=dynamo_pids)
        )
    if config.tcp_enabled:
        collectors.append(
            TcpCollector(
                config.tcp_interval,
                config.collector_timeout + config.tcp_probe_timeout * 2,
                service_ports=service_ports(config),
                role_map=config.tcp_peer_roles,
                probe_targets=[parse_probe_target(t) for t in config.tcp_probe_targets],
                probe_timeout=config.tcp_probe_timeout,
                proc_root=config.proc_root,
            )
        )
    if config.log_files:
        collectors.append(
            DynamoLogCollector(
                config.log_files,
                config.dynamo_interval,
                config.collector_timeout,
                config.log_max_bytes_per_cycle,
            )
        )
    return collectors


class Sidecar:
    def __init__(self, config: Config, collectors: list[Collector] | None = None) -> None:
        self.config = config
        self.names = DynamoNames(frontend_prefix=config.frontend_metrics_prefix)
        history_names = self.names.history_names()
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
            history_filter=frozenset(history_names | OWN_HISTORY).__contains__,
            memory_budget=budget(config.memory_budget, memory_limit),
            memory_limit=memory_limit,
        )
        self.collectors = (
            build_collectors(config, self._dynamo_pids, self._listening_ports)
            if collectors is None
            else collectors
        )
        self._dirty = asyncio.Event()
        self.scheduler = Scheduler(
            self.collectors, self.state, config.interval_jitter, on_update=self._mark_dirty
        )
        self.exporter = PrometheusExporter(
            self.state,
            extra_samples=self._extra_samples,
            passthrough=config.passthrough,
            allow=config.passthrough_allow,
            deny=config.passthrough_deny,
        )
        self.signals = Signals(window=config.signal_window)
        self._signal_inputs: tuple[float | None, float | None] = (None, None)
        self._signal_samples: list[Sample] = []
        self._cycle_signals: tuple[Signals, float] | None = None  # this render's, with their time
        self.draining = False
        self.started_monotonic = time.monotonic()
        self._renderer: asyncio.Task[None] | None = None
        self._http: HttpThread | None = None
        # The main event loop, where state is read and changed; the HTTP server runs on its
        # own (agent/server.py) and hands every handler but /metrics over to this one.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port: int = 0
        self.stopped = asyncio.Event()
        self.drain = DrainCoordinator(self)
        self.telemetry = Telemetry.from_config(config)
        self.state.event_listeners.append(self.telemetry.record_event)
        self.state.extra["otlp"] = self.telemetry
        self.canary = Canary(self)
        # Findings over time: every evaluation (one per collection cycle, and each /diagnose)
        # moves the same episodes, so `since` and "resolved" are within one cycle of the truth.
        self.lifecycle = Lifecycle()
        self.rule_health = RuleHealth()
        self.connections = ConnectionLimiter(config.max_connections)
        self.state.extra["canary"] = self.canary

    def _dynamo_pids(self) -> dict[int, str]:
        """The Dynamo processes the process collector found, for GPU per-process memory."""
        return {p.pid: p.process for p in self.state.facts("process", ProcessFacts).readable()}

    def _listening_ports(self, kind: str) -> list[int]:
        """Ports the Dynamo processes of one kind listen on (frontend: dynamo.frontend), and
        the sidecar's own when it watches itself (a simulated Dynamo inside it, as in the
        demo): the health search asks each port whether it answers as that kind."""
        processes = self.state.facts("process", ProcessFacts).readable()
        return [port for p in processes if p.role == kind or p.own for port in p.listen_ports]

    # --- derived values ---------------------------------------------------------------
    def _mark_dirty(self, _collector: str) -> None:
        self._dirty.set()

    def _extra_samples(self) -> list[Sample]:
        # The derived signals read only Dynamo's and the TCP collector's series: recomputed
        # when one of them brought new data, not on every render (other collectors' cycles).
        inputs = (self.state.latest_time.get("dynamo_metrics"), self.state.latest_time.get("tcp"))
        if inputs != self._signal_inputs:
            self._signal_inputs = inputs
            now = time.time()
            self.signals = compute(self.state, self.names, self.config.signal_window, now)
            # The cycle's findings evaluation right after this render reuses them (as of
            # `now`) rather than computing the same signals again: half its cost.
            self._cycle_signals = (self.signals, now)
            self._signal_samples = self.signals.to_samples() + self._slo_samples()
        out = list(self._signal_samples)
        out.append(sample("dynamo_sidecar_ready", 1 if self.ready else 0))
        out.append(sample("dynamo_sidecar_draining", 1 if self.draining else 0))
        if self.drain.summary is not None:
            out.extend(self.drain.summary.samples())
        out.extend(self.canary.samples())
        out.append(sample("dynamo_sidecar_http_connections", self.connections.active))
        out.append(sample("dynamo_sidecar_http_connections_refused_total", self.connections.refused))
        out.append(sample("dynamo_sidecar_http_connections_shed_total", self.connections.shed))
        out.extend(self.telemetry.samples())
        out.extend(self.rule_health.samples())
        return out

    def _slo_samples(self) -> list[Sample]:
        window = self.config.signal_window
        observed = slo_observations(self.state, self.names, self.config, window, time.time())
        out = []
        for objective in SLO_OBJECTIVES:
            target = getattr(self.config, "slo_" + objective)
            if target:
                out.append(sample("dynamo_sidecar_slo_target", target, objective=objective))
            if objective in observed:
                out.append(
                    sample("dynamo_sidecar_slo_observed", observed[objective].value, objective=objective)
                )
                out.append(
                    sample("dynamo_sidecar_slo_observations", observed[objective].count, objective=objective)
                )
        return out

    def mark_dirty(self) -> None:
        self._dirty.set()

    def on_drain_finished(self, summary: DrainSummary) -> None:
        self.scheduler.speed_up(None)
        self._dirty.set()
        if self.telemetry.enabled:
            span = self.telemetry.tracer.start_span(
                "dynamo_sidecar.drain",
                start_time=int(summary.started_at * 1e9),
                attributes={
                    f"dynamo.drain.{k}": v
                    for k, v in summary.to_dict().items()
                    if isinstance(v, str | int | float)
                },
            )
            if summary.work_left:
                span.set_status(Status(StatusCode.ERROR, "deadline reached with work in flight"))
            span.end(end_time=int(summary.ended_at * 1e9))

    @property
    def ready(self) -> bool:
        return self.scheduler.first_cycle_done.is_set() and not self.draining

    def _diagnose_context(
        self, window: float | None = None, signals: tuple[Signals, float] | None = None
    ) -> Context:
        """The rules' view now, or as of the moment `signals` (computed then) were."""
        if signals is None:
            now = time.time()
            signals = (compute(self.state, self.names, self.config.signal_window, now), now)
        return Context(
            self.state,
            self.config,
            signals[0],
            window=window or self.config.history_window,
            names=self.names,
            draining=self.draining,
            now=signals[1],
        )

    def diagnose_report(self, window: float | None = None, min_severity: str = "info") -> dict[str, Any]:
        # A narrowed window hides windowed findings without their condition ending: such a
        # report reads the episodes but does not move them.
        return diagnose(
            self._diagnose_context(window),
            min_severity=min_severity,
            lifecycle=self.lifecycle,
            record=window is None or window >= self.config.history_window,
            health=self.rule_health,
        )

    def evaluate_findings(self) -> None:
        """One evaluation into the lifecycle, once per collection cycle: as of this cycle's
        render when it computed the signals (the same result as computing them again at
        that moment), else now."""
        signals, self._cycle_signals = self._cycle_signals, None
        try:
            evaluate(
                self._diagnose_context(signals=signals), lifecycle=self.lifecycle, health=self.rule_health
            )
        except Exception as exc:  # the report path shows rule errors; this must not stop renders
            log.warning("findings evaluation failed", error=repr(exc)[:300])

    def auth_token(self) -> str:
        if self.config.auth_token:
            return self.config.auth_token
        if self.config.auth_token_file:
            try:
                with open(self.config.auth_token_file, encoding="utf-8") as handle:
                    return handle.read().strip()
            except OSError as exc:
                log.warning("cannot read auth_token_file", path=self.config.auth_token_file, error=str(exc))
        return ""

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started_monotonic, 3),
            "ready": self.ready,
            "draining": self.draining,
            "drain": self.drain.summary.to_dict() if self.drain.summary else None,
            "canary": self.canary.status(),
            "otlp": self.telemetry.status(),
            "config": self.config.redacted(),
            "targets": [
                {**t.__dict__, "base_url": redact_url(t.base_url)} for t in targets_from(self.config)
            ],
            "collectors": {name: status.to_dict() for name, status in self.state.collectors.items()},
            # For leak hunting: these must stay flat over days.
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "http_connections": self.connections.active,
            "history": {
                "series": self.state.history_series,
                "ring_capacity": self.state.ring_capacity,
                "bytes": self.state.history_bytes,
                "refused": self.state.history_refused,
                "memory_budget_bytes": self.state.memory_budget,
                "memory_budget_used_bytes": self.state.budget_used(),
                "memory_limit_bytes": self.state.memory_limit,
                "events": len(self.state.events),
            },
        }

    # --- lifecycle ----------------------------------------------------------------------
    def render_every(self) -> float:
        """One render per collection cycle: collectors finishing at different moments of a
        cycle are rendered together, not one render each."""
        fastest = min(self.config.process_interval, self.config.dynamo_interval)
        if self.draining:
            fastest = min(fastest, self.config.drain_interval)
        return max(RENDER_DEBOUNCE, fastest)

    async def _render_loop(self) -> None:
        last = 0.0
        while True:
            await self._dirty.wait()
            # Wait out the rest of the cycle since the last render (at least the debounce).
            delay = max(RENDER_DEBOUNCE, last + self.render_every() - time.monotonic())
            await asyncio.sleep(delay)
            self._dirty.clear()
            last = time.monotonic()
            try:
                for _ in self.exporter.render_steps():
                    await asyncio.sleep(0)  # a scrape waiting meanwhile is served now
            except Exception as exc:  # keep serving the last good exposition
                log.error("exposition render failed", error=repr(exc))
                continue
            # Prometheus asks for gzip: compress the new body off the event loop (zlib
            # releases the GIL) rather than in the first scrape that wants it.
            compress = self.exporter.precompress_job()
            if compress is not None:
                await asyncio.to_thread(compress)
            await asyncio.sleep(0)  # a scrape that arrived meanwhile first
            self.evaluate_findings()

    async def start(self) -> None:
        from agent.server import HttpThread

        # A thread running Python (the main loop's render, a collector) holds the GIL until
        # the interpreter asks it to let go, every switch interval (5 ms by default): a scrape
        # arriving on the HTTP thread meanwhile waits that long. 1 ms bounds the wait; the
        # extra hand-offs happen only under contention.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.scheduler.start()
        self.canary.start()
        self._renderer = asyncio.create_task(self._render_loop(), name="renderer")
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
        if self._renderer is not None:
            self._renderer.cancel()
            await asyncio.gather(self._renderer, return_exceptions=True)
        await self.scheduler.stop()
        if self._http is not None:
            await self._http.stop()
        # An OTLP receiver that is down can hold the exporter's shutdown in retries for many
        # seconds: it runs on a daemon thread and is waited for at most flush_timeout.
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def shut_down() -> None:
            try:
                self.telemetry.shutdown()
            except Exception as exc:  # an exporter failing at exit is logged, not raised
                log.warning("OTLP exporter shutdown failed", error=repr(exc)[:300])
            with contextlib.suppress(RuntimeError):  # the loop may be closed by then
                loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shut_down, name="otlp-shutdown", daemon=True).start()
        # The spans were flushed (flush_timeout) just before; what is left is the exporter's
        # own teardown, given EXPORTER_SHUTDOWN. Exit after the drain therefore takes at most
        # flush_timeout + EXPORTER_SHUTDOWN + the HTTP server's 1 s, inside the 5 s margin
        # drain_timeout leaves by default.
        if not await wait_event(done, min(EXPORTER_SHUTDOWN, self.config.flush_timeout)):
            log.warning(
                "OTLP exporter shutdown still running; not waiting for it", timeout=self.config.flush_timeout
            )
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
