"""How long does /diagnose take with a full 15-minute history?

Fills the state the way 15 minutes of collection would (every collector at a 5 s interval:
the frontend and worker /metrics recorded from a real Dynamo with moving counters, health
bodies, processes, cgroup, TCP and 8 GPUs), with events, then times the whole report
(signals, every rule, rendering to JSON) many times and prints p50/p99, and the evaluation
the sidecar makes once per collection cycle for the findings' lifecycle (p50).

    python bench/diagnose.py            # 500 evaluations
    python bench/diagnose.py --smoke    # 50
Target: p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import load_config
from agent.core import metrics as m
from agent.core.exposition import parse_exposition
from agent.core.facts import (
    DependencyProbe,
    EndpointFacts,
    GpuFact,
    GpuFacts,
    HealthFacts,
    MetricsFacts,
    ProbeFact,
    ProcessFact,
    ProcessFacts,
    ScrapeFact,
    TcpFacts,
)
from agent.core.samples import CollectResult, Event
from agent.dynamo_sim.promtext import PromTemplate
from agent.dynamo_sim.server import recorded
from agent.runtime.sidecar import Sidecar

INTERVAL = 5.0
WINDOW = 900.0


def fill(sidecar: Sidecar, now: float) -> int:
    frontend = PromTemplate(recorded("frontend_metrics_after_traffic.prom"))
    worker = PromTemplate(recorded("worker_system_metrics_after_traffic.prom"))
    steps = int(WINDOW / INTERVAL)
    state = sidecar.state
    for step in range(steps):
        t = now - WINDOW + step * INTERVAL
        for _ in range(10):  # ten requests per interval, TTFT drifting up
            frontend.inc(
                "dynamo_frontend_requests_total",
                endpoint="completions",
                error_type="",
                model="tiny",
                request_type="unary",
                status="success",
            )
            frontend.observe(
                "dynamo_frontend_time_to_first_token_seconds", 0.01 + step * 0.0002, model="tiny"
            )
            frontend.observe("dynamo_frontend_inter_token_latency_seconds", 0.002, model="tiny")
            frontend.observe("dynamo_frontend_request_duration_seconds", 0.2, model="tiny")
            worker.inc("dynamo_component_requests_total", dynamo_endpoint="generate")
        frontend.set("dynamo_frontend_queued_requests", step % 7, model="tiny")
        families = parse_exposition(frontend.render())[0] + parse_exposition(worker.render())[0]
        scrapes = {
            name: ScrapeFact(f"http://127.0.0.1/{name}", 200, up=True) for name in ("frontend", "worker")
        }
        state.update(
            "dynamo_metrics", CollectResult(families=families, facts=MetricsFacts(scrapes, t)), now=t
        )
        ok: dict[str, Any] = {"since": now - WINDOW, "status_code": 200, "outcome": "ok"}
        endpoints = {
            "frontend": EndpointFacts(
                "frontend",
                "http://127.0.0.1:8000",
                probes={"health": ProbeFact(status="healthy", **ok)},
                first_ok_at=now - WINDOW,
                instance_ids=["1"],
                models=["tiny"],
            ),
            "worker": EndpointFacts(
                "worker",
                "http://127.0.0.1:9090",
                probes={"health": ProbeFact(status="ready", **ok)},
                first_ok_at=now - WINDOW,
                endpoints={"generate": "ready"},
            ),
        }
        health = CollectResult(facts=HealthFacts(endpoints, t))
        health.add(m.ENDPOINT_UP.sample(1, endpoint="frontend", probe="health"))
        state.update("dynamo_health", health, now=t)
        system = CollectResult(
            samples=[
                m.CGROUP_CPU_PERIODS_TOTAL.sample(step * 50),
                m.CGROUP_CPU_THROTTLED_PERIODS_TOTAL.sample(step * 2),
                m.CGROUP_MEMORY_USAGE_BYTES.sample(2e9),
                m.CGROUP_MEMORY_LIMIT_BYTES.sample(8e9),
                m.PROCESS_CPU_SECONDS_TOTAL.sample(
                    step * 2.0,
                    pid="100",
                    process="dynamo.frontend",
                    mode="user",
                ),
                m.TCP_KERNEL_TOTAL.sample(step * 1000, counter="OutSegs"),
                m.TCP_KERNEL_TOTAL.sample(step * 3, counter="RetransSegs"),
            ],
            facts=ProcessFacts(
                [ProcessFact(100, "dynamo.frontend", open_fds=200, max_fds=65536, state="S")], time=t
            ),
        )
        state.update("process", system, now=t)
        gpus = {
            str(i): GpuFact(
                f"GPU-{i}",
                utilization=0.7,
                memory_used=40_000_000_000,
                memory_total=80_000_000_000,
                temperature=60,
            )
            for i in range(8)
        }
        gpu = CollectResult(
            samples=[
                m.GPU_UTILIZATION_RATIO.sample(0.7, gpu=i, uuid=f"GPU-{i}", kind="gpu") for i in range(8)
            ],
            facts=GpuFacts(True, gpus=gpus),
        )
        state.update("gpu", gpu, now=t)
        probes = {"etcd:2379": DependencyProbe("etcd", "ok", connect_seconds=0.001, dns_seconds=0.001)}
        tcp = TcpFacts(listening={"8000": True}, service_ports={"8000": "frontend"}, probes=probes)
        state.update("tcp", CollectResult(facts=tcp), now=t)
        if step % 30 == 0:
            state.add_event(
                Event("health_transition", "worker/health", "worker health: ready -> notready", t)
            )
    return sum(len(v) for v in state.history.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    runs = 50 if args.smoke else args.runs
    sidecar = Sidecar(
        load_config(
            environ={}, overrides={"listen_port": "0", "dynamo_interval": "5", "process_interval": "5"}
        ),
        collectors=[],
    )
    now = time.time()
    series = fill(sidecar, now)
    timings = []
    findings = 0
    for _ in range(runs):
        started = time.perf_counter()
        report = sidecar.diagnose_report()
        json.dumps(report, default=str)
        timings.append(time.perf_counter() - started)
        findings = len(report["findings"])
    timings.sort()
    p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
    # The evaluation the sidecar makes once per collection cycle (for the findings' lifecycle).
    cycle = []
    for _ in range(runs):
        started = time.perf_counter()
        sidecar.evaluate_findings()
        cycle.append(time.perf_counter() - started)
    result = {
        "history_series": series,
        "history_points": sum(len(r) for v in sidecar.state.history.values() for r in v.values()),
        "runs": runs,
        "p50_ms": round(statistics.median(timings) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "cycle_evaluation_p50_ms": round(statistics.median(cycle) * 1000, 2),
        "findings": findings,
    }
    print(json.dumps(result, indent=1))
    sys.exit(0 if args.smoke or p99 < 0.05 else 1)


if __name__ == "__main__":
    main()
