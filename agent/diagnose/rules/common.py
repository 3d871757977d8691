"""What the rules of several categories share: constants, evidence builders and predicates
over the context."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from agent.core import metrics as m
from agent.core.facts import DependencyProbe, EndpointFacts, GpuFact, Outcome, ProbeFact
from agent.core.signals import (
    engine_start,
    produced_since,
)
from agent.core.state import State
from agent.diagnose.context import Context
from agent.diagnose.model import (
    Evidence,
    Hit,
    duration_text,
    who,
)

OUTCOME = m.ENDPOINT_PROBE_OUTCOME.name


# A worker fault explains what the frontend and the canary see of it.
WORKER_EFFECTS = (
    "frontend_no_instances:*",
    "frontend_stale_instances:*",
    "canary_failing:*",
    "request_failures:*",
    "engine_hung:*",
    "slo_breach:*",
    "latency_regression:*",
)


def _health_path(ctx: Context, kind: str) -> str:
    return ctx.config.frontend_health_path if kind == "frontend" else ctx.config.worker_health_path


def _health_url(ctx: Context, view: EndpointFacts) -> str:
    return view.url + _health_path(ctx, view.kind)


def _probe_evidence(endpoint: str, probe: str, view: ProbeFact, url: str) -> list[Evidence]:
    evidence = [
        Evidence(
            m.ENDPOINT_PROBE_OUTCOME.selector(endpoint=endpoint, probe=probe),
            view.outcome,
            timestamp=view.since,
            note=f"GET {url}",
        ),
        Evidence(
            m.ENDPOINT_HTTP_STATUS_CODE.selector(endpoint=endpoint, probe=probe),
            view.status_code,
        ),
    ]
    if view.error:
        evidence.append(Evidence("probe error", view.error))
    if view.body_excerpt:
        evidence.append(Evidence("response body", view.body_excerpt[:300]))
    return evidence


def _probe_hits(ctx: Context, outcomes: set[Outcome], probe: str = "health") -> list[Hit]:
    hits = []
    for endpoint, view in ctx.health.endpoints.items():
        probe_view = view.probe(probe)
        if probe_view.outcome not in outcomes:
            continue
        url = _health_url(ctx, view)
        since = probe_view.since or ctx.now
        kind = view.kind
        hits.append(
            Hit(
                endpoint,
                {"who": who(kind, endpoint), "url": url, "for": duration_text(ctx.now - since)},
                _probe_evidence(endpoint, probe, probe_view, url),
                since,
                role=kind,
            )
        )
    return hits


def _served_share(ctx: Context, window: float = 60.0) -> float | None:
    """Share of the frontend's requests served (status success) over the last minute."""
    total = ctx.state.increase(ctx.names.requests_total, window, ctx.now)
    if not total:
        return None
    served = ctx.state.increase(ctx.names.requests_total, window, ctx.now, status="success") or 0.0
    return min(1.0, served / total)


def _grade_by_capacity(ctx: Context, hit: Hit, lost: set[str]) -> Hit:
    """A worker fault in a pod whose other workers still answer: say what is left, and grade
    it warning (part of the capacity is lost) instead of critical (nothing serves). Other
    hits get an empty `capacity`."""
    hit.values.setdefault("capacity", "")
    workers = sorted(e for e, v in ctx.health.endpoints.items() if v.kind == "worker")
    serving = [e for e in workers if e not in lost and ctx.probe(e).outcome == Outcome.OK]
    if hit.role != "worker" or len(workers) < 2 or not serving:
        return hit
    share = _served_share(ctx)
    served = ""
    if share is not None:  # 99.6% is not "100%" while some fail
        served = f", {share:.1%}" if 0.99 < share < 1 else f", {share:.0%}"
        served += " of requests in the last minute were served"
    hit.values["capacity"] = (
        f"; {len(serving)} of {len(workers)} workers in this pod still answer ({', '.join(serving)}){served}:"
        f" about {1 - len(serving) / len(workers):.0%} of its capacity is lost"
    )
    hit.severity = "warning"
    hit.evidence.append(
        Evidence(
            "workers of this pod that still answer", serving, note=f"of {len(workers)}: {', '.join(workers)}"
        )
    )
    if share is not None:
        hit.evidence.append(
            Evidence(
                f'increase({ctx.names.requests_total}{{status="success"}}[60s]) / increase({ctx.names.requests_total}[60s])',
                round(share, 3),
                unit="ratio",
            )
        )
    return hit


def _in_startup(ctx: Context, endpoint: str) -> bool:
    return ctx.starting(endpoint)


DRAIN_SLACK = 1.0  # a drain sign this long after the refusal still explains it (log lag)


def _after_drain(ctx: Context, endpoint: str, since: float) -> float:
    """When a drain was seen that the refusal at `since` followed (0 when none). Only signs
    seen by then count: Dynamo logs its shutdown lines again as the process exits, after the
    port closed, and such a late line must not turn the drain into a crash. A shutdown that
    followed a lost dependency (etcd) is that dependency's consequence, not a drain."""
    drained = ctx.drain_seen(endpoint, until=since + DRAIN_SLACK)
    if not drained or _dependency_lost_before(ctx, drained) is not None:
        return 0.0
    return drained


def _dependency_lost_before(ctx: Context, moment: float) -> DependencyProbe | None:
    """etcd failing now, its failure possibly begun before `moment` (its last good answer
    came earlier: a probe sees a loss up to one interval late), unless the sidecar itself is
    draining (then the pod is terminating whatever etcd does). Dynamo shuts itself down a
    lease TTL after etcd is gone, through the same stages as on SIGTERM: that shutdown is
    etcd's symptom, not a requested drain. (NATS or other probed dependencies do not end
    Dynamo's process: a drain beside them stays a drain.)"""
    drain = ctx.components.drain
    if ctx.draining or (drain is not None and drain.started_at <= moment):
        return None
    failing = [
        p for p in ctx.tcp.probes.values() if p.role == "etcd" and p.outcome != "ok" and p.last_ok <= moment
    ]
    return min(failing, key=lambda p: p.since) if failing else None


def _engine_starting(ctx: Context) -> float:
    """When the worker whose engine holds work without producing anything started, while it
    is within the start-up grace and has produced no token since (0 otherwise); see
    agent.core.signals.engine_start. Without a visible worker (a frontend pod), the sidecar's own
    start-up grace stands in."""
    if ctx.signals.stalled_inflight <= 0:
        return 0.0
    uptimes = [
        view.uptime_seconds
        for view in ctx.health.endpoints.values()
        if view.kind == "worker" and view.uptime_seconds is not None
    ]
    if uptimes:
        return engine_start(ctx.state, ctx.names, uptimes, ctx.config.startup_grace, ctx.now)
    if ctx.in_startup_grace and not produced_since(ctx.state, ctx.names, ctx.state.started, ctx.now):
        return ctx.state.started
    return 0.0


def _window(ctx: Context) -> float:
    """ "Now" for rules over rates: the signal window (default five minutes)."""
    return min(ctx.window, ctx.config.signal_window)


def _steps(state: State, name: str, since: float, until: float, **labels: str) -> dict[float, float]:
    """The matching counters' summed increase per collection step, by the step's end time
    (every series of one collector run shares its timestamp)."""
    out: dict[float, float] = {}
    for _, ring in state.series_matching(name, **labels):
        for (_, before), (at, after) in pairwise(ring.points(since=since, until=until)):
            out[at] = out.get(at, 0.0) + (after - before if after >= before else after)
    return out


def _first_step(
    ctx: Context, steps: dict[float, float], over: Callable[[float, float, float], bool]
) -> float:
    """The end of the first step in the window where `over(at, increase, seconds)` holds;
    now when none does (the lifecycle then dates the finding by its first evaluation)."""
    times = sorted(steps)
    for before, at in pairwise(times):
        if over(at, steps[at], at - before):
            return at
    return ctx.now


def _rise_times(steps: dict[float, float]) -> tuple[float, float]:
    """(first, last) step end with an increase; 0s when none."""
    moved = sorted(at for at, n in steps.items() if n > 0)
    return (moved[0], moved[-1]) if moved else (0.0, 0.0)


def _gpus(ctx: Context) -> dict[str, GpuFact]:
    return ctx.gpus.gpus
