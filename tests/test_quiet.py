"""The cost of watching a quiet pod (issue 28): collectors slow while the pod is quiet and come
back at once on the first sign of anything; the exposition is rendered ahead only for a
scraper, and the first scrape after a pause gets the state as it is."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from typing import Any

import aiohttp

from agent.core.samples import CollectResult, sample
from agent.core.state import State
from agent.dynamo_sim.server import DynamoSim
from agent.runtime.scheduler import Scheduler
from agent.runtime.sidecar import Sidecar
from collectors.base import Collector
from tests.helpers import Starts, base_url, get_json, post_completion, wait_for


class Counting(Collector):
    def __init__(self, name: str, slows: bool, interval: float) -> None:
        super().__init__(interval=interval, timeout=1)
        self.name = name
        self.slows_when_quiet = slows
        self.runs = 0

    async def collect(self) -> CollectResult:
        self.runs += 1
        return CollectResult(samples=[sample("dynamo_sidecar_processes_matched", self.runs)])


async def test_quiet_slows_only_the_collectors_that_may_and_waking_is_immediate() -> None:
    probe = Counting("probe", slows=False, interval=0.1)
    reader = Counting("reader", slows=True, interval=0.1)
    scheduler = Scheduler([probe, reader], State(), jitter=0)
    scheduler.start()
    try:
        await wait_for(lambda: reader.runs >= 2, what="both running")
        scheduler.set_quiet(20)  # reader: every 2 s
        assert scheduler.slowed() == ["reader"]
        # The reader's current 0.1 s sleep ends and it runs once more; then it sleeps 2 s.
        probe_mark = probe.runs
        await wait_for(lambda: probe.runs >= probe_mark + 2, what="two probe runs")
        reader_before, probe_before = reader.runs, probe.runs
        await wait_for(lambda: probe.runs >= probe_before + 6, what="six probe runs")
        # Six of the probe's 0.1 s intervals fit well inside one of the reader's 2 s ones.
        assert reader.runs - reader_before <= 1
        scheduler.set_quiet(1)
        assert scheduler.slowed() == []
        woke_from = reader.runs
        # Woken now, not at the end of its 2 s sleep.
        await wait_for(lambda: reader.runs > woke_from, timeout=1.0, what="reader woken")
    finally:
        await scheduler.stop()


async def test_a_quiet_pods_slowed_collectors_run_on_one_beat_one_after_the_other() -> None:
    """Independent jittered timers would spread the slowed collectors' runs over every cycle
    (and each cycle is judged); on the quiet beat they run together, a few tens of ms apart,
    the slower ones on every other beat."""
    from agent.runtime.scheduler import BEAT_STAGGER

    first, second = Starts("first", True, 0.5), Starts("second", True, 0.5)
    slower, probe = Starts("slower", True, 1.0), Starts("probe", False, 0.5)
    scheduler = Scheduler([first, second, slower, probe], State(), jitter=0.1)
    scheduler.start()
    try:
        await wait_for(lambda: len(slower.starts) >= 1, what="first runs")
        scheduler.set_quiet(2)  # beat: 2 x 0.5 s
        quiet_from = time.monotonic()
        await wait_for(lambda: len(slower.starts) >= 5, timeout=15, what="the slower one's beats")
    finally:
        await scheduler.stop()
    settled = [t for t in first.starts if t > quiet_from + 2.5]
    assert len(settled) >= 4
    for start in settled:
        # On each beat: the second one BEAT_STAGGER after the first ...
        assert any(0.5 * BEAT_STAGGER < t - start < 3 * BEAT_STAGGER for t in second.starts), (
            start,
            second.starts,
        )
    # ... and the slower one (twice the interval) on every other beat, two staggers after it.
    on_beat = [
        start
        for start in settled
        if any(1.5 * BEAT_STAGGER < t - start < 4 * BEAT_STAGGER for t in slower.starts)
    ]
    assert len(settled) // 2 <= len(on_beat) <= (len(settled) + 1) // 2, (settled, slower.starts)
    beats = [b - a for a, b in itertools.pairwise(settled)]
    assert all(0.9 < gap < 1.1 for gap in beats), beats
    # The collector that does not slow kept its own pace (0.5 s, jittered).
    probe_gaps = [b - a for a, b in itertools.pairwise(probe.starts) if a > quiet_from]
    assert max(probe_gaps) < 0.7, probe_gaps


async def _status(http: aiohttp.ClientSession, sidecar: Sidecar) -> dict[str, Any]:
    status = await get_json(http, base_url(sidecar) + "/status")
    quiet: dict[str, Any] = status["quiet"]
    return quiet


async def test_a_quiet_pod_slows_and_traffic_or_a_fault_ends_it_at_once(
    sim: DynamoSim, make_sidecar, http: aiohttp.ClientSession
) -> None:
    sidecar: Sidecar = await make_sidecar(sim, quiet_after="1", quiet_slowdown="5", canary_enabled="false")
    await wait_for(lambda: sidecar.quiet.quiet, timeout=20, what="quiet")
    quiet = await _status(http, sidecar)
    assert quiet["quiet"] is True
    assert quiet["factor"] == 5
    assert set(quiet["slowed"]) == {"process", "cgroup", "dynamo_metrics", "gpu"}
    async with http.get(base_url(sidecar) + "/metrics") as response:
        text = await response.text()
    assert re.search(r"^dynamo_sidecar_quiet 1\.0$", text, re.M)

    # Traffic: a request in flight (slow tokens) is seen at the next metrics scrape.
    sim.faults.token_delay = 0.2
    request = asyncio.create_task(post_completion(http, sim.url("frontend"), max_tokens=40))
    await wait_for(lambda: not sidecar.quiet.quiet, timeout=20, what="quiet ended by traffic")
    assert sidecar.quiet.why_not == "traffic"
    assert sidecar.scheduler.quiet_factor == 1
    await request
    sim.faults.token_delay = 0.002

    # Quiet again, then a hung worker: health keeps its pace, so it ends quiet within cycles.
    await wait_for(lambda: sidecar.quiet.quiet, timeout=30, what="quiet again")
    sim.faults.worker_hang = True
    started = time.monotonic()
    await wait_for(lambda: not sidecar.quiet.quiet, timeout=10, what="quiet ended by the fault")
    assert "worker" in sidecar.quiet.why_not, sidecar.quiet.why_not
    assert sidecar.scheduler.quiet_factor == 1
    # The slowed collectors were woken when quiet ended, not left to finish a 1 s sleep.
    metrics_runs = sum(sidecar.state.collectors["process"].runs.values())
    await wait_for(
        lambda: sum(sidecar.state.collectors["process"].runs.values()) > metrics_runs,
        timeout=5,
        what="process collector running again",
    )
    assert time.monotonic() - started < 10


async def test_a_worker_pods_traffic_ends_quiet(
    sim: DynamoSim, make_sidecar, http: aiohttp.ClientSession
) -> None:
    """A worker pod's sidecar has no frontend to count requests at: the worker's own count
    (requests from a frontend in another pod) is traffic."""
    sidecar: Sidecar = await make_sidecar(sim, frontend_url="", quiet_after="1", quiet_slowdown="5")
    await wait_for(lambda: sidecar.quiet.quiet, timeout=20, what="quiet")
    for _ in range(3):  # through the frontend this sidecar does not watch
        status, _ = await post_completion(http, sim.url("frontend"))
        assert status == 200
    await wait_for(lambda: not sidecar.quiet.quiet, timeout=20, what="quiet ended by the worker's traffic")
    assert sidecar.quiet.why_not == "traffic"


async def test_the_sidecars_own_canaries_are_not_traffic(sim: DynamoSim, make_sidecar) -> None:
    """A canary counted or in flight at a metrics scrape is the sidecar's own request: a
    quiet pod probed every 0.3 s, each canary 0.15 s in flight, stays quiet (its scrapes
    overlap the canaries often)."""
    sim.faults.ttft_extra = 0.15
    sidecar: Sidecar = await make_sidecar(
        sim, quiet_after="1", quiet_slowdown="2", canary_enabled="true", canary_wait="0.3"
    )
    await wait_for(lambda: sidecar.quiet.quiet, timeout=20, what="quiet")
    rounds = sidecar.canary.rounds
    await wait_for(lambda: sidecar.canary.rounds >= rounds + 12, timeout=30, what="twelve canary rounds")
    assert sidecar.quiet.episodes == 1, sidecar.quiet.last_ended
    assert sidecar.quiet.quiet


async def test_quiet_slowdown_1_never_slows(sim: DynamoSim, make_sidecar) -> None:
    sidecar: Sidecar = await make_sidecar(sim, quiet_after="1", quiet_slowdown="1")
    await wait_for(lambda: sidecar.quiet.why_not == "off", what="judged")
    await asyncio.sleep(0)
    assert sidecar.scheduler.quiet_factor == 1
    assert sidecar.scheduler.slowed() == []


def _health_runs(text: str) -> float:
    found = re.search(
        r'^dynamo_sidecar_collector_runs_total\{collector="dynamo_health",outcome="ok"\} (\S+)$', text, re.M
    )
    assert found, "no health run count in the exposition"
    return float(found.group(1))


async def test_renders_pause_without_a_scraper_and_the_next_scrape_is_current(
    sim: DynamoSim, make_sidecar, http: aiohttp.ClientSession
) -> None:
    sidecar: Sidecar = await make_sidecar(sim)
    exporter = sidecar.exporter
    # Nobody has scraped: cycles go by without a render, findings are still evaluated.
    await wait_for(lambda: exporter.renders_skipped >= 3, what="cycles without a render")
    assert not exporter.rendered
    assert sidecar.rule_health.duration, "the cycle's evaluation did not run"
    async with http.get(base_url(sidecar) + "/metrics") as response:
        first = _health_runs(await response.text())
    # A scraper is around now: the render loop renders ahead again.
    skipped = exporter.renders_skipped
    rendered_runs = sum(sidecar.state.collectors["dynamo_health"].runs.values())
    await wait_for(
        lambda: sum(sidecar.state.collectors["dynamo_health"].runs.values()) >= rendered_runs + 3,
        what="three more health runs",
    )
    assert exporter.renders_skipped == skipped
    # The scraper goes away (its last scrape long ago): renders pause again ...
    exporter.note_scrape(time.monotonic() - 10_000)
    exporter.scrape_gap = 0.0
    await wait_for(lambda: exporter.renders_skipped > skipped + 2, what="renders paused again")
    runs_now = sum(sidecar.state.collectors["dynamo_health"].runs.values())
    assert runs_now > first + 3
    # ... and the scrape that comes back gets what the state holds, not the paused body.
    async with http.get(base_url(sidecar) + "/metrics") as response:
        served = _health_runs(await response.text())
    assert served >= runs_now


async def test_a_quiet_pod_is_rendered_at_the_quiet_pace_and_at_once_after(
    sim: DynamoSim, make_sidecar, http: aiohttp.ClientSession
) -> None:
    sidecar: Sidecar = await make_sidecar(sim, quiet_after="1", quiet_slowdown="4", canary_enabled="false")
    await wait_for(lambda: sidecar.quiet.quiet, timeout=20, what="quiet")
    exporter = sidecar.exporter

    async def scrape_for(seconds: float) -> None:
        """A scraper asking every 0.1 s: the render loop renders for it at the pod's pace."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            async with http.get(base_url(sidecar) + "/metrics") as response:
                assert response.status == 200
            await asyncio.sleep(0.1)

    await scrape_for(0.5)
    skipped, renders, began = exporter.renders_skipped, exporter._render_started, time.monotonic()
    await scrape_for(2.0)
    took = time.monotonic() - began
    # Quiet at 4x: renders at least 0.7 s apart (3.5 cycles of 0.2 s), though a scraper asks
    # all along and a cycle ends every 0.2 s or so; the cycles between are skipped.
    spacing = sidecar.renderer.spacing()
    assert spacing == 0.2 * 3.5
    assert exporter._render_started - renders <= took / spacing + 1
    assert exporter.renders_skipped - skipped >= 2
    sim.faults.worker_hang = True
    await wait_for(lambda: not sidecar.quiet.quiet, timeout=10, what="quiet ended")
    await scrape_for(0.5)
    skipped = exporter.renders_skipped
    await scrape_for(1.5)
    assert exporter.renders_skipped == skipped  # every cycle rendered again


async def test_a_quiet_pods_evaluation_skips_cycles_that_brought_nothing_new_but_not_a_change(
    sim: DynamoSim, make_sidecar
) -> None:
    sidecar: Sidecar = await make_sidecar(sim, quiet_after="1", quiet_slowdown="4", canary_enabled="false")
    await wait_for(lambda: sidecar.quiet.quiet, timeout=20, what="quiet")
    skipped = sidecar.quiet.evaluations_skipped
    await wait_for(lambda: sidecar.quiet.evaluations_skipped >= skipped + 3, what="cycles not evaluated")
    # The cycles from here are driven by hand, at chosen moments: the sidecar's own stop.
    await sidecar.renderer.stop()
    await sidecar.scheduler.stop()
    quiet = sidecar.quiet
    by_name = {c.name: c for c in sidecar.collectors}
    t = time.monotonic() + 100.0
    assert quiet.should_evaluate(t)  # longer than the quiet pace since the last: evaluated
    assert not quiet.should_evaluate(t + 0.01)  # nothing ran since
    await sidecar.scheduler.run_once(by_name["dynamo_health"])  # probes answering as before
    assert not quiet.should_evaluate(t + 0.02)
    # The quiet pace is the longest gap. A millisecond either side of it: t + pace - t is not
    # pace in floating point (t is ~10^4 s of monotonic clock), and the bound is not the test.
    assert not quiet.should_evaluate(t + quiet.pace() - 0.001)
    assert quiet.should_evaluate(t + quiet.pace() + 0.001)
    await sidecar.scheduler.run_once(by_name["process"])  # a collector that vouches for nothing
    assert quiet.should_evaluate(t + quiet.pace() + 0.01)
    await sidecar.scheduler.run_once(by_name["dynamo_health"])
    sidecar.evaluate_findings()  # now, well inside the pace of the last (t is 100 s ahead)
    skipped = quiet.evaluations_skipped
    assert skipped >= 1 and quiet.quiet
    sim.faults.frontend_5xx = True
    await sidecar.scheduler.run_once(by_name["dynamo_health"])  # a probe answering otherwise
    sidecar.evaluate_findings()  # judged at once, not at the quiet pace: quiet ends
    assert quiet.evaluations_skipped == skipped
    assert not quiet.quiet and quiet.why_not == "finding endpoint_bad_response:frontend", quiet.why_not
    # A pod that is not quiet is evaluated every cycle, changed or not.
    assert quiet.should_evaluate() and quiet.should_evaluate()
