"""Every rule, one by one, against a recorded state that should fire it, and a healthy state
that must not fire anything. A test fails if a rule in the catalogue has no case here."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from agent.canary import CanaryResult, ModelState
from agent.config import load_config
from agent.diagnose.context import Context
from agent.diagnose.engine import RULES, diagnose, evaluate
from agent.drain import DrainSummary
from agent.samples import CollectResult, Event, sample
from agent.signals import DynamoNames, compute
from agent.state import State
from collectors.dynamo_logs import ErrorRing

NOW = time.time()
P = "dynamo_sidecar_"


def healthy_endpoints() -> dict[str, Any]:
    return {
        "frontend": {
            "kind": "frontend",
            "url": "http://127.0.0.1:8000",
            "instances": [{"instance_id": 1}],
            "endpoints": ["dyn://dynamo.backend.generate"],
            "models": ["tiny"],
            "probes": {
                "health": {"outcome": "ok", "status": "healthy", "status_code": 200, "since": NOW - 600},
                "live": {"outcome": "ok", "status": "live", "status_code": 200, "since": NOW - 600},
            },
        },
        "worker": {
            "kind": "worker",
            "url": "http://127.0.0.1:9090",
            "endpoints": {"generate": "ready"},
            "probes": {
                "health": {"outcome": "ok", "status": "ready", "status_code": 200, "since": NOW - 600},
                "live": {"outcome": "ok", "status": "ready", "status_code": 200, "since": NOW - 600},
            },
        },
    }


class Recorded:
    """Builds a state the way collectors would have filled it."""

    def __init__(self) -> None:
        self.state = State(history_window=900, min_interval=5)
        self.state.started = NOW - 3600
        self.health = healthy_endpoints()
        self.config = load_config(environ={}, overrides={"startup_grace": "0", "listen_port": "0"})

    def put(self, collector: str, result: CollectResult, at: float = NOW) -> None:
        self.state.update(collector, result, now=at)

    def series(
        self, collector: str, make: Callable[[int], list[Any]], steps: int = 60, interval: float = 5.0
    ) -> None:
        for step in range(steps):
            self.put(collector, CollectResult(samples=make(step)), at=NOW - (steps - 1 - step) * interval)

    def context(self) -> Context:
        if "dynamo_health" not in self.state.latest:
            self.put("dynamo_health", CollectResult(facts={"endpoints": self.health}))
        names = DynamoNames()
        return Context(
            self.state,
            self.config,
            compute(self.state, names, self.config.signal_window, NOW),
            now=NOW,
            names=names,
        )


def probe(view: dict[str, Any], **changes: Any) -> None:
    view["probes"]["health"].update(changes)


def failing_model() -> Any:
    state = ModelState()
    for _ in range(3):
        state.observe(
            CanaryResult(
                "tiny",
                "timeout",
                "canary-1",
                "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                3.0,
                error="no answer",
            ),
            3,
        )
    return SimpleNamespace(models={"tiny": state})


def queue_growth(r: Recorded, gpu_utilization: float) -> None:
    r.series("dynamo_metrics", lambda i: [sample("dynamo_frontend_queued_requests", i, model="tiny")])
    r.put("gpu", CollectResult(facts={"gpus": {"0": {"uuid": "GPU-0", "utilization": gpu_utilization}}}))


def latency(r: Recorded) -> None:
    def buckets(i: int) -> list[Any]:
        slow = max(0, i - 120) * 10  # the last 10 minutes' observations land in the slow bucket
        fast = min(i, 120) * 10
        return [
            sample("dynamo_frontend_time_to_first_token_seconds_bucket", fast, le="0.05", model="tiny"),
            sample("dynamo_frontend_time_to_first_token_seconds_bucket", fast + slow, le="1", model="tiny"),
            sample(
                "dynamo_frontend_time_to_first_token_seconds_bucket", fast + slow, le="+Inf", model="tiny"
            ),
        ]

    r.series("dynamo_metrics", buckets, steps=180)


CASES: dict[str, Callable[[Recorded], Any]] = {
    "endpoint_refused": lambda r: probe(r.health["frontend"], outcome="refused", status_code=0),
    "endpoint_timeout": lambda r: probe(r.health["worker"], outcome="timeout", status_code=0),
    "endpoint_bad_response": lambda r: probe(
        r.health["frontend"], outcome="malformed", error="body is not JSON"
    ),
    "frontend_no_instances": lambda r: r.health["frontend"].update(instances=[]),
    "frontend_stale_instances": lambda r: r.health["frontend"].update(models=[]),
    "worker_registration_lost": lambda r: _log_error(
        r, "FileStore::keep_alive failed opening owned file /kv/abc"
    ),
    "worker_notready_endpoints_ready": lambda r: probe(
        r.health["worker"], outcome="unhealthy", status="notready", status_code=503
    ),
    "dynamo_not_ready": lambda r: (
        probe(r.health["worker"], outcome="unhealthy", status="notready", status_code=503),
        r.health["worker"].update(endpoints={"generate": "notready"}),
    ),
    "dynamo_draining": lambda r: probe(
        r.health["frontend"], outcome="unhealthy", status="not_ready", status_code=503
    ),
    "metrics_scrape_failing": lambda r: r.put(
        "dynamo_metrics",
        CollectResult(facts={"endpoints": {"frontend": {"up": False, "reason": "malformed", "url": "x"}}}),
    ),
    "worker_restarted": lambda r: r.state.add_event(
        Event("worker_restart", "worker", "worker restarted: uptime went from 50.0s to 1.0s", NOW - 30)
    ),
    "health_flapping": lambda r: [
        r.state.add_event(Event("health_transition", "worker/health", f"flip {i}", NOW - 20 * i))
        for i in range(4)
    ],
    "no_dynamo_process": lambda r: r.put("process", CollectResult(facts={"processes": []})),
    "canary_failing": lambda r: r.state.extra.update(canary=failing_model()),
    "drain_deadline_with_work": lambda r: r.state.extra.update(
        drain=DrainSummary(
            "sigterm",
            NOW - 60,
            NOW - 5,
            reason="deadline",
            ended_at=NOW - 5,
            inflight_at_start=8,
            inflight_at_end=3,
        )
    ),
    "collector_failing": lambda r: _collector_failing(r),
    "otlp_export_failing": lambda r: r.state.extra.update(
        otlp=SimpleNamespace(
            enabled=True,
            status=lambda: {
                "endpoint": "http://collector:4318",
                "protocol": "http/protobuf",
                "failures": 4,
                "dropped": {"queue_full": 0, "export_failed": 40},
                "last_error": "connection refused",
                "last_success": 0,
            },
        )
    ),
    "series_dropped": lambda r: r.state.dropped.update({"dynamo_frontend_requests_total": 12}),
    "dependency_unreachable": lambda r: r.put(
        "tcp",
        CollectResult(
            facts={
                "probes": {"etcd:2379": {"role": "etcd", "outcome": "refused", "error": "connection refused"}}
            }
        ),
    ),
    "dependency_slow": lambda r: r.put(
        "tcp",
        CollectResult(
            facts={
                "probes": {
                    "nats:4222": {
                        "role": "nats",
                        "outcome": "ok",
                        "connect_seconds": 0.25,
                        "dns_seconds": 0.01,
                    }
                }
            }
        ),
    ),
    "port_not_listening": lambda r: r.put(
        "tcp", CollectResult(facts={"listening": {"9090": False}, "service_ports": {"9090": "worker_system"}})
    ),
    "tcp_retransmits_high": lambda r: r.series(
        "tcp",
        lambda i: [
            sample(P + "tcp_kernel_total", i * 10000, counter="OutSegs"),
            sample(P + "tcp_kernel_total", i * 500, counter="RetransSegs"),
        ],
    ),
    "close_wait_leak": lambda r: r.put("tcp", CollectResult(facts={"close_wait": {"nats": 75}})),
    "cpu_throttled": lambda r: r.series(
        "cgroup",
        lambda i: [
            sample(P + "cgroup_cpu_periods_total", i * 50),
            sample(P + "cgroup_cpu_throttled_periods_total", i * 25),
        ],
    ),
    "cpu_saturated": lambda r: (
        r.series(
            "process",
            lambda i: [
                sample(
                    P + "process_cpu_seconds_total",
                    i * 5 * 1.95,
                    pid="7",
                    process="dynamo.frontend",
                    mode="user",
                ),
                sample(P + "cgroup_cpu_limit_cores", 2),
            ],
        ),
        r.state.latest["process"].facts.update(processes=[{"pid": 7, "process": "dynamo.frontend"}]),
    ),
    "memory_near_limit": lambda r: r.put(
        "cgroup",
        CollectResult(
            samples=[
                sample(P + "cgroup_memory_usage_bytes", 95e8),
                sample(P + "cgroup_memory_limit_bytes", 100e8),
            ]
        ),
    ),
    "oom_killed": lambda r: r.series(
        "cgroup", lambda i: [sample(P + "cgroup_memory_events_total", 0 if i < 50 else 1, event="oom_kill")]
    ),
    "memory_pressure": lambda r: r.put(
        "cgroup",
        CollectResult(
            samples=[
                sample(
                    P + "pressure_stall_ratio",
                    0.3,
                    scope="cgroup",
                    resource="memory",
                    kind="some",
                    window="60s",
                )
            ]
        ),
    ),
    "fd_exhaustion": lambda r: r.put(
        "process",
        CollectResult(
            facts={"processes": [{"pid": 7, "process": "dynamo.frontend", "open_fds": 1000, "max_fds": 1024}]}
        ),
    ),
    "gpu_xid": lambda r: r.state.add_event(
        Event(
            "gpu_xid",
            "gpu3",
            "XID 79 on GPU 3: fallen off the bus",
            NOW - 10,
            {"gpu": 3, "uuid": "GPU-3", "xid": 79, "class": "bus"},
        )
    ),
    "gpu_lost": lambda r: r.put("gpu", CollectResult(facts={"gpus": {"1": {"uuid": "GPU-1", "lost": True}}})),
    "gpu_ecc_errors": lambda r: r.put(
        "gpu", CollectResult(facts={"gpus": {"0": {"uuid": "GPU-0", "ecc_uncorrected_volatile": 2}}})
    ),
    "gpu_throttling": lambda r: r.put(
        "gpu",
        CollectResult(
            facts={
                "gpus": {
                    "0": {"uuid": "GPU-0", "clock_event_reasons": ["hw_thermal_slowdown"], "temperature": 91}
                }
            }
        ),
    ),
    "gpu_memory_near_full": lambda r: r.put(
        "gpu",
        CollectResult(facts={"gpus": {"0": {"uuid": "GPU-0", "memory_used": 79e9, "memory_total": 80e9}}}),
    ),
    "queue_growing_gpu_idle": lambda r: queue_growth(r, 0.1),
    "queue_growing_saturated": lambda r: queue_growth(r, 0.97),
    "latency_regression": latency,
    "rejections_rising": lambda r: r.series(
        "dynamo_metrics",
        lambda i: [
            sample(
                "dynamo_rejection_request_total",
                i * 3,
                dynamo_component="backend",
                dynamo_endpoint="generate",
                dynamo_namespace="dynamo",
                worker_id="1",
            )
        ],
    ),
    "migrations_rising": lambda r: r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_model_migration_total", i, model="tiny", migration_type="new_request")
        ],
    ),
}


def _log_error(r: Recorded, message: str) -> None:
    errors = ErrorRing()
    for _ in range(5):
        errors.add({"level": "ERROR", "target": "dynamo_runtime::storage", "message": message}, NOW - 5)
    r.put("dynamo_logs", CollectResult(facts={"errors": errors}))


def _collector_failing(r: Recorded) -> None:
    status = r.state.register_collector("gpu", 5, 4)
    status.last_success, status.consecutive_failures, status.last_error = (
        False,
        3,
        "TimeoutError: did not finish within 4s",
    )
    status.first_failure_time = NOW - 15


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == {rule.id for rule in RULES}


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_on_its_recorded_state(rule_id: str) -> None:
    recorded = Recorded()
    CASES[rule_id](recorded)
    findings, errors = evaluate(recorded.context())
    assert errors == []
    fired = [f for f in findings if f.rule == rule_id]
    assert fired, f"{rule_id} did not fire; got {[f.id for f in findings]}"
    finding = fired[0]
    assert finding.evidence and finding.actions and finding.summary and "{" not in finding.summary


def test_healthy_state_fires_nothing() -> None:
    recorded = Recorded()
    recorded.series(
        "dynamo_metrics",
        lambda i: [sample("dynamo_frontend_requests_total", i * 10, model="tiny", status="success")],
    )
    recorded.put(
        "process",
        CollectResult(
            facts={"processes": [{"pid": 7, "process": "dynamo.frontend", "open_fds": 50, "max_fds": 1024}]}
        ),
    )
    recorded.put(
        "tcp",
        CollectResult(
            facts={
                "listening": {"8000": True},
                "probes": {"etcd:2379": {"role": "etcd", "outcome": "ok", "connect_seconds": 0.001}},
                "close_wait": {},
            }
        ),
    )
    recorded.put(
        "gpu",
        CollectResult(
            facts={
                "gpus": {
                    "0": {
                        "uuid": "GPU-0",
                        "utilization": 0.6,
                        "memory_used": 1e9,
                        "memory_total": 8e10,
                        "clock_event_reasons": ["gpu_idle"],
                    }
                }
            }
        ),
    )
    report = diagnose(recorded.context())
    assert report["findings"] == [] and report["status"] == "ok"


def test_a_broken_rule_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.diagnose import engine
    from agent.diagnose.model import Rule

    broken = Rule("broken", "sidecar", "warning", "x", ("y",), lambda ctx: 1 / 0)
    monkeypatch.setattr(engine, "RULES", (*engine.RULES, broken))
    report = diagnose(Recorded().context())
    assert report["rule_errors"] and report["rule_errors"][0]["rule"] == "broken"
