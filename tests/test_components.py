"""The sidecar's parts built without the Sidecar: the collector registry, the drain over a
State and a RunState, and the one definition of work in flight."""

from __future__ import annotations

import asyncio

from agent.config import load_config
from agent.core.components import RunState
from agent.core.samples import CollectResult, sample
from agent.core.signals import DynamoNames, inflight_now, work_in_flight
from agent.core.state import State
from agent.runtime.drain import NOTHING_TO_DRAIN, DrainConfig, DrainCoordinator, DrainSummary
from agent.runtime.scheduler import Scheduler
from agent.runtime.sidecar import build_collectors
from collectors.base import registered


def test_collectors_are_built_from_the_registry_in_a_stable_order() -> None:
    every = load_config(environ={}, overrides={"listen_port": "0", "log_files": "/nonexistent/dynamo.log"})
    assert [c.name for c in build_collectors(every)] == [
        "process",
        "cgroup",
        "dynamo_health",
        "dynamo_metrics",
        "gpu",
        "tcp",
        "dynamo_logs",
    ]
    assert [spec.name for spec in registered()] == [c.name for c in build_collectors(every)]
    # Each spec's switch is the config's: off, the collector is not built.
    few = load_config(
        environ={},
        overrides={
            "listen_port": "0",
            "gpu_enabled": "false",
            "tcp_enabled": "false",
            "role": "non-leader",  # no Dynamo endpoint to watch
        },
    )
    assert [c.name for c in build_collectors(few)] == ["process", "cgroup"]
    intervals = {spec.name: spec.interval(every) for spec in registered()}
    assert intervals["gpu"] == every.gpu_interval and intervals["dynamo_health"] == every.dynamo_interval


def test_work_in_flight_is_the_largest_view_not_the_sum() -> None:
    assert work_in_flight(3.0, 5.0, 7.0) == 7.0
    assert work_in_flight(4.0, None, 1.0) == 4.0
    assert work_in_flight(None, None, None) is None
    names = DynamoNames()
    state = State()
    state.update(
        "dynamo_metrics",
        CollectResult(
            samples=[
                sample(names.inflight, 2, model="a"),
                sample(names.inflight, 3, model="b"),  # 5 at the frontend
                sample(names.worker_inflight, 4),
                sample(names.queued, 1),
            ]
        ),
    )
    assert inflight_now(state, names) == 5.0


async def test_a_drain_runs_over_a_state_and_a_run_state_alone() -> None:
    """Nothing to drain (no Dynamo process, no in-flight gauge): the drain ends at once, sets
    `draining` on the RunState it was given (not ready any more) and reports its summary."""
    state = State()
    scheduler = Scheduler([], state)
    scheduler.first_cycle_done.set()
    run = RunState(scheduler.first_cycle_done)
    finished: list[DrainSummary] = []
    drain = DrainCoordinator(
        DrainConfig(timeout=30.0, interval=0.1, settle=0.0),
        state,
        DynamoNames(),
        run,
        scheduler,
        on_finished=finished.append,
    )
    assert run.ready and not run.draining
    summary = drain.trigger("sigterm")
    assert run.draining and not run.ready
    assert await asyncio.wait_for(drain.wait(10.0), 15.0) is summary
    assert summary.reason == NOTHING_TO_DRAIN
    assert finished == [summary]
    assert [e.kind for e in state.events] == ["drain_started", "drain_finished"]
