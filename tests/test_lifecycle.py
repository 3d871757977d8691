"""Findings over time (agent/diagnose/lifecycle.py and the engine around it): `since` is when
the condition began, a finding whose condition cleared is shown resolved (info) for a while and
never at its old severity, an event the pod has served after is information, and causality is
claimed only between findings that hold now. Unit and property tests over the episodes, then
every rule's `since` on a recorded state with a fault that starts at a known time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.facts import GpuFact, GpuFacts, PortAnswer, ProcessFact, ProcessFacts
from agent.core.samples import CollectResult, Event, sample
from agent.diagnose.context import Context
from agent.diagnose.engine import RULES, diagnose, evaluate, order, tree
from agent.diagnose.lifecycle import Lifecycle
from agent.diagnose.model import SEVERITY_RANK, Finding
from agent.diagnose.render import text
from agent.runtime.canary import CanaryResult, ModelState
from tests.test_rules import CASES, NOW, P, Recorded, edit, probe

INTERVAL = 5.0  # the recorded states' collection interval


@dataclass
class Canary:
    """The canary as the rules see it (agent.core.components.CanaryView): its models' records."""

    models: dict[str, ModelState]


def finding(ident: str, severity: str = "warning", since: float = 0.0) -> Finding:
    rule, _, subject = ident.partition(":")
    return Finding(ident, rule, "connection_anomaly", severity, f"{ident} holds", subject, [], ["act"], since)


def ids(findings: list[Finding]) -> dict[str, Finding]:
    return {f.id: f for f in findings}


# --- the episodes ---------------------------------------------------------------------------


def test_since_is_the_episode_start_whatever_the_rule_says_later() -> None:
    life = Lifecycle()
    life.observe([finding("a:x", since=100)], now=100)
    # A rule over a sliding window dates its evidence later as old samples leave the window.
    out = ids(life.observe([finding("a:x", since=130)], now=130))
    assert out["a:x"].since == 100


def test_a_rules_evidence_may_date_the_start_before_the_first_evaluation() -> None:
    life = Lifecycle()
    assert ids(life.observe([finding("a:x", since=80)], now=100))["a:x"].since == 80
    assert ids(life.observe([finding("a:x", since=70)], now=105))["a:x"].since == 70


def test_a_cleared_condition_is_resolved_info_with_its_end_and_duration() -> None:
    life = Lifecycle(resolved_for=300)
    life.observe([finding("a:x", "critical", since=100)], now=100)
    life.observe([finding("a:x", "warning", since=100)], now=110)
    out = ids(life.observe([], now=115))
    resolved = out["a:x"]
    assert (resolved.severity, resolved.state, resolved.was) == ("info", "resolved", "critical")
    assert resolved.resolved_at == 115 and resolved.to_dict()["duration_seconds"] == 15
    assert "a:x" in ids(life.observe([], now=115 + 300))
    assert "a:x" not in ids(life.observe([], now=115 + 301))
    # Remembered, unseen, for the history window: a rule's evidence reaches no further back.
    assert life.episodes and ids(life.observe([finding("a:x", since=50)], now=120 + 300))["a:x"].since == 115
    life.observe([], now=500)
    life.observe([], now=500 + 901)
    assert not life.episodes


def test_a_new_episode_cannot_begin_before_the_last_one_ended() -> None:
    life = Lifecycle()
    life.observe([finding("a:x", since=100)], now=100)
    life.observe([], now=110)
    again = ids(life.observe([finding("a:x", since=50)], now=120))["a:x"]
    assert again.since == 110 and again.state == "active"


def test_a_narrowed_window_reads_the_episodes_without_moving_them() -> None:
    life = Lifecycle()
    life.observe([finding("a:x", since=100)], now=100)
    assert life.observe([], now=105, record=False) == []  # absent from a narrow window: not resolved
    assert ids(life.observe([finding("a:x", since=104)], now=106))["a:x"].since == 100


def test_info_only_and_past_episodes_end_quietly() -> None:
    life = Lifecycle()
    past = finding("b:y", "info", since=100)
    past.state, past.was = "past", "warning"
    life.observe([finding("s:z", "info", since=100), past], now=100)
    assert life.observe([], now=105) == []


def test_memory_is_bounded() -> None:
    life = Lifecycle(resolved_for=10_000, max_tracked=64)
    for step in range(1000):
        life.observe([finding(f"a:{step}"), finding(f"b:{step % 7}")], now=float(step))
        assert len(life.episodes) <= 64
    # What holds now is never the one forgotten.
    assert {"a:999", "b:5"} <= set(life.episodes)


STEPS = st.lists(
    st.tuples(
        st.floats(min_value=0.5, max_value=40),  # seconds since the previous evaluation
        st.dictionaries(
            st.sampled_from(["a:1", "a:2", "b:1", "c:1"]),
            st.tuples(
                st.sampled_from(["info", "warning", "critical"]), st.floats(min_value=0, max_value=200)
            ),
            max_size=4,
        ),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_episodes_against_a_reference_model(steps: list[tuple[float, dict[str, tuple[str, float]]]]) -> None:
    """Property: each evaluation's output matches a plain reference of the rules in the module
    docstring; resolved findings are always info; nothing appears twice."""
    life = Lifecycle(resolved_for=60, remember_for=100_000)
    now = 1000.0
    since: dict[str, float] = {}  # reference: the open episode's start
    floor: dict[str, float] = {}  # reference: when the last episode of the id ended
    peak: dict[str, str] = {}
    ended: dict[str, tuple[float, str]] = {}  # id -> (resolved at, peak)
    for delay, held in steps:
        now += delay
        given_findings = [finding(i, severity, since=now - back) for i, (severity, back) in held.items()]
        out = life.observe(given_findings, now=now)
        for ident, (severity, back) in held.items():
            start = max(floor.get(ident, 0.0), min(now, now - back))
            since[ident] = min(since.get(ident, start), start) if ident in since else start
            since[ident] = max(since[ident], floor.get(ident, 0.0))
            peak[ident] = max(peak.get(ident, "info"), severity, key=SEVERITY_RANK.__getitem__)
            ended.pop(ident, None)
        for ident in [i for i in since if i not in held]:
            ended[ident] = (now, peak.pop(ident))
            floor[ident] = now
            del since[ident]
        got = ids(out)
        assert len(got) == len(out)
        for ident, (severity, _) in held.items():
            assert got[ident].state == "active" and got[ident].severity == severity
            assert got[ident].since == pytest.approx(since[ident]) and got[ident].since <= now
        shown = {i for i, (at, was) in ended.items() if now - at <= 60 and was != "info"}
        assert {i for i, f in got.items() if f.state == "resolved"} == shown
        for ident in shown:
            assert got[ident].severity == "info" and got[ident].was == ended[ident][1]
            assert got[ident].resolved_at == ended[ident][0]


# --- the engine: past events, causality, order -------------------------------------------------


def _served(r: Recorded, until_step: int = 60, model: str = "tiny") -> None:
    """Successful requests for `model` counted in every scrape up to `until_step` of 60."""
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_requests_total", min(i, until_step) * 10, model=model, status="success")
        ],
    )


def _failed_from(r: Recorded, step: int) -> None:
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample(
                "dynamo_frontend_requests_total",
                min(i, step) * 10,
                model="tiny",
                status="success",
                error_type="",
            ),
            sample(
                "dynamo_frontend_requests_total",
                max(0, i - step + 1) * 2,
                model="tiny",
                status="error",
                error_type="unavailable",
            ),
        ],
    )


def test_a_restart_is_a_past_event_once_the_pod_serves_after_it() -> None:
    r = Recorded()
    CASES["worker_restarted"](r)  # the restart 30 s ago
    _served(r, until_step=50)  # requests stopped succeeding 45 s ago: nothing served since
    restarted = ids(evaluate(r.context())[0])["worker_restarted:worker"]
    assert (restarted.severity, restarted.state) == ("warning", "active")
    r = Recorded()
    CASES["worker_restarted"](r)
    _served(r)  # and served until now
    restarted = ids(evaluate(r.context())[0])["worker_restarted:worker"]
    assert (restarted.severity, restarted.state, restarted.was) == ("info", "past", "warning")
    assert restarted.served_at == pytest.approx(NOW) and restarted.last_event == pytest.approx(NOW - 30)


@pytest.mark.parametrize(
    ("last_step", "worker_ok", "past"),
    [
        (59, True, True),  # a later collection saw no further failure, endpoints healthy
        (58, True, False),  # nothing collected after the mixed step yet: order unknown
        (59, False, False),  # the worker's probe fails now
    ],
)
def test_successes_in_the_step_of_the_last_failure(last_step: int, worker_ok: bool, past: bool) -> None:
    """The first request after a restart fails and the next five succeed within one scrape:
    the counters cannot order them, so the failures are past only once a later collection saw
    no further failure and every endpoint answers its health check."""
    r = Recorded()
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample(
                "dynamo_frontend_requests_total",
                min(i, 40) * 10 + (5 if i >= 58 else 0),
                model="tiny",
                status="success",
                error_type="",
            ),
            sample(
                "dynamo_frontend_requests_total",
                (3 if i >= 41 else 0) + (1 if i >= 58 else 0),
                model="tiny",
                status="error",
                error_type="unavailable",
            ),
        ],
        steps=last_step + 1,
        interval=INTERVAL,
    )
    if not worker_ok:
        probe(r.health["worker"], outcome="timeout", status="", status_code=0, since=NOW - 1)
    # The series ends at NOW: with last_step 58 the mixed step is the latest collection.
    failures = ids(evaluate(r.context())[0])["request_failures:requests"]
    assert (failures.state == "past") is past, (failures.state, failures.severity)


def test_a_failed_canary_is_past_only_when_its_own_model_serves() -> None:
    def failing(r: Recorded) -> None:
        state = ModelState()
        for back in (20, 15, 10):
            state.observe(CanaryResult("tiny", "timeout", "c", "t", 3.0, timestamp=NOW - back), 3)
        r.components.canary = Canary({"tiny": state})

    r = Recorded()
    failing(r)
    _served(r, model="other")
    assert ids(evaluate(r.context())[0])["canary_failing:tiny"].severity == "critical"
    r = Recorded()
    failing(r)
    _served(r, model="tiny")
    canary = ids(evaluate(r.context())[0])["canary_failing:tiny"]
    assert (canary.state, canary.severity) == ("past", "info")


def test_causality_is_claimed_only_between_findings_that_hold_now() -> None:
    life = Lifecycle()
    killed = Recorded()
    probe(killed.health["worker"], outcome="refused", status="", status_code=0, since=NOW - 20)
    _failed_from(killed, 55)  # requests fail from 20 s ago and none succeeds after
    during = killed.context()
    during.now = NOW - 5
    first = ids(evaluate(during, lifecycle=life)[0])
    assert first["request_failures:requests"].explained_by == ["endpoint_refused:worker"]
    back = Recorded()
    _failed_from(back, 55)  # the worker answers again; the failures are still in the window
    after = ids(evaluate(back.context(), lifecycle=life)[0])
    failures, refused = after["request_failures:requests"], after["endpoint_refused:worker"]
    assert failures.state == "active" and failures.explained_by == []
    assert refused.state == "resolved" and refused.explains == [] and refused.severity == "info"
    assert refused.was == "critical"


def test_present_faults_come_first_and_the_report_nests_as_it_orders() -> None:
    life = Lifecycle()
    old = Recorded()
    probe(old.health["frontend"], outcome="refused", status="", status_code=0, since=NOW - 60)
    ctx = old.context()
    ctx.now = NOW - 10
    evaluate(ctx, lifecycle=life)
    r = Recorded()
    CASES["worker_restarted"](r)
    _served(r)
    probe(r.health["worker"], outcome="timeout", status="", status_code=0, since=NOW - 8)
    CASES["canary_failing"](r)
    report = diagnose(r.context(), lifecycle=life)
    states = [(f["id"], f["state"], f["severity"]) for f in report["findings"]]
    assert states[0] == ("endpoint_timeout:worker", "active", "critical"), states
    assert states[1][0] == "canary_failing:tiny" and report["findings"][1]["explained_by"] == [
        "endpoint_timeout:worker"
    ]
    assert [s[1] for s in states[2:]] == ["past", "resolved"], states
    assert report["tree"][0] == {
        "id": "endpoint_timeout:worker",
        "symptoms": [{"id": "canary_failing:tiny", "symptoms": []}],
    }

    def flat(nodes: list[dict[str, Any]]) -> list[str]:
        return [i for n in nodes for i in [n["id"], *flat(n["symptoms"])]]

    assert flat(report["tree"]) == [f["id"] for f in report["findings"]]
    # The text nests the same way: the symptom indented under its cause.
    lines = [
        line
        for line in text(report).splitlines()
        if ("[" in line and "]" in line.split(" ")[-1]) or "[" in line[:30]
    ]
    heads = [line for line in lines if line.lstrip().startswith(("[", "└─ ["))]
    assert heads[0].startswith("[CRITICAL]") and heads[1].startswith("    └─ [CRITICAL]")
    assert heads[2].startswith("[PAST, was WARNING]") and heads[3].startswith("[RESOLVED, was CRITICAL]")


def test_order_and_tree_agree_for_shared_symptoms() -> None:
    a, b, c = finding("a:1", "critical"), finding("b:1", "critical"), finding("c:1")
    a.explains, b.explains = ["b:1", "c:1"], ["c:1"]
    b.explained_by, c.explained_by = ["a:1"], ["a:1", "b:1"]
    assert [f.id for f in order([c, b, a])] == ["a:1", "b:1", "c:1"]
    assert tree([a, b, c]) == [
        {"id": "a:1", "symptoms": [{"id": "b:1", "symptoms": [{"id": "c:1", "symptoms": []}]}]}
    ]


# --- every rule's `since`: a fault that starts at a known time ----------------------------------


def _series_from(step: int, make: Callable[[int, bool], list[Any]]) -> Callable[[Recorded], None]:
    """A series of 60 collections 5 s apart whose fault begins at `step` (NOW - (59 - step) * 5)."""
    return lambda r: r.series("dynamo_metrics", lambda i: make(i, i >= step))


def at_step(step: int) -> float:
    return NOW - (59 - step) * INTERVAL


def _procs(**fields: Any) -> CollectResult:
    return CollectResult(
        facts=ProcessFacts([ProcessFact(**{"pid": 7, "process": "dynamo.mocker", **fields})], time=NOW)
    )


def _gpu(**fields: Any) -> CollectResult:
    return CollectResult(facts=GpuFacts(True, gpus={"0": GpuFact(**{"uuid": "GPU-0", **fields})}))


def _canary(r: Recorded) -> None:
    state = ModelState()
    for back in (20, 15, 10):
        state.observe(
            CanaryResult("tiny", "timeout", "c", "t", 3.0, error="no answer", timestamp=NOW - back), 3
        )
    r.components.canary = Canary({"tiny": state})


def _cpu(r: Recorded) -> None:
    r.series(
        "process",
        lambda i: [
            sample(
                P + "process_cpu_seconds_total",
                max(0, i - 20) * INTERVAL * 1.95,
                pid="7",
                process="m",
                mode="user",
            ),
            sample(P + "cgroup_cpu_limit_cores", 1),
        ],
    )
    r.state.latest["process"].facts = _procs(process="dynamo.frontend").facts


def _slo(r: Recorded) -> None:
    r.config.slo_ttft_p99 = 0.5

    def buckets(i: int) -> list[Any]:
        slow = max(0, i - 50) * 10  # observations over the target from step 50
        return [
            sample("dynamo_frontend_time_to_first_token_seconds_bucket", i * 10, le="0.05", model="tiny"),
            sample("dynamo_frontend_time_to_first_token_seconds_bucket", i * 10 + slow, le="1", model="tiny"),
            sample(
                "dynamo_frontend_time_to_first_token_seconds_bucket", i * 10 + slow, le="+Inf", model="tiny"
            ),
        ]

    r.series("dynamo_metrics", buckets)


def _queue(utilization: float | None) -> Callable[[Recorded], None]:
    def build(r: Recorded) -> None:
        r.series(
            # A standing queue from step 50 on: five waiting, nothing else in flight.
            "dynamo_metrics",
            lambda i: [sample("dynamo_frontend_queued_requests", 5 if i >= 50 else 0, model="t")],
        )
        if utilization is not None:
            r.put("gpu", _gpu(utilization=utilization))

    return build


def _failures_only(r: Recorded) -> None:
    r.series(
        "dynamo_metrics",
        lambda i: [sample("dynamo_frontend_failures_total", max(0, i - 50), reason="backend.unavailable")],
        steps=60,
    )


def _wrong_port_since(r: Recorded) -> None:
    probe(r.health["worker"], outcome="refused", status="", status_code=0, since=NOW - 40)
    edit(r.health["worker"], answers_on=PortAnswer(8081, "http://127.0.0.1:8081", "ready", NOW))


def _not_ready_since(r: Recorded) -> None:
    probe(r.health["worker"], outcome="unhealthy", status="notready", status_code=503, since=NOW - 40)
    edit(r.health["worker"], endpoints={"generate": "notready"})


def _models_gone(r: Recorded) -> None:
    edit(r.health["frontend"], models=[], models_seen={"tiny": NOW - 25})


# rule -> (the fault, when it began). A rule that judges a snapshot (a probe outcome, a gauge)
# learns of a fault at the collection that shows it: its `since` is the first evaluation that
# saw it, here NOW, and the fault began within the interval before.
SINCE: dict[str, tuple[Callable[[Recorded], Any], float]] = {
    "endpoint_refused": (
        lambda r: probe(r.health["frontend"], outcome="refused", status_code=0, since=NOW - 40),
        NOW - 40,
    ),
    "endpoint_timeout": (
        lambda r: probe(r.health["worker"], outcome="timeout", status_code=0, since=NOW - 40),
        NOW - 40,
    ),
    "endpoint_bad_response": (
        lambda r: probe(r.health["frontend"], outcome="malformed", error="not JSON", since=NOW - 40),
        NOW - 40,
    ),
    "endpoint_wrong_port": (_wrong_port_since, NOW - 40),
    "frontend_no_instances": (CASES["frontend_no_instances"], NOW - 20),
    "frontend_stale_instances": (_models_gone, NOW - 25),
    "dynamo_starting": (CASES["dynamo_starting"], NOW - 10),
    "dynamo_stopped_after_drain": (CASES["dynamo_stopped_after_drain"], NOW - 4),
    "process_stalled": (CASES["process_stalled"], NOW - 30),
    "request_failures": (CASES["request_failures"], at_step(55)),
    "engine_hung": (CASES["engine_hung"], at_step(50)),
    "slo_breach": (_slo, at_step(50)),
    "queue_growing": (_queue(None), at_step(50)),
    "queue_growing_gpu_idle": (_queue(0.1), at_step(50)),
    "queue_growing_saturated": (_queue(0.97), at_step(50)),
    "worker_registration_lost": (CASES["worker_registration_lost"], NOW - 5),
    "worker_notready_endpoints_ready": (
        lambda r: probe(
            r.health["worker"], outcome="unhealthy", status="notready", status_code=503, since=NOW - 40
        ),
        NOW - 40,
    ),
    "dynamo_not_ready": (_not_ready_since, NOW - 40),
    "dynamo_draining": (
        lambda r: probe(
            r.health["frontend"], outcome="unhealthy", status="not_ready", status_code=503, since=NOW - 40
        ),
        NOW - 40,
    ),
    "metrics_scrape_failing": (CASES["metrics_scrape_failing"], NOW),
    "worker_restarted": (CASES["worker_restarted"], NOW - 30),
    "health_flapping": (CASES["health_flapping"], NOW - 60),
    "no_dynamo_process": (CASES["no_dynamo_process"], NOW),
    "canary_failing": (_canary, NOW - 10),  # failing from the third failure in a row
    "drain_deadline_with_work": (CASES["drain_deadline_with_work"], NOW - 60),
    "collector_failing": (CASES["collector_failing"], NOW - 15),
    "otlp_export_failing": (CASES["otlp_export_failing"], NOW),
    "series_dropped": (CASES["series_dropped"], NOW),
    "memory_budget": (CASES["memory_budget"], NOW),
    "dependency_unreachable": (CASES["dependency_unreachable"], NOW),
    "dependency_slow": (CASES["dependency_slow"], NOW),
    "port_not_listening": (CASES["port_not_listening"], NOW),
    "tcp_retransmits_high": (
        lambda r: r.series(
            "tcp",
            lambda i: [
                sample(P + "tcp_kernel_total", i * 10000, counter="OutSegs"),
                sample(P + "tcp_kernel_total", max(0, i - 50) * 5000, counter="RetransSegs"),
            ],
        ),
        at_step(51),
    ),
    "close_wait_leak": (CASES["close_wait_leak"], NOW),
    "cpu_throttled": (
        lambda r: r.series(
            "cgroup",
            lambda i: [
                sample(P + "cgroup_cpu_periods_total", i * 50),
                sample(P + "cgroup_cpu_throttled_periods_total", max(0, i - 40) * 50),
            ],
        ),
        at_step(41),
    ),
    "cpu_saturated": (_cpu, at_step(21)),
    "memory_near_limit": (CASES["memory_near_limit"], NOW),
    "oom_killed": (
        lambda r: r.series(
            "cgroup",
            lambda i: [sample(P + "cgroup_memory_events_total", 0 if i < 50 else 1, event="oom_kill")],
        ),
        at_step(50),
    ),
    "memory_pressure": (CASES["memory_pressure"], NOW),
    "fd_exhaustion": (CASES["fd_exhaustion"], NOW),
    "gpu_xid": (CASES["gpu_xid"], NOW - 10),
    "gpu_lost": (CASES["gpu_lost"], NOW),
    "gpu_ecc_errors": (CASES["gpu_ecc_errors"], NOW),
    "gpu_throttling": (CASES["gpu_throttling"], NOW),
    "gpu_memory_near_full": (CASES["gpu_memory_near_full"], NOW),
    "latency_regression": (CASES["latency_regression"], NOW - (179 - 120) * INTERVAL),
    "rejections_rising": (
        lambda r: r.series(
            "dynamo_metrics",
            lambda i: [
                sample(
                    "dynamo_rejection_request_total",
                    max(0, i - 50) * 3,
                    dynamo_component="backend",
                    dynamo_endpoint="generate",
                    dynamo_namespace="dynamo",
                    worker_id="1",
                )
            ],
        ),
        at_step(51),
    ),
    "migrations_rising": (
        lambda r: r.series(
            "dynamo_metrics",
            lambda i: [
                sample(
                    "dynamo_frontend_model_migration_total",
                    max(0, i - 50),
                    model="tiny",
                    migration_type="new_request",
                )
            ],
        ),
        at_step(51),
    ),
}


def test_every_rule_has_a_since_case() -> None:
    assert set(SINCE) == {rule.id for rule in RULES}


@pytest.mark.parametrize("rule_id", sorted(SINCE))
def test_since_is_within_one_interval_of_the_fault(rule_id: str) -> None:
    """The sidecar evaluated a healthy pod one interval ago, then the fault's state now: the
    finding's `since` is when the fault began, never the window's or the sidecar's start."""
    life = Lifecycle()
    healthy = Recorded().context()
    healthy.now = NOW - INTERVAL
    assert evaluate(healthy, lifecycle=life)[0] == []
    faulty = Recorded()
    build, began = SINCE[rule_id]
    build(faulty)
    found = [f for f in evaluate(faulty.context(), lifecycle=life)[0] if f.rule == rule_id]
    assert found, rule_id
    assert abs(found[0].since - began) <= INTERVAL, (found[0].since - NOW, began - NOW)


def test_stale_instances_from_failures_alone_date_from_the_first_failure() -> None:
    r = Recorded()
    _failures_only(r)
    stale = ids(evaluate(r.context())[0])["frontend_stale_instances:frontend"]
    assert abs(stale.since - at_step(51)) <= INTERVAL
    assert stale.last_event == pytest.approx(NOW)


def _context_for(r: Recorded) -> Context:
    return r.context()


def test_a_restart_of_the_state_keeps_events_honest_over_time() -> None:
    """A worker restarted 30 s ago, and the frontend served until now: /diagnose over a whole
    incident stays true at each evaluation (active while no request succeeded, past after)."""
    life = Lifecycle()
    before = Recorded()
    before.state.add_event(Event("worker_restart", "worker", "restarted", NOW - 30))
    _served(before, until_step=50)
    early = before.context()
    early.now = NOW - 20
    assert ids(evaluate(early, lifecycle=life)[0])["worker_restarted:worker"].severity == "warning"
    after = Recorded()
    after.state.add_event(Event("worker_restart", "worker", "restarted", NOW - 30))
    _served(after)
    later = ids(evaluate(_context_for(after), lifecycle=life)[0])["worker_restarted:worker"]
    assert (later.state, later.severity, later.since) == ("past", "info", NOW - 30)


# --- through the sidecar: a whole incident on the simulator -----------------------------------


async def test_kill_then_restart_leaves_nothing_critical_once_requests_succeed(
    sim, make_sidecar, http
) -> None:
    """Worker killed: critical within seconds. Restarted, and five requests in a row succeed:
    within two collection intervals nothing is critical, the kill's findings are resolved or
    past (info) and the report says when they ended."""
    import time

    from tests.helpers import base_url, get_json, post_completion, wait_for

    sidecar = await make_sidecar(sim, canary_enabled="false")
    url = base_url(sidecar) + "/diagnose"
    frontend = sim.url("frontend")
    await wait_for(lambda: sidecar.ready, what="ready")
    for _ in range(3):
        assert (await post_completion(http, frontend))[0] == 200
    killed_at = time.monotonic()
    await sim.kill_worker()

    async def critical() -> dict[str, Any] | None:
        report = await get_json(http, url)
        return report if report["status"] == "critical" else None

    during = await wait_for(critical, timeout=10, what="critical after the kill")
    kill_to_critical = time.monotonic() - killed_at
    assert during["findings"][0]["id"] == "endpoint_refused:worker"
    for _ in range(3):  # requests fail while the worker is gone
        await post_completion(http, frontend)
    failed_by = time.time()
    await sim.restart_worker()
    # A restarted worker is up a collection or more after the failures (a real one takes
    # seconds): the sidecar sees it healthy before the requests that prove it serves.
    from agent.core.facts import HealthFacts

    await wait_for(
        lambda: (
            sidecar.state.facts(HealthFacts).endpoints["worker"].probe().outcome == "ok"
            and sidecar.state.latest_time.get("dynamo_metrics", 0) > failed_by
        ),
        what="worker healthy again, the failures scraped",
    )
    for _ in range(5):  # five in a row, as an on-call engineer checks it
        status, _ = await post_completion(http, frontend)
        assert status == 200
    served_at = time.monotonic()

    async def calm() -> dict[str, Any] | None:
        report = await get_json(http, url)
        return report if report["status"] in {"ok", "warning"} else None

    try:
        after = await wait_for(calm, timeout=10, what="nothing critical after recovery")
    except AssertionError:
        report = await get_json(http, url)
        raise AssertionError(
            [(f["id"], f["severity"], f["state"], f["summary"]) for f in report["findings"]]
        ) from None
    recovery_to_calm = time.monotonic() - served_at
    interval = sidecar.config.dynamo_interval
    assert recovery_to_calm <= 2 * interval + 1.0, recovery_to_calm  # the collection, the scrape, a margin
    assert not [f for f in after["findings"] if f["severity"] == "critical"]
    by_id = {f["id"]: f for f in after["findings"]}
    refused = by_id["endpoint_refused:worker"]
    assert refused["state"] == "resolved" and refused["was"] == "critical" and refused["severity"] == "info"
    assert refused["duration_seconds"] > 0 and refused["resolved_at"] >= refused["since"]
    for event_id in ("request_failures:requests", "worker_restarted:worker"):
        if event_id in by_id:
            assert by_id[event_id]["state"] == "past" and by_id[event_id]["severity"] == "info", by_id[
                event_id
            ]
    assert kill_to_critical < 5


# --- one number for one thing; a report that has not looked says so ---------------------------


def test_the_flow_and_the_finding_count_the_same_failures() -> None:
    r = Recorded()
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample(
                "dynamo_frontend_requests_total",
                min(i, 55) * 10,
                model="tiny",
                status="success",
                error_type="",
            ),
            sample(
                "dynamo_frontend_requests_total",
                max(0, i - 54) * 3,
                model="tiny",
                status="error",
                error_type="unavailable",
            ),
            sample("dynamo_frontend_requests_total", 7, model="x", status="error", error_type="not_found"),
        ],
    )
    report = diagnose(r.context())
    failures = next(f for f in report["findings"] if f["rule"] == "request_failures")
    assert failures["summary"].startswith("15 request(s) failed server-side")
    metrics = next(s for s in report["flow"] if s["step"] == "metrics and logs")["observations"]
    assert "15 failed server-side (15 unavailable) in the last 5 min" in metrics, metrics
    assert not any("errors" in line and "/s" in line for line in metrics), metrics  # no second number


def test_a_collector_that_has_not_run_makes_the_report_unknown_not_ok() -> None:
    r = Recorded()
    r.state.register_collector("gpu", 5, 4)  # registered, no run completed yet
    report = diagnose(r.context())
    assert report["findings"] == [] and report["status"] == "unknown"
    assert report["unread"] == [{"source": "gpu", "error": "no run completed yet"}]
    assert "NOT READ: gpu: no run completed yet" in text(report)
    r.state.collectors["gpu"].last_success = True
    assert diagnose(r.context())["status"] == "ok"


async def test_diagnose_cli_exits_3_while_the_sidecar_has_read_nothing(make_sidecar) -> None:
    import asyncio
    import subprocess

    from agent.core.samples import CollectResult as Result
    from collectors.base import Collector
    from tests.helpers import base_url
    from tests.procs import ENV, PYTHON

    class NeverDone(Collector):
        name = "never_done"

        def __init__(self) -> None:
            super().__init__(interval=3600, timeout=3600)

        async def collect(self) -> Result:
            await asyncio.Event().wait()
            return Result()

    sidecar = await make_sidecar(collectors=[NeverDone()])
    out = await asyncio.to_thread(
        subprocess.run,
        [PYTHON, "-m", "agent.cli", "diagnose", "--url", base_url(sidecar)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.startswith("dynamo-sidecar diagnose: UNKNOWN") and "NOT READ: never_done" in out.stdout
