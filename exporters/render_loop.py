"""When the Prometheus exposition is rendered: once per collection cycle after new data, off
the scrape path; and the derived samples (signals, SLOs) rendered with it."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from agent.config import Config
from agent.core import metrics as m
from agent.core.components import RunState
from agent.core.log import get as get_logger
from agent.core.samples import Sample
from agent.core.signals import SLO_OBJECTIVES, Signals, SignalsCache, slo_observations
from exporters.prometheus import PrometheusExporter

log = get_logger("dynamo_sidecar.runtime")

RENDER_DEBOUNCE = 0.2


class SignalSamples:
    """The derived signals and the SLO observations as samples, computed again only when
    the signals' inputs brought new data (SignalsCache.refresh)."""

    def __init__(self, signals: SignalsCache, config: Config) -> None:
        self.signals = signals
        self.config = config
        self._samples: list[Sample] = []
        self._of: Signals | None = None  # the signals _samples were made from

    def __call__(self) -> list[Sample]:
        self.signals.refresh()  # the evaluation or the canary may have refreshed them first
        if self._of is not self.signals.current:
            self._of = self.signals.current
            self._samples = self._of.to_samples() + self._slo_samples()
        return list(self._samples)

    def _slo_samples(self) -> list[Sample]:
        window = self.config.signal_window
        observed = slo_observations(self.signals.state, self.signals.names, self.config, window, time.time())
        out = []
        for objective in SLO_OBJECTIVES:
            target = getattr(self.config, "slo_" + objective)
            if target:
                out.append(m.SLO_TARGET.sample(target, objective=objective))
            if objective in observed:
                out.append(m.SLO_OBSERVED.sample(observed[objective].value, objective=objective))
                out.append(m.SLO_OBSERVATIONS.sample(observed[objective].count, objective=objective))
        return out


class RenderLoop:
    """Once per collection cycle after collectors brought data (`mark_dirty`): runs `after`
    (the cycle's findings evaluation), then renders, while a scraper is around, at the
    collectors' pace (slower while the pod is quiet)."""

    def __init__(
        self,
        exporter: PrometheusExporter,
        config: Config,
        run: RunState,
        after: Callable[[], None],
        quiet_factor: Callable[[], int] = lambda: 1,
    ) -> None:
        self.exporter = exporter
        self.quiet_factor = quiet_factor
        self.config = config
        self.run = run
        self.after = after
        self.dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def mark_dirty(self, _collector: str = "") -> None:
        self.dirty.set()

    def every(self) -> float:
        """One render per collection cycle: collectors finishing at different moments of a
        cycle are rendered together, not one render each."""
        fastest = min(self.config.process_interval, self.config.dynamo_interval)
        if self.run.draining:
            fastest = min(fastest, self.config.drain_interval)
        return max(RENDER_DEBOUNCE, fastest)

    def spacing(self) -> float:
        """The least time between renders: none normally; while the pod is quiet, the quiet
        pace (half an interval short of it, so a jittered cycle does not skip two)."""
        factor = self.quiet_factor()
        return 0.0 if factor <= 1 else self.every() * (factor - 0.5)

    async def _loop(self) -> None:
        last = 0.0
        rendered_at = -math.inf
        while True:
            await self.dirty.wait()
            # Wait out the rest of the cycle since the last one (at least the debounce).
            delay = max(RENDER_DEBOUNCE, last + self.every() - time.monotonic())
            await asyncio.sleep(delay)
            self.dirty.clear()
            last = time.monotonic()
            # The cycle's findings evaluation first: it sets the pace (quiet or not) that
            # the render follows, and computes the signals the render then reuses.
            self.after()
            if not self.exporter.scraped_within(last) or last - rendered_at < self.spacing():
                # Nobody to render for (the next scrape renders what it asks for), or a quiet
                # pod, whose exposition follows its collectors' quiet pace.
                self.exporter.renders_skipped += 1
                self.exporter.account_passthrough()
                continue
            rendered_at = last
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

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="renderer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
