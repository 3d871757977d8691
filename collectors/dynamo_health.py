"""Dynamo's health endpoints: the frontend's /health and /live and each worker's system
status server /health and /live.

Parses the bodies (status, instances, dyn:// endpoints, per-endpoint readiness, uptime),
classifies every failure (refused: not listening; timeout: hung; 5xx; malformed body) and
records transitions and worker restarts as events with timestamps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from agent.core import metrics as m
from agent.core.facts import EndpointFacts, HealthFacts, PortAnswer, ProbeFact
from agent.core.samples import CollectResult, Event
from agent.core.textsafe import clean, parse_json
from collectors.base import Collector, CollectorSpec, Hooks, register
from collectors.http import HttpResult, fetch, new_session

if TYPE_CHECKING:
    from agent.config import Config

HEALTHY_STATUSES = {"healthy", "ready", "live"}
MAX_TEXT = 64  # status strings, endpoint names, instance ids: Dynamo's are a few words
MAX_MODEL_ID = 128
MAX_MODELS = 64  # models read from one /v1/models answer
MAX_MODELS_SEEN = 64  # models remembered across answers (the most recently listed kept)


@dataclass(frozen=True)
class Target:
    endpoint: str  # label value: "frontend", "worker", "worker-1", ...
    kind: str  # "frontend" | "worker"
    base_url: str
    health_path: str
    live_path: str


@dataclass
class ProbeView:
    outcome: str = ""
    status: str = ""
    status_code: int = 0
    since: float = 0.0  # when the current (outcome, status) began
    transitions: int = 0
    probes: dict[str, int] = field(default_factory=dict)


def _parse_body(result: HttpResult) -> tuple[dict[str, Any] | None, str]:
    body, error = parse_json(result.body, text_limit=MAX_TEXT)
    if error:
        return None, error
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        return None, "body has no string 'status'"
    return body, ""


def _looks_like(kind: str, body: dict[str, Any]) -> bool:
    """A worker's system /health has per-endpoint readiness or an uptime; a frontend's lists
    instances. Another Dynamo server on a searched port must not pass for this one."""
    if kind == "worker":
        return isinstance(body.get("endpoints"), dict) or isinstance(body.get("uptime"), dict)
    return isinstance(body.get("instances"), list)


MODELS_PATH = "/v1/models"


def parse_models(result: HttpResult) -> list[str] | None:
    """Model ids from an OpenAI-style /v1/models body; None when unusable."""
    if not result.ok:
        return None
    body, error = parse_json(result.body, text_limit=MAX_MODEL_ID)
    data = body.get("data") if isinstance(body, dict) else None
    if error or not isinstance(data, list):
        return None
    return [
        clean(item["id"], MAX_MODEL_ID)
        for item in data[:MAX_MODELS]
        if isinstance(item, dict) and "id" in item
    ]


def judged(facts: dict[str, EndpointFacts]) -> Hashable:
    """What the rules judge of one health run, its timings and clocks left out (response
    times, uptime, body excerpts, when a model was last listed): equal for two runs that
    found the same. Restarts and instance changes are events, counted apart."""
    return tuple(
        (
            name,
            view.kind,
            view.url,
            tuple(
                (probe, fact.outcome, fact.status, fact.status_code, fact.error, fact.transitions)
                for probe, fact in view.probes.items()
            ),
            view.first_ok_at,
            None if view.answers_on is None else (view.answers_on.port, view.answers_on.status),
            None if view.instance_ids is None else tuple(view.instance_ids),
            None if view.registered is None else tuple(view.registered),
            view.stage,
            None if view.models is None else tuple(view.models),
            view.models_error,
            tuple(sorted(view.models_seen)),
            None if view.endpoints is None else tuple(sorted(view.endpoints.items())),
        )
        for name, view in sorted(facts.items())
    )


def classify(result: HttpResult) -> tuple[str, str, dict[str, Any] | None, str]:
    """(outcome, status string, parsed body, error) for one probe."""
    if result.failure:
        outcome = result.failure if result.failure in {"refused", "timeout"} else "error"
        return outcome, "", None, result.error
    body, error = _parse_body(result)
    if body is None:
        if result.status >= 500:
            return "http_error", "", None, f"HTTP {result.status}"
        return "malformed", "", None, error
    status = body["status"]
    if 200 <= result.status < 300 and status in HEALTHY_STATUSES:
        return "ok", status, body, ""
    return "unhealthy", status, body, f"HTTP {result.status} status={status}"


class DynamoHealthCollector(Collector):
    name = "dynamo_health"
    slows_when_quiet = False  # a hung or refusing endpoint is seen at the configured pace

    def __init__(
        self,
        targets: list[Target],
        interval: float,
        timeout: float,
        http_timeout: float,
        max_bytes: int = 1 << 20,
        listening_ports: Callable[[str], list[int]] | None = None,
        models_memory: float = 900.0,
    ) -> None:
        super().__init__(interval, timeout)
        self.targets = targets
        self.http_timeout = http_timeout
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None
        self._views: dict[tuple[str, str], ProbeView] = {}
        self._uptime: dict[str, float] = {}
        self._restarts: dict[str, int] = {}
        self._first_ok: dict[str, float] = {}
        # (count, since): when the frontend's instance count last changed.
        self._instances: dict[str, tuple[int, float]] = {}
        # model -> last time /v1/models listed it; forgotten after `models_memory`.
        self._models_seen: dict[str, dict[str, float]] = {}
        # model -> when its current (or, once unlisted, its last) listing began.
        self._models_since: dict[str, dict[str, float]] = {}
        self._models_listed: dict[str, set[str]] = {}  # listed at the last successful read
        self.models_memory = models_memory
        # kind -> ports the Dynamo processes of that kind listen on (process collector).
        self.listening_ports = listening_ports
        self._port_search: dict[str, tuple[float, PortAnswer | None]] = {}

    async def collect(self) -> CollectResult:
        if self._session is None:
            self._session = new_session([t.base_url for t in self.targets])
        result = CollectResult()
        jobs = []
        for target in self.targets:
            for probe, path in (("health", target.health_path), ("live", target.live_path)):
                jobs.append(
                    (
                        target,
                        probe,
                        fetch(self._session, target.base_url + path, self.http_timeout, self.max_bytes),
                    )
                )
        # The frontend's model list: /health can list instances that no longer serve
        # (stale registration after a worker death) while /v1/models is already empty.
        frontends = [t for t in self.targets if t.kind == "frontend"]
        models_jobs = [
            fetch(self._session, t.base_url + MODELS_PATH, self.http_timeout, self.max_bytes)
            for t in frontends
        ]
        responses, models_responses = await asyncio.gather(
            asyncio.gather(*(job[2] for job in jobs)), asyncio.gather(*models_jobs)
        )
        facts: dict[str, EndpointFacts] = {}
        now = time.time()
        for (target, probe, _), response in zip(jobs, responses, strict=True):
            view = facts.get(target.endpoint)
            if view is None:
                view = facts[target.endpoint] = EndpointFacts(target.kind, target.base_url)
            view.probes[probe], body = self._record(result, target, probe, response, now)
            if body is not None and probe == "health":
                self._read_body(result, target, body, view, now)
        for target, response in zip(frontends, models_responses, strict=True):
            view = facts[target.endpoint]
            models = parse_models(response)
            seen = self._models_seen.setdefault(target.endpoint, {})
            since = self._models_since.setdefault(target.endpoint, {})
            if models is None:
                view.models_error = response.error or f"HTTP {response.status}: {response.excerpt(120)}"
            else:
                view.models = models
                result.add(m.FRONTEND_MODELS.sample(len(models), endpoint=target.endpoint))
                listed_before = self._models_listed.get(target.endpoint, set())
                for model in models:
                    seen[model] = now
                    if model not in listed_before:
                        since[model] = now  # listed anew (first time, or after a gap)
                self._models_listed[target.endpoint] = set(models)
            for model, last in list(seen.items()):
                if now - last > self.models_memory:
                    del seen[model]
            if len(seen) > MAX_MODELS_SEEN:  # model churn: keep the most recently listed
                for model in sorted(seen, key=seen.__getitem__)[: len(seen) - MAX_MODELS_SEEN]:
                    del seen[model]
            for model in [name for name in since if name not in seen]:
                del since[model]
            view.models_seen = dict(seen)
            view.models_listed_since = dict(since)
        for target in self.targets:
            view = facts[target.endpoint]
            if any(p.outcome == "ok" for p in view.probes.values()):
                self._first_ok.setdefault(target.endpoint, now)
            view.first_ok_at = self._first_ok.get(target.endpoint, 0.0)
            if view.probe().outcome == "refused":
                view.answers_on = await self._search_port(target, now)
        result.facts = HealthFacts(facts, now)
        result.digest = judged(facts)
        return result

    PORT_SEARCH_EVERY = 30.0

    async def _search_port(self, target: Target, now: float) -> PortAnswer | None:
        """The configured port refuses: does this kind's Dynamo process answer its health path
        on another port it listens on? (A wrong DYN_SYSTEM_PORT / worker_system_urls.)"""
        if self.listening_ports is None or self._session is None:
            return None
        last = self._port_search.get(target.endpoint)
        if last is not None and now - last[0] < self.PORT_SEARCH_EVERY:
            return last[1]
        parts = urlsplit(target.base_url)
        # Another configured endpoint's port is that endpoint, not this one on a wrong port
        # (two workers in one pod: the live one must not be taken for the dead one).
        configured = {urlsplit(t.base_url).port for t in self.targets}
        ports = [p for p in self.listening_ports(target.kind) if p not in configured][:8]
        if not ports:
            return None  # nothing known yet (the process collector has not run): ask again
        urls = [urlunsplit((parts.scheme, f"{parts.hostname}:{port}", "", "", "")) for port in ports]
        # Other listeners (ZMQ, the request plane) may not speak HTTP: ask them all at once.
        responses = await asyncio.gather(
            *(fetch(self._session, url + target.health_path, self.http_timeout, 64 * 1024) for url in urls)
        )
        found: PortAnswer | None = None
        for port, url, response in zip(ports, urls, responses, strict=True):
            body, _ = _parse_body(response) if not response.failure else (None, "")
            if body is not None and _looks_like(target.kind, body):
                found = PortAnswer(port, url, str(body["status"])[:64], now)
                break
        self._port_search[target.endpoint] = (now, found)
        return found

    def _record(
        self, result: CollectResult, target: Target, probe: str, response: HttpResult, now: float
    ) -> tuple[ProbeFact, dict[str, Any] | None]:
        outcome, status, body, error = classify(response)
        key = (target.endpoint, probe)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = ProbeView(since=now)
        if view.outcome and (view.outcome, view.status) != (outcome, status):
            view.transitions += 1
            result.events.append(
                Event(
                    kind="health_transition",
                    source=f"{target.endpoint}/{probe}",
                    message=f"{target.kind} {target.endpoint} {probe}: {view.status or view.outcome} -> {status or outcome}",
                    timestamp=now,
                    attributes={
                        "endpoint": target.endpoint,
                        "probe": probe,
                        "from_outcome": view.outcome,
                        "from_status": view.status,
                        "to_outcome": outcome,
                        "to_status": status,
                        "status_code": response.status,
                    },
                )
            )
            view.since = now
        view.outcome, view.status, view.status_code = outcome, status, response.status
        view.probes[outcome] = view.probes.get(outcome, 0) + 1

        labels = {"endpoint": target.endpoint, "probe": probe}
        result.add(m.ENDPOINT_UP.sample(1 if outcome == "ok" else 0, **labels))
        result.add(m.ENDPOINT_HTTP_STATUS_CODE.sample(response.status, **labels))
        result.add(m.ENDPOINT_RESPONSE_SECONDS.sample(response.elapsed, **labels))
        result.add(m.ENDPOINT_PROBE_OUTCOME.sample(1, outcome=outcome, **labels))
        if status:
            result.add(m.ENDPOINT_STATUS.sample(1, status=status, **labels))
        for seen_outcome, count in view.probes.items():
            result.add(m.ENDPOINT_PROBES_TOTAL.sample(count, outcome=seen_outcome, **labels))
        result.add(m.ENDPOINT_TRANSITIONS_TOTAL.sample(view.transitions, **labels))
        fact = ProbeFact(
            outcome=outcome,
            status=status,
            status_code=response.status,
            elapsed_seconds=round(response.elapsed, 6),
            error=error,
            since=view.since,
            transitions=view.transitions,
            body_excerpt=response.excerpt(400),
        )
        return fact, body

    def _read_body(
        self, result: CollectResult, target: Target, body: dict[str, Any], view: EndpointFacts, now: float
    ) -> None:
        if target.kind == "frontend":
            instances = body.get("instances")
            endpoints = body.get("endpoints")
            if isinstance(instances, list):
                # One worker registers one instance per endpoint (generate, clear_kv_blocks...):
                # count distinct instance ids, not list entries.
                ids = {str(i.get("instance_id"))[:64] for i in instances[:256] if isinstance(i, dict)}
                count = len(ids)
                result.add(m.FRONTEND_INSTANCES.sample(count, endpoint=target.endpoint))
                known = self._instances.get(target.endpoint)
                if known is None or known[0] != count:
                    if known is not None:
                        result.events.append(
                            Event(
                                kind="instances_changed",
                                source=target.endpoint,
                                message=f"frontend {target.endpoint} worker instances: {known[0]} -> {count}",
                                timestamp=now,
                                attributes={"endpoint": target.endpoint, "from": known[0], "to": count},
                            )
                        )
                    self._instances[target.endpoint] = (count, now)
                view.instance_ids = sorted(ids)
                view.instances_since = self._instances[target.endpoint][1]
            if isinstance(endpoints, list):
                result.add(m.FRONTEND_REGISTERED_ENDPOINTS.sample(len(endpoints), endpoint=target.endpoint))
                view.registered = [str(e) for e in endpoints[:64]]
            if "stage" in body:
                view.stage = str(body["stage"])[:64]
            return
        endpoints = body.get("endpoints")
        if isinstance(endpoints, dict):
            view.endpoints = {str(k): str(v) for k, v in list(endpoints.items())[:64]}
            for name, status in view.endpoints.items():
                result.add(
                    m.WORKER_ENDPOINT_READY.sample(
                        1 if status == "ready" else 0,
                        endpoint=target.endpoint,
                        dynamo_endpoint=name,
                    )
                )
        uptime_raw = body.get("uptime")
        if isinstance(uptime_raw, dict):
            try:
                uptime = float(uptime_raw.get("secs", 0)) + float(uptime_raw.get("nanos", 0)) / 1e9
            except (TypeError, ValueError, OverflowError):
                return  # an uptime that is not a number is ignored, the rest of the body kept
            previous = self._uptime.get(target.endpoint)
            if previous is not None and uptime + 1.0 < previous:
                self._restarts[target.endpoint] = self._restarts.get(target.endpoint, 0) + 1
                result.events.append(
                    Event(
                        kind="worker_restart",
                        source=target.endpoint,
                        message=f"worker {target.endpoint} restarted: uptime went from {previous:.1f}s to {uptime:.1f}s",
                        timestamp=now,
                        attributes={
                            "endpoint": target.endpoint,
                            "previous_uptime": previous,
                            "uptime": uptime,
                        },
                    )
                )
            self._uptime[target.endpoint] = uptime
            view.uptime_seconds = uptime
            result.add(m.WORKER_UPTIME_SECONDS.sample(uptime, endpoint=target.endpoint))
        result.add(
            m.WORKER_RESTARTS_TOTAL.sample(self._restarts.get(target.endpoint, 0), endpoint=target.endpoint)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def targets_from(config: Config) -> list[Target]:
    """The Dynamo endpoints the config watches: the frontend, and each worker's system port."""
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


def _build(config: Config, hooks: Hooks) -> DynamoHealthCollector:
    return DynamoHealthCollector(
        targets_from(config),
        config.dynamo_interval,
        config.collector_timeout,
        config.http_timeout,
        listening_ports=hooks.listening_ports,
        models_memory=config.history_window,
    )


register(
    CollectorSpec(
        "dynamo_health",
        order=30,
        enabled=lambda config: bool(targets_from(config)),
        interval=lambda config: config.dynamo_interval,
        factory=_build,
    )
)
