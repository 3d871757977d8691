"""Every rule, one by one, against a recorded state that should fire it, and a healthy state
that must not fire anything. A test fails if a rule in the catalogue has no case here."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import load_config
from agent.core.components import Components
from agent.core.facts import (
    DependencyProbe,
    EndpointFacts,
    GpuFact,
    GpuFacts,
    HealthFacts,
    LogFacts,
    MetricsFacts,
    PortAnswer,
    ProbeFact,
    ProcessFact,
    ProcessFacts,
    ScrapeFact,
    TcpFacts,
)
from agent.core.samples import CollectResult, Event, sample
from agent.core.signals import DynamoNames, compute
from agent.core.state import State
from agent.diagnose.context import Context
from agent.diagnose.engine import RULES, diagnose, evaluate
from agent.runtime.canary import CanaryResult, ModelState
from agent.runtime.drain import DrainSummary
from collectors.dynamo_logs import ErrorRing

NOW = time.time()
P = "dynamo_sidecar_"


def healthy_endpoints() -> dict[str, EndpointFacts]:
    def ok(status: str) -> ProbeFact:
        return ProbeFact(outcome="ok", status=status, status_code=200, since=NOW - 600)

    return {
        "frontend": EndpointFacts(
            "frontend",
            "http://127.0.0.1:8000",
            probes={"health": ok("healthy"), "live": ok("live")},
            first_ok_at=NOW - 3000,
            instance_ids=["1"],
            instances_since=NOW - 600,
            registered=["dyn://dynamo.backend.generate"],
            models=["tiny"],
        ),
        "worker": EndpointFacts(
            "worker",
            "http://127.0.0.1:9090",
            probes={"health": ok("ready"), "live": ok("ready")},
            first_ok_at=NOW - 3000,
            endpoints={"generate": "ready"},
        ),
    }


def edit(obj: Any, **changes: Any) -> None:
    for key, value in changes.items():
        assert hasattr(obj, key), key
        setattr(obj, key, value)


def processes(*items: dict[str, Any]) -> CollectResult:
    return CollectResult(facts=ProcessFacts([ProcessFact(**item) for item in items], time=NOW))


def gpus(**items: dict[str, Any]) -> CollectResult:
    return CollectResult(facts=GpuFacts(True, gpus={k: GpuFact(**v) for k, v in items.items()}))


def tcp(probes: dict[str, dict[str, Any]] | None = None, **facts: Any) -> CollectResult:
    typed = {k: DependencyProbe(**v) for k, v in (probes or {}).items()}
    return CollectResult(facts=TcpFacts(probes=typed, **facts))


class Recorded:
    """Builds a state the way collectors would have filled it."""

    def __init__(self) -> None:
        self.state = State(history_window=900, min_interval=5)
        self.state.started = NOW - 3600
        self.health = healthy_endpoints()
        self.config = load_config(environ={}, overrides={"startup_grace": "0", "listen_port": "0"})
        self.components = Components()  # the canary, drain and OTLP status the rules read

    def put(self, collector: str, result: CollectResult, at: float = NOW) -> None:
        self.state.update(collector, result, now=at)

    def series(
        self, collector: str, make: Callable[[int], list[Any]], steps: int = 60, interval: float = 5.0
    ) -> None:
        for step in range(steps):
            self.put(collector, CollectResult(samples=make(step)), at=NOW - (steps - 1 - step) * interval)

    def context(self) -> Context:
        if "dynamo_health" not in self.state.latest:
            self.put("dynamo_health", CollectResult(facts=HealthFacts(self.health, NOW)))
        names = DynamoNames()
        return Context(
            self.state,
            self.config,
            compute(self.state, names, self.config.signal_window, NOW),
            now=NOW,
            names=names,
            components=self.components,
        )


def probe(view: EndpointFacts, **changes: Any) -> None:
    edit(view.probes["health"], **changes)


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
    r.put("gpu", gpus(**{"0": {"uuid": "GPU-0", "utilization": gpu_utilization}}))


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


def _over_budget(r: Recorded) -> None:
    """A 20 KB budget and 40 series: 2 kept with history (3.8 KB reserved each), 13 kept
    without, 25 dropped."""
    r.state.memory_budget = 20_000
    r.put(
        "process",
        CollectResult(
            samples=[sample("dynamo_sidecar_process_cpu_seconds_total", 1, pid=i) for i in range(40)]
        ),
    )


CASES: dict[str, Callable[[Recorded], Any]] = {
    "endpoint_refused": lambda r: probe(r.health["frontend"], outcome="refused", status_code=0),
    "endpoint_timeout": lambda r: probe(r.health["worker"], outcome="timeout", status_code=0),
    "endpoint_bad_response": lambda r: probe(
        r.health["frontend"], outcome="malformed", error="body is not JSON"
    ),
    "frontend_no_instances": lambda r: edit(r.health["frontend"], instance_ids=[], instances_since=NOW - 20),
    "frontend_stale_instances": lambda r: edit(r.health["frontend"], models=[]),
    "dynamo_starting": lambda r: _starting(r),
    "dynamo_stopped_after_drain": lambda r: _stopped_after_drain(r),
    "endpoint_wrong_port": lambda r: _wrong_port(r),
    "process_stalled": lambda r: r.put(
        "process",
        processes(
            {
                "pid": 9,
                "process": "dynamo.mocker",
                "state": "T",
                "state_since": NOW - 30,
                "cmdline": "x",
            }
        ),
    ),
    "request_failures": lambda r: r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_requests_total", i * 10, model="tiny", status="success", error_type=""),
            sample(
                "dynamo_frontend_requests_total",
                0 if i < 55 else 2,
                model="tiny",
                status="error",
                error_type="unavailable",
            ),
        ],
    ),
    "engine_hung": lambda r: r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_inflight_requests", 0 if i < 50 else 3, model="tiny"),
            sample("dynamo_frontend_time_to_first_token_seconds_count", min(i, 50) * 2, model="tiny"),
        ],
    ),
    "slo_breach": lambda r: _slo_breach(r),
    "queue_growing": lambda r: r.series(
        "dynamo_metrics", lambda i: [sample("dynamo_frontend_queued_requests", i, model="tiny")]
    ),
    "worker_registration_lost": lambda r: _log_error(
        r, "FileStore::keep_alive failed opening owned file /kv/abc"
    ),
    "worker_notready_endpoints_ready": lambda r: probe(
        r.health["worker"], outcome="unhealthy", status="notready", status_code=503
    ),
    "dynamo_not_ready": lambda r: _not_ready(r),
    "dynamo_draining": lambda r: probe(
        r.health["frontend"], outcome="unhealthy", status="not_ready", status_code=503
    ),
    "metrics_scrape_failing": lambda r: r.put(
        "dynamo_metrics",
        CollectResult(facts=MetricsFacts({"frontend": ScrapeFact("x", up=False, reason="malformed")}, NOW)),
    ),
    "worker_restarted": lambda r: r.state.add_event(
        Event("worker_restart", "worker", "worker restarted: uptime went from 50.0s to 1.0s", NOW - 30)
    ),
    "health_flapping": lambda r: _flapping(r),
    "no_dynamo_process": lambda r: r.put("process", processes()),
    "canary_failing": lambda r: setattr(r.components, "canary", failing_model()),
    "drain_deadline_with_work": lambda r: setattr(
        r.components,
        "drain",
        DrainSummary(
            "sigterm",
            NOW - 60,
            NOW - 5,
            reason="deadline",
            ended_at=NOW - 5,
            inflight_at_start=8,
            inflight_at_end=3,
        ),
    ),
    "collector_failing": lambda r: _collector_failing(r),
    "otlp_export_failing": lambda r: setattr(
        r.components,
        "otlp",
        SimpleNamespace(
            enabled=True,
            status=lambda: {
                "endpoint": "http://collector:4318",
                "protocol": "http/protobuf",
                "failures": 4,
                "dropped": {"queue_full": 0, "export_failed": 40},
                "last_error": "connection refused",
                "last_success": 0,
                "error": "",
            },
        ),
    ),
    "series_dropped": lambda r: r.state.dropped.update({"dynamo_frontend_requests_total": 12}),
    "memory_budget": lambda r: _over_budget(r),
    "dependency_unreachable": lambda r: r.put(
        "tcp",
        tcp({"etcd:2379": {"role": "etcd", "outcome": "refused", "error": "connection refused"}}),
    ),
    "dependency_slow": lambda r: r.put(
        "tcp",
        tcp(
            {
                "nats:4222": {
                    "role": "nats",
                    "outcome": "ok",
                    "connect_seconds": 0.25,
                    "dns_seconds": 0.01,
                }
            }
        ),
    ),
    "port_not_listening": lambda r: r.put(
        "tcp", tcp(listening={"9090": False}, service_ports={"9090": "worker_system"})
    ),
    "tcp_retransmits_high": lambda r: r.series(
        "tcp",
        lambda i: [
            sample(P + "tcp_kernel_total", i * 10000, counter="OutSegs"),
            sample(P + "tcp_kernel_total", i * 500, counter="RetransSegs"),
        ],
    ),
    "close_wait_leak": lambda r: r.put("tcp", tcp(close_wait={"nats": 75})),
    "cpu_throttled": lambda r: r.series(
        "cgroup",
        lambda i: [
            sample(P + "cgroup_cpu_periods_total", i * 50),
            sample(P + "cgroup_cpu_throttled_periods_total", i * 25),
        ],
    ),
    "cpu_saturated": lambda r: _cpu_saturated(r),
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
        processes({"pid": 7, "process": "dynamo.frontend", "open_fds": 1000, "max_fds": 1024}),
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
    "gpu_lost": lambda r: r.put("gpu", gpus(**{"1": {"uuid": "GPU-1", "lost": True}})),
    "gpu_ecc_errors": lambda r: r.put(
        "gpu", gpus(**{"0": {"uuid": "GPU-0", "ecc": {"uncorrected_volatile": 2}}})
    ),
    "gpu_throttling": lambda r: r.put(
        "gpu",
        gpus(**{"0": {"uuid": "GPU-0", "clock_event_reasons": ["hw_thermal_slowdown"], "temperature": 91}}),
    ),
    "gpu_memory_near_full": lambda r: r.put(
        "gpu",
        gpus(**{"0": {"uuid": "GPU-0", "memory_used": 79e9, "memory_total": 80e9}}),
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


def _stopped_after_drain(r: Recorded) -> None:
    r.state.add_event(
        Event(
            "health_transition",
            "frontend/health",
            "frontend health: healthy -> not_ready",
            NOW - 8,
            {"endpoint": "frontend", "to_status": "not_ready"},
        )
    )
    probe(r.health["frontend"], outcome="refused", status="", status_code=0, since=NOW - 4)


def _wrong_port(r: Recorded) -> None:
    probe(r.health["worker"], outcome="refused", status="", status_code=0)
    edit(r.health["worker"], answers_on=PortAnswer(8081, "http://127.0.0.1:8081", "ready", NOW))


def _slo_breach(r: Recorded) -> None:
    r.config.slo_ttft_p99 = 0.5
    latency(r)


def _not_ready(r: Recorded) -> None:
    probe(r.health["worker"], outcome="unhealthy", status="notready", status_code=503)
    edit(r.health["worker"], endpoints={"generate": "notready"})


def _flapping(r: Recorded) -> None:
    for i in range(4):
        r.state.add_event(Event("health_transition", "worker/health", f"flip {i}", NOW - 20 * i))


def _cpu_saturated(r: Recorded) -> None:
    r.series(
        "process",
        lambda i: [
            sample(
                P + "process_cpu_seconds_total", i * 5 * 1.95, pid="7", process="dynamo.frontend", mode="user"
            ),
            sample(P + "cgroup_cpu_limit_cores", 2),
        ],
    )
    r.state.latest["process"].facts = processes({"pid": 7, "process": "dynamo.frontend"}).facts


def _starting(r: Recorded) -> None:
    r.state.started = NOW - 10
    r.config.startup_grace = 60
    for view in r.health.values():
        view.first_ok_at = 0.0
    probe(r.health["worker"], outcome="refused", status="", status_code=0, since=NOW - 10)


def _log_error(r: Recorded, message: str) -> None:
    errors = ErrorRing()
    for _ in range(5):
        errors.add({"level": "ERROR", "target": "dynamo_runtime::storage", "message": message}, NOW - 5)
    r.put("dynamo_logs", CollectResult(facts=LogFacts(errors=errors)))


def _collector_failing(r: Recorded) -> None:
    status = r.state.register_collector("gpu", 5, 4)
    status.last_success, status.consecutive_failures, status.last_error = (
        False,
        3,
        "TimeoutError: did not finish within 4s",
    )
    status.first_failure_time = NOW - 15


# What each case's finding is about and the values its evidence shows, in order, worked out from
# the recorded state above (e.g. request_failures: 2 errors of 242 requests in the 120 s window,
# 24 steps of 10 successes plus the 2; cpu_throttled: 25 of 50 periods). Floats to 4 places.
PINNED: dict[str, tuple[str, list[Any]]] = {
    "canary_failing": (
        "tiny",
        [
            3,
            "timeout",
            None,
            3.0,
            "canary-1",
            "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01",
            "",
            None,
        ],
    ),
    "close_wait_leak": ("nats", [75, None]),
    "collector_failing": ("gpu", [0, 3, "TimeoutError: did not finish within 4s", None]),
    "cpu_saturated": ("dynamo.frontend/7", [1.95, 2.0]),
    "cpu_throttled": ("cgroup", [0.5, None]),
    "dependency_slow": ("nats", [0.25, 0.01]),
    "dependency_unreachable": ("etcd", [1, "connection refused", None]),
    "drain_deadline_with_work": ("drain", [3, 55.0, 1, 0.0]),
    "dynamo_draining": ("frontend", ["unhealthy", 503]),
    "dynamo_not_ready": ("worker", ["unhealthy", 503]),
    "dynamo_starting": ("worker", ["refused", 0]),
    "dynamo_stopped_after_drain": ("frontend", ["refused", 0, "shutting down"]),
    "endpoint_bad_response": ("frontend", ["malformed", 200, "body is not JSON"]),
    "endpoint_refused": ("frontend", ["refused", 0]),
    "endpoint_timeout": ("worker", ["timeout", 0]),
    "endpoint_wrong_port": ("worker", ["refused", 0, "ready"]),
    "engine_hung": ("engine", [3.0, "unchanged"]),
    "fd_exhaustion": ("dynamo.frontend/7", [1000, 1024]),
    "frontend_no_instances": ("frontend", [0, "healthy", ""]),
    "frontend_stale_instances": ("frontend", [1, ["1"], 0]),
    "gpu_ecc_errors": ("gpu0", [2, 0, 0, "GPU-0"]),
    "gpu_lost": ("gpu1", [1, "GPU-1"]),
    "gpu_memory_near_full": ("gpu0", [79000000000.0, 80000000000.0, []]),
    "gpu_throttling": ("gpu0", [1, 91, None, None]),
    "gpu_xid": ("gpu3", [1, "XID 79 on GPU 3: fallen off the bus", "GPU-3"]),
    "health_flapping": ("worker/health", ["flip 0", "flip 1", "flip 2", "flip 3"]),
    "latency_regression": ("ttft", [0.9903, 0.0495, None, None]),
    "memory_near_limit": ("cgroup", [9500000000, 10000000000]),
    "memory_pressure": ("cgroup", [0.3, None]),
    "metrics_scrape_failing": ("frontend", [0, "malformed", "", ""]),
    "migrations_rising": ("dynamo", [{"migrated": 59.0, "failed": 0.0}, None]),
    "no_dynamo_process": (
        "process",
        [
            0,
            [
                "-m\\s+dynamo\\.(frontend|mocker|vllm|sglang|trtllm|common\\.backend)",
                "\\bdynamo[-_.](frontend|worker|run)\\b",
            ],
        ],
    ),
    "memory_budget": ("state", [19653, 20000, None, 2128, 2, 13, 25]),
    "oom_killed": ("cgroup", [1.0, None]),
    "otlp_export_failing": (
        "http://collector:4318",
        [
            4,
            {"queue_full": 0, "export_failed": 40},
            "connection refused",
            "http://collector:4318 (http/protobuf)",
        ],
    ),
    "port_not_listening": ("worker_system", [0]),
    "process_stalled": ("dynamo.mocker/9", [1, "x"]),
    "queue_growing": ("frontend", [59.0, 0.0, None, None, None]),
    "queue_growing_gpu_idle": ("frontend", [59.0, 0.0, None, 0.1, None]),
    "queue_growing_saturated": ("frontend", [59.0, 0.0, None, 0.97, None]),
    "rejections_rising": ("dynamo", [0.6, None]),
    "request_failures": ("requests", [2.0, 242.0]),
    "series_dropped": ("cardinality", [12]),
    "slo_breach": ("ttft_p99", [0.9903, 0.5, 600.0]),
    "tcp_retransmits_high": ("pod", [0.05, 590000.0, {}]),
    "worker_notready_endpoints_ready": ("worker", [1, 503, {"generate": "ready"}, ""]),
    "worker_registration_lost": (
        "discovery",
        [
            "FileStore::keep_alive failed opening owned file /kv/abc",
            "FileStore::keep_alive failed opening owned file /kv/abc",
        ],
    ),
    "worker_restarted": ("worker", ["worker restarted: uptime went from 50.0s to 1.0s"]),
}


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == {rule.id for rule in RULES} == set(PINNED)


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_on_its_recorded_state(rule_id: str) -> None:
    recorded = Recorded()
    CASES[rule_id](recorded)
    findings, errors = evaluate(recorded.context())
    assert errors == []
    fired = [f for f in findings if f.rule == rule_id]
    assert fired, f"{rule_id} did not fire; got {[f.id for f in findings]}"
    finding = fired[0]
    assert finding.actions and finding.summary and "{" not in finding.summary
    subject, values = PINNED[rule_id]
    assert (finding.subject, [_plain(e.value) for e in finding.evidence]) == (subject, values)


def test_healthy_state_fires_nothing() -> None:
    recorded = Recorded()
    recorded.series(
        "dynamo_metrics",
        lambda i: [sample("dynamo_frontend_requests_total", i * 10, model="tiny", status="success")],
    )
    recorded.put(
        "process",
        processes({"pid": 7, "process": "dynamo.frontend", "open_fds": 50, "max_fds": 1024}),
    )
    recorded.put(
        "tcp",
        tcp(
            {"etcd:2379": {"role": "etcd", "outcome": "ok", "connect_seconds": 0.001}},
            listening={"8000": True},
        ),
    )
    recorded.put(
        "gpu",
        gpus(
            **{
                "0": {
                    "uuid": "GPU-0",
                    "utilization": 0.6,
                    "memory_used": 1e9,
                    "memory_total": 8e10,
                    "clock_event_reasons": ["gpu_idle"],
                }
            }
        ),
    )
    report = diagnose(recorded.context())
    assert report["findings"] == [] and report["status"] == "ok"


def test_a_broken_rule_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.diagnose import engine
    from agent.diagnose.model import Category, Hit, Limits, Rule, Severity

    def divides_by_zero(ctx: Context, t: Limits) -> list[Hit]:
        return [Hit("x", {"ratio": 1 / len(ctx.events("no_such_event"))}, [], NOW)]

    broken = Rule(
        id="broken",
        category=Category.SIDECAR,
        severity=Severity.WARNING,
        summary="x",
        actions=("y",),
        predicate=divides_by_zero,
    )
    monkeypatch.setattr(engine, "RULES", (*engine.RULES, broken))
    health = engine.RuleHealth(engine.RULES)
    report = diagnose(Recorded().context(), health=health)
    # The rule's own fault, named, and the other rules still ran (the healthy state fires none).
    assert report["rule_errors"] == [{"rule": "broken", "error": "ZeroDivisionError: division by zero"}]
    assert report["findings"] == []
    diagnose(Recorded().context(), health=health)
    # Its health says so too, per rule, as /metrics exports it: two failed evaluations of it,
    # none of any other rule, and every rule's last evaluation timed.
    failures = {
        dict(s.labels)["rule"]: s.value
        for s in health.samples()
        if s.name == "dynamo_sidecar_rule_evaluation_failures_total"
    }
    assert failures == {rule.id: 2 if rule.id == "broken" else 0 for rule in engine.RULES}
    timed = [s for s in health.samples() if s.name == "dynamo_sidecar_rule_evaluation_duration_seconds"]
    assert sorted(dict(s.labels)["rule"] for s in timed) == sorted(rule.id for rule in engine.RULES)
    assert all(s.value > 0 for s in timed)


# --- causes before symptoms: the numbered cases of issue 12 on recorded states ----------------


def _top(recorded: Recorded) -> dict[str, Any]:
    report = diagnose(recorded.context())
    assert report["rule_errors"] == []
    return report


def test_stopped_worker_is_the_root_not_no_instances() -> None:
    r = Recorded()
    probe(r.health["worker"], outcome="timeout", status="", status_code=0, since=NOW - 20)
    edit(r.health["frontend"], instance_ids=[], instances_since=NOW - 8, models=[])
    r.health["frontend"].models_seen = {"tiny": NOW - 10}
    r.put(
        "process",
        processes({"pid": 9, "process": "dynamo.mocker", "state": "T", "state_since": NOW - 21}),
    )
    report = _top(r)
    top = report["findings"][0]
    assert top["rule"] == "process_stalled" and top["severity"] == "critical"
    assert "frontend_no_instances:frontend" in top["explains"]
    no_instances = next(f for f in report["findings"] if f["rule"] == "frontend_no_instances")
    # `since` is when the instance count dropped, not when the sidecar started.
    assert no_instances["since"] == pytest.approx(NOW - 8, abs=0.01)
    assert any("no longer listed" in e["signal"] for e in no_instances["evidence"])


def test_wrong_worker_port_is_a_warning_not_a_stale_registration() -> None:
    r = Recorded()
    probe(r.health["worker"], outcome="refused", status="", status_code=0)
    r.health["worker"].answers_on = PortAnswer(8081, "http://127.0.0.1:8081", "ready", NOW)
    r.put("process", processes({"pid": 9, "process": "dynamo.mocker", "state": "S"}))
    report = _top(r)
    rules = [f["rule"] for f in report["findings"]]
    assert rules == ["endpoint_wrong_port"], rules
    assert report["status"] == "warning"
    assert "8081" in report["findings"][0]["summary"]
    assert "worker_system_urls" in report["findings"][0]["actions"][0]


def test_refused_worker_probe_alone_is_not_a_stale_registration() -> None:
    r = Recorded()
    probe(r.health["worker"], outcome="refused", status="", status_code=0)
    r.put("process", processes({"pid": 9, "process": "dynamo.mocker", "state": "S"}))
    rules = [f["rule"] for f in _top(r)["findings"]]
    assert "frontend_stale_instances" not in rules and "endpoint_refused" in rules
    refused = next(f for f in _top(r)["findings"] if f["rule"] == "endpoint_refused")
    assert "alive" in refused["actions"][0] and "crash loops" not in refused["actions"][0]
    # A worker finding carries worker actions only.
    assert not any("DYN_HTTP_PORT" in a for a in refused["actions"])


def test_startup_is_info_not_critical() -> None:
    r = Recorded()
    _starting(r)
    probe(r.health["frontend"], outcome="refused", status="", status_code=0, since=NOW - 10)
    r.put("process", processes())
    report = _top(r)
    assert report["status"] == "ok", [(f["rule"], f["severity"]) for f in report["findings"]]
    assert {f["rule"] for f in report["findings"]} == {"dynamo_starting"}


def test_no_dynamo_process_explains_refused_endpoints_after_grace() -> None:
    r = Recorded()
    for view in r.health.values():
        probe(view, outcome="refused", status="", status_code=0)
        view.first_ok_at = 0.0
    r.put("process", processes())
    report = _top(r)
    top = report["findings"][0]
    assert top["rule"] == "no_dynamo_process" and top["severity"] == "critical"
    assert {"endpoint_refused:frontend", "endpoint_refused:worker"} <= set(top["explains"])


def test_refused_after_a_drain_is_shutdown_info() -> None:
    r = Recorded()
    CASES["dynamo_stopped_after_drain"](r)
    r.components.canary = failing_model()
    report = _top(r)
    assert report["status"] == "ok"
    assert report["findings"][0]["rule"] == "dynamo_stopped_after_drain"
    assert "endpoint_refused" not in {f["rule"] for f in report["findings"]}
    canary = next(f for f in report["findings"] if f["rule"] == "canary_failing")
    assert canary["explained_by"] == ["dynamo_stopped_after_drain:frontend"]


def test_canary_is_not_a_finding_while_the_sidecar_drains() -> None:
    r = Recorded()
    r.components.canary = failing_model()
    ctx = r.context()
    ctx.draining = True
    assert "canary_failing" not in {f.rule for f in evaluate(ctx)[0]}


def test_instances_and_migrations_say_only_what_was_observed() -> None:
    r = Recorded()
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_model_migration_total", i // 10, model="tiny", outcome="failure"),
            sample("dynamo_frontend_model_migration_limit", 0, model="tiny"),
        ],
    )
    migration = next(f for f in _top(r)["findings"] if f["rule"] == "migrations_rising")
    assert "could not be migrated" in migration["summary"] and "migration_limit 0" in migration["summary"]


def test_queue_without_gpu_data_claims_no_saturation() -> None:
    """A queue already there at the first sample (the sidecar started under load) counts
    once it has stood for `for_seconds`: 14 queued behind 2 running, as a real Dynamo 1.6.1
    with mocker --max-num-seqs 2 and 16 clients shows it."""
    r = Recorded()
    r.state.started = NOW - 35
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_queued_requests", 14, model="tiny"),
            sample("dynamo_frontend_inflight_requests", 16, model="tiny"),
            sample("dynamo_frontend_time_to_first_token_seconds_count", i * 2, model="tiny"),
        ],
        steps=7,
    )
    findings = _top(r)["findings"]
    assert [f["rule"] for f in findings if f["rule"].startswith("queue")] == ["queue_growing"]
    summary = findings[0]["summary"]
    assert "saturated" not in summary and "no GPU is visible" in summary
    # The age of the run, not the configured window; the capacity it is judged against.
    assert "14 requests queue at the frontend, at least 14 for 30s with 2 running" in summary


def test_coarse_bucket_quantile_is_shown_as_its_bounds() -> None:
    from agent.core.signals import bucket_text

    buckets = [(0.0, 0.0), (2.0, 100.0), (4.0, 100.0), (float("inf"), 100.0)]
    assert bucket_text(1.98, buckets) == "<= 2 s"
    fine = [(0.02, 0.0), (0.022, 100.0), (float("inf"), 100.0)]
    assert bucket_text(0.0219, fine) == "22 ms"


def test_latency_regression_needs_no_five_minute_baseline() -> None:
    r = Recorded()
    r.state.started = NOW - 120

    def buckets(i: int) -> list[Any]:
        fast = min(i, 12) * 5
        slow = max(0, i - 12) * 5
        return [
            sample("dynamo_frontend_time_to_first_token_seconds_bucket", fast, le="0.05", model="tiny"),
            sample("dynamo_frontend_time_to_first_token_seconds_bucket", fast + slow, le="1", model="tiny"),
            sample(
                "dynamo_frontend_time_to_first_token_seconds_bucket", fast + slow, le="+Inf", model="tiny"
            ),
        ]

    r.series("dynamo_metrics", buckets, steps=24)
    assert "latency_regression:ttft" in {f["id"] for f in _top(r)["findings"]}


def test_no_rule_explains_itself_in_a_cycle() -> None:
    graph = {rule.id: {link.split(":")[0] for link in rule.explains} for rule in RULES}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert [r for r in graph if reaches(r, r, set())] == []


# --- thresholds: at and just past, pod view and config overrides --------------------------------


def _throttle(ratio: float) -> Callable[[Recorded], None]:
    def build(r: Recorded) -> None:
        r.series(
            "cgroup",
            lambda i: [
                sample(P + "cgroup_cpu_periods_total", i * 100),
                sample(P + "cgroup_cpu_throttled_periods_total", i * 100 * ratio),
            ],
        )

    return build


@pytest.mark.parametrize(
    ("build", "rule_id", "fires"),
    [
        (_throttle(0.25), "cpu_throttled", False),
        (_throttle(0.26), "cpu_throttled", True),
        (CASES["worker_restarted"], "worker_restarted", True),
        (
            lambda r: r.put(
                "cgroup",
                CollectResult(
                    samples=[
                        sample(P + "cgroup_memory_usage_bytes", 89),
                        sample(P + "cgroup_memory_limit_bytes", 100),
                    ]
                ),
            ),
            "memory_near_limit",
            False,
        ),
        (
            lambda r: r.put(
                "cgroup",
                CollectResult(
                    samples=[
                        sample(P + "cgroup_memory_usage_bytes", 90),
                        sample(P + "cgroup_memory_limit_bytes", 100),
                    ]
                ),
            ),
            "memory_near_limit",
            True,
        ),
    ],
)
def test_threshold_boundaries(build: Callable[[Recorded], None], rule_id: str, fires: bool) -> None:
    r = Recorded()
    build(r)
    assert (rule_id in {f.rule for f in evaluate(r.context())[0]}) is fires


def test_threshold_override_from_config() -> None:
    r = Recorded()
    _throttle(0.26)(r)
    r.config = load_config(
        environ={}, overrides={"startup_grace": "0", "thresholds": "cpu_throttled.ratio=0.3"}
    )
    assert "cpu_throttled" not in {f.rule for f in evaluate(r.context())[0]}
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match="not a known threshold"):
        load_config(environ={}, overrides={"thresholds": "cpu_throttled.nope=1"})


def test_flow_shows_coarse_quantiles_as_bounds() -> None:
    r = Recorded()
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_request_duration_seconds_bucket", i * 4, le="2", model="tiny"),
            sample("dynamo_frontend_request_duration_seconds_bucket", i * 4, le="4", model="tiny"),
            sample("dynamo_frontend_request_duration_seconds_bucket", i * 4, le="+Inf", model="tiny"),
        ],
    )
    observations = next(s for s in _top(r)["flow"] if s["step"] == "metrics and logs")["observations"]
    assert "request_duration p99 <= 2 s" in observations, observations


def test_a_refusal_waits_for_the_logs_that_could_explain_it() -> None:
    """With log_files, a port closed a moment ago is judged after the next log read: Dynamo's
    shutdown lines (logged on SIGTERM) make it a drain, their absence a fault."""
    r = Recorded()
    r.config = load_config(
        environ={}, overrides={"startup_grace": "0", "log_files": "/logs/*.log", "dynamo_interval": "5"}
    )
    probe(r.health["frontend"], outcome="refused", status="", status_code=0, since=NOW - 2)
    r.put("dynamo_logs", CollectResult(facts=LogFacts(errors=ErrorRing(), time=NOW - 4)))
    assert "endpoint_refused" not in {f.rule for f in evaluate(r.context())[0]}
    r.state.add_event(
        Event("dynamo_shutdown", "/logs/frontend.log", "frontend service entering draining stage", NOW - 3)
    )
    r.put("dynamo_logs", CollectResult(facts=LogFacts(errors=ErrorRing(), time=NOW - 1)))
    rules = {f.rule for f in evaluate(r.context())[0]}
    assert "dynamo_stopped_after_drain" in rules and "endpoint_refused" not in rules


def test_a_refusal_with_logs_read_and_no_shutdown_is_a_fault() -> None:
    r = Recorded()
    r.config = load_config(environ={}, overrides={"startup_grace": "0", "log_files": "/logs/*.log"})
    probe(r.health["frontend"], outcome="refused", status="", status_code=0, since=NOW - 2)
    r.put("dynamo_logs", CollectResult(facts=LogFacts(errors=ErrorRing(), time=NOW - 1)))
    assert "endpoint_refused" in {f.rule for f in evaluate(r.context())[0]}


# --- more thresholds at and just past, pod view ------------------------------------------------


def _process_fact(**fields: Any) -> Callable[[Recorded], None]:
    return lambda r: r.put("process", processes({"pid": 7, "process": "dynamo.mocker", **fields}))


def _restarts(count: int) -> Callable[[Recorded], None]:
    def build(r: Recorded) -> None:
        for i in range(count):
            r.state.add_event(Event("worker_restart", "worker", f"restart {i}", NOW - 30 - i))

    return build


def _failures(count: int) -> Callable[[Recorded], None]:
    return lambda r: r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_requests_total", i * 10, model="tiny", status="success", error_type=""),
            sample(
                "dynamo_frontend_requests_total",
                0 if i < 55 else count,
                model="tiny",
                status="error",
                error_type="unavailable",
            ),
        ],
    )


BOUNDARIES = [
    ("fd_exhaustion", _process_fact(open_fds=921, max_fds=1024), False),  # 0.8994
    ("fd_exhaustion", _process_fact(open_fds=922, max_fds=1024), True),  # 0.9004
    ("process_stalled", _process_fact(state="D", state_since=NOW - 9), False),
    ("process_stalled", _process_fact(state="D", state_since=NOW - 10), True),
    ("process_stalled", _process_fact(state="S", state_since=NOW - 600), False),
    (
        "gpu_memory_near_full",
        lambda r: r.put("gpu", gpus(**{"0": {"uuid": "G", "memory_used": 96, "memory_total": 100}})),
        False,
    ),
    (
        "gpu_memory_near_full",
        lambda r: r.put("gpu", gpus(**{"0": {"uuid": "G", "memory_used": 97, "memory_total": 100}})),
        True,
    ),
    (
        "dependency_slow",
        lambda r: r.put("tcp", tcp({"e": {"role": "etcd", "outcome": "ok", "connect_seconds": 0.099}})),
        False,
    ),
    (
        "dependency_slow",
        lambda r: r.put("tcp", tcp({"e": {"role": "etcd", "outcome": "ok", "connect_seconds": 0.1}})),
        True,
    ),
    ("close_wait_leak", lambda r: r.put("tcp", tcp(close_wait={"nats": 49})), False),
    ("close_wait_leak", lambda r: r.put("tcp", tcp(close_wait={"nats": 50})), True),
    ("worker_restarted", _restarts(0), False),
    ("worker_restarted", _restarts(1), True),
    ("request_failures", _failures(0), False),
    ("request_failures", _failures(1), True),
    (
        "health_flapping",
        lambda r: [
            r.state.add_event(Event("health_transition", "worker/health", "f", NOW - i)) for i in range(2)
        ],
        False,
    ),
    (
        "health_flapping",
        lambda r: [
            r.state.add_event(Event("health_transition", "worker/health", "f", NOW - i)) for i in range(3)
        ],
        True,
    ),
    ("queue_growing", lambda r: _queue(r, queued=2, inflight=2), False),
    ("queue_growing", lambda r: _queue(r, queued=3, inflight=3), True),
    # against capacity: as many waiting as running counts, fewer does not
    ("queue_growing", lambda r: _queue(r, queued=9, inflight=19), False),
    ("queue_growing", lambda r: _queue(r, queued=10, inflight=20), True),
    # for how long: every sample of the last 30 s, not one
    ("queue_growing", lambda r: _queue(r, queued=10, inflight=12, steps=6), False),
    ("queue_growing", lambda r: _queue(r, queued=10, inflight=12, steps=7), True),
]


def _queue(r: Recorded, queued: float, inflight: float, steps: int = 60) -> None:
    """A queue standing at `queued` for the last `steps` 5-s samples, after none before."""
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_queued_requests", queued if i >= 60 - steps else 0, model="t"),
            sample("dynamo_frontend_inflight_requests", inflight if i >= 60 - steps else 1, model="t"),
        ],
    )


@pytest.mark.parametrize(
    ("rule_id", "build", "fires"), BOUNDARIES, ids=[f"{r}-{f}-{i}" for i, (r, _, f) in enumerate(BOUNDARIES)]
)
def test_more_threshold_boundaries(rule_id: str, build: Callable[[Recorded], None], fires: bool) -> None:
    r = Recorded()
    build(r)
    assert (rule_id in {f.rule for f in evaluate(r.context())[0]}) is fires


def test_every_threshold_is_overridable_and_documented() -> None:
    from agent.tools.docs import rules_reference

    reference = rules_reference()
    for rule in RULES:
        for threshold in rule.thresholds:
            key = f"{rule.id}.{threshold.name}"
            assert f"`{key}`" in reference
            config = load_config(environ={}, overrides={"thresholds": f"{key}={threshold.default + 1}"})
            assert rule.limits(config.thresholds)[threshold.name] == threshold.default + 1


@pytest.mark.parametrize(
    ("reason", "health_looked_ago", "probe_ok_for", "fires"),
    [
        ("refused", 2, 600, False),  # the probe has not looked since: it will say it
        ("error", 2, 600, False),  # a process stopping mid-scrape, not looked at yet
        ("refused", 0, 0.5, False),  # the port came back between the scrape and the probe
        ("refused", 0, 600, True),  # health answered before and after without a break
        ("http_error", 0, 600, True),
    ],
)
def test_a_scrape_failure_is_judged_after_the_health_probe_looked(
    reason: str, health_looked_ago: float, probe_ok_for: float, fires: bool
) -> None:
    """The scrape failed 1 s ago (its first failure); health looked `health_looked_ago` s ago
    and had been ok for `probe_ok_for` s by then."""
    r = Recorded()
    looked = NOW - health_looked_ago
    probe(r.health["frontend"], since=NOW - probe_ok_for)
    r.put("dynamo_health", CollectResult(facts=HealthFacts(r.health, looked)), at=looked)
    r.put(
        "dynamo_metrics",
        CollectResult(
            facts=MetricsFacts(
                {"frontend": ScrapeFact("x", up=False, reason=reason, failing_since=NOW - 1)}, NOW - 1
            )
        ),
        at=NOW - 1,
    )
    assert ("metrics_scrape_failing:frontend" in {f.id for f in evaluate(r.context())[0]}) is fires


def test_a_malformed_rule_record_is_refused_by_exception() -> None:
    """Validated by raising, so `python -O` (asserts stripped) cannot register a bad record."""
    from agent.diagnose.model import Category, NoAlert, RuleError, Severity, registrar

    into: list[Any] = []
    rule = registrar(into)
    fields: dict[str, Any] = {"summary": "x", "actions": ("y",)}
    with pytest.raises(RuleError, match=r"^paging: a critical rule needs an Alert or NoAlert$"):
        rule(id="paging", category=Category.SIDECAR, severity=Severity.CRITICAL, **fields)
    with pytest.raises(RuleError, match=r"^stringly: category and severity"):
        rule(id="stringly", category="sidecar", severity=Severity.INFO, **fields)
    with pytest.raises(TypeError):  # keyword-only: a positional record does not bind
        rule("positional", Category.SIDECAR, Severity.INFO, "x", ("y",))
    rule(id="ok", category=Category.SIDECAR, severity=Severity.CRITICAL, alert=NoAlert("pod only"), **fields)(
        lambda ctx, t: []
    )
    with pytest.raises(RuleError, match=r"^ok: two rules with one id$"):
        rule(id="ok", category=Category.SIDECAR, severity=Severity.INFO, **fields)
    assert [r.id for r in into] == ["ok"]


def test_a_scrape_failure_waits_for_the_first_health_probe() -> None:
    """At start-up the metrics collector can finish before health has looked once: the refused
    scrape is not a scrape fault before health could name the closed port."""
    r = Recorded()
    r.put("dynamo_health", CollectResult(facts=HealthFacts(r.health, 0.0)), at=NOW - 2)
    r.put(
        "dynamo_metrics",
        CollectResult(
            facts=MetricsFacts(
                {"frontend": ScrapeFact("x", up=False, reason="refused", failing_since=NOW - 1)}, NOW - 1
            )
        ),
        at=NOW - 1,
    )
    assert "metrics_scrape_failing:frontend" not in {f.id for f in evaluate(r.context())[0]}
