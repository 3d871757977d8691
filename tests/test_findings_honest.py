"""Issue 25's misdiagnoses, each on a state recorded from (or shaped like) what a real
Dynamo 1.6.1 showed when a fault suite found it: the behaviour that was wrong, and what the
rules say now. The real-Dynamo counterparts are in tests/test_real_dynamo_honest.py."""

from __future__ import annotations

import os
from typing import Any

import pytest

from agent.core.facts import EndpointFacts, MetricsFacts, ProbeFact, ScrapeFact
from agent.core.samples import CollectResult, Event, sample
from agent.diagnose.engine import diagnose, evaluate
from agent.diagnose.rules.performance import request_failures
from collectors.tcp import TcpCollector, parse_probe_target
from tests.real_dynamo import ETCD_MISSING, Etcd, etcd_binary
from tests.test_rules import NOW, Recorded, edit, probe, processes, tcp


def _report(r: Recorded) -> dict[str, Any]:
    report = diagnose(r.context())
    assert report["rule_errors"] == []
    return report


def _ids(report: dict[str, Any]) -> dict[str, str]:
    return {f["id"]: f["severity"] for f in report["findings"]}


# --- client cancellations ----------------------------------------------------------------


def _requests(r: Recorded, cancelled: int, unavailable: int = 0) -> None:
    """Dynamo 1.6.1 counts a stream the client closed as status="error",
    error_type="cancelled" (recorded from the real frontend)."""
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_requests_total", i * 2, model="tiny", status="success", error_type=""),
            sample(
                "dynamo_frontend_requests_total",
                0 if i < 50 else cancelled,
                endpoint="completions",
                model="tiny",
                request_type="stream",
                status="error",
                error_type="cancelled",
            ),
            sample(
                "dynamo_frontend_requests_total",
                0 if i < 50 else unavailable,
                endpoint="completions",
                model="tiny",
                request_type="stream",
                status="error",
                error_type="unavailable",
            ),
        ],
    )


def test_client_cancellations_are_not_request_failures() -> None:
    r = Recorded()
    _requests(r, cancelled=6)
    assert "request_failures:requests" not in _ids(_report(r))


def test_cancellations_beside_real_failures_are_left_out_of_the_count() -> None:
    r = Recorded()
    _requests(r, cancelled=40, unavailable=2)
    failures = next(f for f in _report(r)["findings"] if f["rule"] == "request_failures")
    assert failures["summary"].startswith("2 request(s) failed") and "cancelled" not in failures["summary"]


def test_fleet_query_leaves_cancellations_out_too() -> None:
    from agent.diagnose.engine import RULES

    rule = next(r for r in RULES if r.id == "request_failures")
    assert rule.predicate is request_failures and rule.fleet is not None
    query = rule.fleet(lambda name, extra="": f"{name}{{{extra}}}", rule.limits())
    assert "cancelled" in query.split('error_type!~"')[1].split('"')[0].split("|")


# --- the queue: level and duration against capacity ----------------------------------------

# The frontend's queued requests under bursts of 24 requests every ~3 s against a healthy
# real Dynamo 1.6.1 (mocker, default --max-num-seqs), sampled every 0.5 s: each burst's
# queue is gone within a second. The old growth test warned for each burst.
BURSTS = [23, 23, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0, 24, 24, 0, 0, 0, 0]
BURSTS = BURSTS * 3


def test_a_bursts_momentary_queue_never_warns() -> None:
    r = Recorded()
    r.state.started = NOW - len(BURSTS) * 0.5 - 5
    r.config.dynamo_interval = 0.5
    for step, queued in enumerate(BURSTS):
        at = NOW - (len(BURSTS) - 1 - step) * 0.5
        r.put(
            "dynamo_metrics",
            CollectResult(
                samples=[
                    sample("dynamo_frontend_queued_requests", queued, model="tiny"),
                    sample("dynamo_frontend_inflight_requests", queued + (24 if queued else 0), model="tiny"),
                    sample("dynamo_frontend_time_to_first_token_seconds_count", step * 8, model="tiny"),
                ]
            ),
            at=at,
        )
        ctx = r.context()
        ctx.now = at
        assert not [f.id for f in evaluate(ctx)[0] if f.rule.startswith("queue")], step


def test_a_standing_queue_against_small_capacity_warns_with_what_runs() -> None:
    """15 queued behind 2 running for 65 s, TTFT p99 ~22 s: the case read as OK before."""
    r = Recorded()
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_queued_requests", 15 if i >= 46 else 0, model="tiny"),
            sample("dynamo_frontend_inflight_requests", 17 if i >= 46 else 1, model="tiny"),
            sample("dynamo_frontend_time_to_first_token_seconds_count", i * 3, model="tiny"),
        ],
    )
    queue = next(f for f in _report(r)["findings"] if f["rule"] == "queue_growing")
    assert queue["severity"] == "warning"
    assert "15 requests queue at the frontend, at least 15 for 65s with 2 running" in queue["summary"]
    assert queue["since"] == pytest.approx(NOW - 65, abs=0.01)


def test_an_engines_own_queue_counts_where_no_frontend_is_watched() -> None:
    """A worker pod: vllm:num_requests_waiting against vllm:num_requests_running."""
    r = Recorded()
    r.health = {"worker": r.health["worker"]}
    labels = {"engine": "0", "model_name": "tiny"}
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("vllm:num_requests_waiting", 14, **labels),
            sample("vllm:num_requests_running", 2, **labels),
        ],
        steps=8,
    )
    queue = next(f for f in _report(r)["findings"] if f["rule"] == "queue_growing")
    assert queue["id"] == "queue_growing:engine"
    assert "queue at the engine (vllm:num_requests_waiting)" in queue["summary"]


# --- drains: a late shutdown line is not a crash -----------------------------------------------


def test_a_late_shutdown_line_after_the_drain_keeps_it_a_drain() -> None:
    """Frontend SIGTERM with a long stream: draining at -20 s, port closed at -12 s, and
    Dynamo logs "Runtime shutdown initiated" again at -3 s as the process exits."""
    r = Recorded()
    r.state.add_event(
        Event(
            "health_transition",
            "frontend/health",
            "frontend health: healthy -> not_ready",
            NOW - 20,
            {"endpoint": "frontend", "to_status": "not_ready"},
        )
    )
    r.state.add_event(Event("dynamo_shutdown", "/logs/frontend.log", "Runtime shutdown initiated", NOW - 20))
    probe(r.health["frontend"], outcome="refused", status="", status_code=0, since=NOW - 12)
    r.state.add_event(Event("dynamo_shutdown", "/logs/frontend.log", "Runtime shutdown initiated", NOW - 3))
    report = _report(r)
    assert report["status"] == "ok", _ids(report)
    assert "dynamo_stopped_after_drain:frontend" in _ids(report)
    assert "endpoint_refused:frontend" not in _ids(report)


def test_a_drained_worker_makes_the_frontends_empty_list_info() -> None:
    r = Recorded()
    r.state.add_event(
        Event("dynamo_shutdown", "/logs/worker.log", "Received shutdown signal, shutting down", NOW - 10)
    )
    probe(r.health["worker"], outcome="refused", status="", status_code=0, since=NOW - 10)
    edit(r.health["frontend"], instance_ids=[], instances_since=NOW - 10, models=[])
    report = _report(r)
    assert report["status"] == "ok", _ids(report)
    assert _ids(report)["frontend_no_instances:frontend"] == "info"


# --- etcd: its shutdown of Dynamo is its symptom -------------------------------------------------


def _etcd(outcome: str, since: float, last_ok: float) -> CollectResult:
    return tcp(
        {
            "127.0.0.1:2379": {
                "role": "etcd",
                "outcome": outcome,
                "error": "connection refused" if outcome == "refused" else "",
                "since": since,
                "last_ok": last_ok,
            }
        }
    )


def test_dynamo_shutting_down_after_etcd_died_is_folded_under_etcd() -> None:
    """etcd died at -30 s (the probe saw it at -28 s); Dynamo lost its lease and shut down
    through its SIGTERM stages at -5 s: not a drain, etcd's symptom."""
    r = Recorded()
    r.put("tcp", _etcd("refused", since=NOW - 28, last_ok=NOW - 31))
    for endpoint in ("frontend", "worker"):
        r.state.add_event(
            Event("dynamo_shutdown", f"/logs/{endpoint}.log", "Runtime shutdown initiated", NOW - 5)
        )
        probe(r.health[endpoint], outcome="refused", status="", status_code=0, since=NOW - 4)
    r.put("process", processes())
    report = _report(r)
    top = report["findings"][0]
    assert top["id"] == "dependency_unreachable:etcd" and top["severity"] == "critical"
    assert top["since"] == pytest.approx(NOW - 28, abs=0.01)
    assert {"endpoint_refused:frontend", "endpoint_refused:worker", "no_dynamo_process:process"} <= set(
        top["explains"]
    )
    assert not [f for f in report["findings"] if f["rule"] == "dynamo_stopped_after_drain"]
    assert "for 28s" in top["summary"]


def test_a_drain_before_the_dependency_failed_stays_a_drain() -> None:
    r = Recorded()
    r.put("tcp", _etcd("refused", since=NOW - 2, last_ok=NOW - 3))
    r.state.add_event(Event("dynamo_shutdown", "/logs/worker.log", "Received shutdown signal", NOW - 10))
    probe(r.health["worker"], outcome="refused", status="", status_code=0, since=NOW - 9)
    assert "dynamo_stopped_after_drain:worker" in _ids(_report(r))


def test_an_unhealthy_etcd_says_so() -> None:
    r = Recorded()
    r.put(
        "tcp",
        tcp(
            {
                "e:2379": {
                    "role": "etcd",
                    "outcome": "unhealthy",
                    "error": "etcd /health: health false (HTTP 503)",
                    "status": 503,
                    "since": NOW - 40,
                }
            }
        ),
    )
    finding = next(f for f in _report(r)["findings"] if f["rule"] == "dependency_unreachable")
    assert "answers but reports itself unhealthy for 40s: etcd /health: health false" in finding["summary"]


# --- two workers in one pod: graded by the capacity lost -----------------------------------------


def _two_workers(r: Recorded) -> None:
    second = EndpointFacts(
        "worker",
        "http://127.0.0.1:9091",
        probes={"health": ProbeFact(outcome="ok", status="ready", status_code=200, since=NOW - 600)},
        first_ok_at=NOW - 3000,
        endpoints={"generate": "ready"},
    )
    r.health = {"frontend": r.health["frontend"], "worker-0": r.health["worker"], "worker-1": second}
    r.health["worker-0"].url = "http://127.0.0.1:9090"
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_requests_total", i * 25, model="tiny", status="success", error_type=""),
            sample(
                "dynamo_frontend_requests_total",
                0 if i < 55 else 1,
                model="tiny",
                status="error",
                error_type="internal",
            ),
            sample("dynamo_frontend_time_to_first_token_seconds_count", i * 25, model="tiny"),
        ],
    )


def test_one_stopped_worker_of_two_is_a_warning_that_says_what_is_left() -> None:
    r = Recorded()
    _two_workers(r)
    probe(r.health["worker-0"], outcome="timeout", status="", status_code=0, since=NOW - 20)
    r.put(
        "process",
        processes(
            {
                "pid": 9,
                "process": "dynamo.mocker",
                "state": "T",
                "state_since": NOW - 21,
                "listen_ports": [9090],
            },
            {"pid": 10, "process": "dynamo.mocker", "state": "S", "listen_ports": [9091]},
        ),
    )
    report = _report(r)
    assert report["status"] == "warning", _ids(report)
    top = report["findings"][0]
    assert top["id"] == "process_stalled:dynamo.mocker/9" and top["severity"] == "warning"
    assert "1 of 2 workers in this pod still answer (worker-1)" in top["summary"]
    assert "about 50% of its capacity is lost" in top["summary"]
    assert "of requests in the last minute were served" in top["summary"]
    assert _ids(report)["endpoint_timeout:worker-0"] == "warning"


def test_the_last_worker_of_two_lost_is_critical() -> None:
    r = Recorded()
    _two_workers(r)
    for endpoint in ("worker-0", "worker-1"):
        probe(r.health[endpoint], outcome="refused", status="", status_code=0, since=NOW - 20)
    r.put("process", processes({"pid": 11, "process": "dynamo.frontend", "state": "S"}))
    report = _report(r)
    assert {_ids(report)["endpoint_refused:worker-0"], _ids(report)["endpoint_refused:worker-1"]} == {
        "critical"
    }
    assert not any("still answer" in f["summary"] for f in report["findings"])


def test_stale_instances_with_requests_still_served_are_partial() -> None:
    r = Recorded()
    _two_workers(r)
    probe(r.health["worker-0"], outcome="refused", status="", status_code=0, since=NOW - 20)
    edit(r.health["frontend"], instance_ids=["1", "2"])
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample(
                "dynamo_frontend_failures_total",
                max(0, i - 56),  # still failing at the latest scrape: a present fault, not a past one
                **{"class": "Unavailable", "reason": "backend.unavailable"},
            ),
            sample("dynamo_frontend_requests_total", i * 25, model="tiny", status="success", error_type=""),
        ],
    )
    stale = next(f for f in _report(r)["findings"] if f["rule"] == "frontend_stale_instances")
    assert stale["severity"] == "warning"
    assert "lists 2 worker instance(s) of which some do not serve" in stale["summary"]


# --- slow start: a registered worker whose engine is not up yet ------------------------------------


def _slow_start(r: Recorded, worker_uptime: float) -> None:
    r.health["worker"].uptime_seconds = worker_uptime
    r.config.startup_grace = 60
    # A request waits from -12 s on; the frontend has never produced a first token.
    r.series(
        "dynamo_metrics",
        lambda i: [
            sample("dynamo_frontend_inflight_requests", 1 if i >= 57 else 0, model="tiny"),
            sample("dynamo_frontend_time_to_first_token_seconds_count", 0, model="tiny"),
        ],
    )


def test_a_request_waiting_on_a_starting_engine_is_starting_not_hung() -> None:
    r = Recorded()
    _slow_start(r, worker_uptime=14)
    report = _report(r)
    assert report["status"] == "ok", _ids(report)
    starting = next(f for f in report["findings"] if f["id"] == "dynamo_starting:engine")
    assert "1 request(s) wait for its first token" in starting["summary"]
    assert "engine_hung:engine" not in _ids(report)


def test_past_the_grace_the_same_wait_is_a_hung_engine() -> None:
    r = Recorded()
    _slow_start(r, worker_uptime=75)
    assert _ids(_report(r)).get("engine_hung:engine") == "critical"


# --- CLOSE_WAIT of a stopped worker: unread probes, not a leak -----------------------------------------


def _close_wait(r: Recorded, state: str) -> None:
    r.put("tcp", tcp(close_wait={"worker_system": 132}, service_ports={"9090": "worker_system"}))
    r.put(
        "process",
        processes(
            {"pid": 9, "process": "dynamo.mocker", "state": state, "state_since": NOW - 40, "close_wait": 4}
        ),
    )


def test_close_wait_on_a_stopped_workers_port_is_not_a_leak() -> None:
    r = Recorded()
    _close_wait(r, "T")
    probe(r.health["worker"], outcome="timeout", status="", status_code=0, since=NOW - 40)
    assert "close_wait_leak:worker_system" not in _ids(_report(r))


def test_close_wait_on_a_running_workers_port_is_a_leak() -> None:
    r = Recorded()
    _close_wait(r, "S")
    assert "close_wait_leak:worker_system" in _ids(_report(r))


# --- registration lost, seen without log_files ------------------------------------------------------


def _registration(r: Recorded, listed: list[str], unlisted_for: float) -> None:
    # worker_id c101f084d7c34887 (hex, worker /metrics) is instance 13907661577643051143 (frontend /health)
    r.put(
        "dynamo_metrics",
        CollectResult(
            facts=MetricsFacts({"worker": ScrapeFact("x", up=True, worker_ids=["c101f084d7c34887"])}, NOW)
        ),
    )
    edit(r.health["frontend"], instance_ids=listed, instances_since=NOW - unlisted_for - 5)
    probe(r.health["worker"], since=NOW - unlisted_for)


def test_a_ready_worker_the_frontend_does_not_list_lost_its_registration() -> None:
    r = Recorded()
    _registration(r, listed=[], unlisted_for=12)
    report = _report(r)
    top = report["findings"][0]
    assert top["id"] == "worker_registration_lost:discovery" and top["severity"] == "critical"
    assert "worker answers ready, but the frontend has not listed its instance for 12s" in top["summary"]
    assert "frontend_no_instances:frontend" in top["explains"]
    assert any("13907661577643051143" in e.get("note", "") for e in top["evidence"])


@pytest.mark.parametrize(
    ("listed", "unlisted_for"), [(["13907661577643051143"], 30), ([], 9)], ids=["listed", "not-yet"]
)
def test_a_listed_or_just_started_worker_is_not_lost(listed: list[str], unlisted_for: float) -> None:
    r = Recorded()
    _registration(r, listed=listed, unlisted_for=unlisted_for)
    assert "worker_registration_lost:discovery" not in _ids(_report(r))


# --- the demo's own process is no Dynamo worker --------------------------------------------------------


def test_the_sidecars_own_process_is_not_named_as_the_worker() -> None:
    r = Recorded()
    probe(r.health["worker"], outcome="refused", status="", status_code=0, since=NOW - 20)
    r.put(
        "process",
        processes(
            {"pid": os.getpid(), "process": "python3", "state": "S", "own": True, "listen_ports": [8000]}
        ),
    )
    refused = next(f for f in _report(r)["findings"] if f["rule"] == "endpoint_refused")
    assert f"pid {os.getpid()}" not in " ".join(refused["actions"])
    assert refused["actions"][0].startswith("No Dynamo process of this role is visible")


# --- etcd's health, as a real etcd answers it ---------------------------------------------------


@pytest.mark.skipif(etcd_binary() is None, reason=ETCD_MISSING)
async def test_an_etcd_endpoint_is_probed_at_its_health(tmp_path) -> None:
    """ETCD_ENDPOINTS=http://host:2379 (no path): etcd answers GET / with 404, which made
    every etcd-backed pod critical from its first second. /health is 200 {"health":"true"};
    with a NOSPACE alarm it is 503 {"health":"false"}; a dead etcd refuses."""
    etcd = Etcd(tmp_path, quota_bytes=65536)
    etcd.start()
    collector = TcpCollector(1, 10, service_ports={}, probe_targets=[parse_probe_target("etcd=" + etcd.url)])
    try:
        healthy = (await collector.collect()).facts.probes[f"127.0.0.1:{etcd.client_port}"]
        assert (healthy.outcome, healthy.status) == ("ok", 200)
        etcd.fill()
        alarmed = (await collector.collect()).facts.probes[f"127.0.0.1:{etcd.client_port}"]
        assert (alarmed.outcome, alarmed.status) == ("unhealthy", 503)
        assert "health false" in alarmed.error and alarmed.last_ok == healthy.since
        etcd.kill()
        dead = (await collector.collect()).facts.probes[f"127.0.0.1:{etcd.client_port}"]
        assert dead.outcome == "refused" and dead.since > alarmed.since and dead.last_ok == healthy.since
    finally:
        etcd.kill()


def test_a_drain_beside_an_unreachable_nats_stays_a_drain() -> None:
    """Only etcd's loss ends Dynamo's process (its lease); NATS_SERVER may even be unused."""
    r = Recorded()
    r.put("tcp", tcp({"nats:4222": {"role": "nats", "outcome": "refused", "since": NOW - 600}}))
    r.state.add_event(Event("dynamo_shutdown", "/logs/worker.log", "Received shutdown signal", NOW - 10))
    probe(r.health["worker"], outcome="refused", status="", status_code=0, since=NOW - 9)
    ids = _ids(_report(r))
    assert "dynamo_stopped_after_drain:worker" in ids and "endpoint_refused:worker" not in ids
