"""End-to-end canaries through the frontend while the pod is idle.

Dynamo's own canary runs inside a worker and only logs. This one goes through the frontend,
per model, only while no real traffic flows (the frontend's request counter unchanged,
minus our own canaries, and nothing in flight for `canary_wait`), and its results are
metrics, spans and findings. Each request carries `x-request-id: canary-<uuid>` and a W3C
`traceparent`, so it can be found in Dynamo's JSONL logs and traces.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.core import metrics as m
from agent.core import redact
from agent.core.aio import wait_event
from agent.core.components import RunState
from agent.core.facts import HealthFacts, MetricsFacts
from agent.core.log import get as get_logger
from agent.core.samples import Sample
from agent.core.signals import DynamoNames, SignalsCache, engine_start
from agent.core.state import State
from exporters.otlp import traceparent_for

if TYPE_CHECKING:
    from agent.config import Config
    from exporters.otlp import Telemetry

log = get_logger("dynamo_sidecar.canary")

OK, TIMEOUT, HTTP_ERROR, BAD_RESPONSE, CONNECT_ERROR = (
    "ok",
    "timeout",
    "http_error",
    "bad_response",
    "connect_error",
)
OUTCOMES = (OK, TIMEOUT, HTTP_ERROR, BAD_RESPONSE, CONNECT_ERROR)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PROMPT = "Say OK."
STUCK_PERIODS = 3  # in-flight work that makes no progress this many idle periods is stuck
# A model that appeared up to this long before another left the list replaced it (a rolling
# rename keeps both listed while old and new workers overlap).
RENAME_OVERLAP = 300.0
MAX_BODY = 64 * 1024


@dataclass
class CanaryResult:
    model: str
    outcome: str
    request_id: str
    traceparent: str
    latency: float
    status: int = 0
    ttft: float | None = None
    body_excerpt: str = ""
    error: str = ""
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "outcome": self.outcome,
            "request_id": self.request_id,
            "traceparent": self.traceparent,
            "latency_seconds": round(self.latency, 6),
            "status": self.status,
            "ttft_seconds": None if self.ttft is None else round(self.ttft, 6),
            "body_excerpt": self.body_excerpt,
            "error": self.error,
            "timestamp": round(self.timestamp, 3),
        }


@dataclass
class ModelState:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    consecutive_failures: int = 0
    last_success: float = 0.0
    last_ttft: float | None = None
    failing_since: float = 0.0
    last: CanaryResult | None = None

    def observe(self, result: CanaryResult, failures_to_fail: int, starting: bool = False) -> None:
        """Count a result. A failure while the engine is still starting (`starting`) is
        counted by outcome but does not make the model failing: Dynamo is not ready yet."""
        self.counts[result.outcome] += 1
        index = next(
            (i for i, bound in enumerate(LATENCY_BUCKETS) if result.latency <= bound), len(LATENCY_BUCKETS)
        )
        self.buckets[index] += 1
        self.latency_sum += result.latency
        self.last = result
        if result.ttft is not None:
            self.last_ttft = result.ttft
        if result.outcome == OK:
            self.consecutive_failures = 0
            self.last_success = result.timestamp
            self.failing_since = 0.0
        elif not starting:
            self.consecutive_failures += 1
            if self.consecutive_failures >= failures_to_fail and not self.failing_since:
                self.failing_since = result.timestamp

    @property
    def failing(self) -> bool:
        return bool(self.failing_since)


def _parse_sse(text: str) -> tuple[bool, str]:
    """(produced a token or a clean finish, error) for an SSE body."""
    saw_choice = False
    for block in text.split("\n\n"):
        line = block.strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return saw_choice, "" if saw_choice else "stream ended without a choice"
        try:
            chunk = json.loads(payload)
        except ValueError:
            return False, "stream chunk is not JSON"
        if isinstance(chunk, dict) and "error" in chunk:
            # Dynamo reports a failure after HTTP 200 in-band (worker died mid-stream).
            return False, f"in-band error: {json.dumps(chunk['error'])[:200]}"
        if isinstance(chunk, dict) and chunk.get("choices"):
            saw_choice = True
    return False, "stream ended without [DONE]"


async def send_canary(
    session: aiohttp.ClientSession,
    frontend_url: str,
    model: str,
    timeout: float,
    endpoint: str,
    stream: bool,
    telemetry: Telemetry | None = None,
) -> CanaryResult:
    request_id = f"canary-{uuid.uuid4()}"
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    body: dict[str, Any] = {"model": model, "max_tokens": 1, "stream": stream}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    url = frontend_url + path
    span = None
    if telemetry is not None and telemetry.enabled:
        span = telemetry.tracer.start_span(
            "POST " + path,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": redact.text(url),
                "gen_ai.request.model": model,
                "dynamo.canary": True,
                "dynamo.x_request_id": request_id,
            },
        )
    traceparent = traceparent_for(span)
    headers = {"x-request-id": request_id, "traceparent": traceparent, "Content-Type": "application/json"}
    started = time.monotonic()
    result = CanaryResult(model, OK, request_id, traceparent, 0.0)
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, json=body, headers=headers) as response:
                result.status = response.status
                if stream and response.status == 200:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.content.iter_any():
                        if result.ttft is None:
                            result.ttft = time.monotonic() - started
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > MAX_BODY:
                            break
                    text = b"".join(chunks).decode("utf-8", "replace")
                    result.body_excerpt = text[:300]
                    produced, error = _parse_sse(text)
                    if not produced:
                        result.outcome, result.error = BAD_RESPONSE, error
                else:
                    raw = await response.content.read(MAX_BODY)
                    text = raw.decode("utf-8", "replace")
                    result.body_excerpt = text[:300]
                    if response.status >= 300:
                        result.outcome, result.error = HTTP_ERROR, f"HTTP {response.status}"
                    else:
                        try:
                            parsed = json.loads(text)
                            if not isinstance(parsed, dict) or not parsed.get("choices"):
                                raise ValueError("no choices")
                        except ValueError as exc:
                            result.outcome, result.error = BAD_RESPONSE, f"unusable body: {exc}"
    except TimeoutError:
        result.outcome, result.error = TIMEOUT, f"no complete answer within {timeout:g}s"
    except aiohttp.ClientConnectionError as exc:
        # A dropped connection after the status line is a bad response, not a connect error.
        result.outcome = BAD_RESPONSE if result.status else CONNECT_ERROR
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    except aiohttp.ClientError as exc:
        result.outcome, result.error = BAD_RESPONSE, f"{type(exc).__name__}: {exc}"[:300]
    result.latency = time.monotonic() - started
    if span is not None:
        span.set_attribute("dynamo.canary.outcome", result.outcome)
        if result.status:
            span.set_attribute("http.response.status_code", result.status)
        if result.ttft is not None:
            span.set_attribute("dynamo.canary.ttft_seconds", result.ttft)
        if result.outcome != OK:
            span.set_status(Status(StatusCode.ERROR, redact.text(result.error or result.outcome)))
        span.end()
    return result


@dataclass(frozen=True)
class CanaryConfig:
    """The canary's section of the Config."""

    enabled: bool
    wait: float
    timeout: float
    failures: int
    endpoint: str
    stream: bool
    max_models: int
    frontend_url: str
    startup_grace: float
    dynamo_interval: float

    @classmethod
    def from_config(cls, config: Config) -> CanaryConfig:
        return cls(
            enabled=config.canary_enabled and config.watch_frontend,
            wait=config.canary_wait,
            timeout=config.canary_timeout,
            failures=config.canary_failures,
            endpoint=config.canary_endpoint,
            stream=config.canary_stream,
            max_models=config.canary_max_models,
            frontend_url=config.frontend_url,
            startup_grace=config.startup_grace,
            dynamo_interval=config.dynamo_interval,
        )


class RequestCount:
    """A request counter's new requests beyond the sidecar's own canaries. The sidecar counts
    a canary as sent before the frontend counts it: a scrape in between sees one request
    fewer, and the next scrape's count is not new traffic. Only a count above the highest
    seen is; a counter that falls was restarted, and counting starts again from it."""

    def __init__(self) -> None:
        self.highest: float | None = None  # the highest count beyond our own seen
        self.raw = 0.0  # the counter itself then

    def new_requests(self, total: float, own: float) -> bool:
        """Whether `total` (the counter now, `own` of it ours) holds requests not seen before."""
        real, restarted = total - own, total < self.raw
        self.raw = total
        if self.highest is None or restarted:
            self.highest = real
            return False
        if real > self.highest:
            self.highest = real
            return True
        return False


class Canary:
    def __init__(
        self,
        config: CanaryConfig,
        state: State,
        names: DynamoNames,
        signals: SignalsCache,
        run: RunState,
        telemetry: Telemetry,
        on_round: Callable[[], None] = lambda: None,
    ) -> None:
        """`signals`: the shared cache the render keeps current (in-flight work); `run`:
        whether the sidecar drains; `on_round`: called after each round (a re-render)."""
        self.config = config
        self.state = state
        self.names = names
        self.signals = signals
        self.run = run
        self.telemetry = telemetry
        self.on_round = on_round
        self.enabled = config.enabled
        self.wait = config.wait
        self.timeout = config.timeout
        self.failures_to_fail = config.failures
        self.endpoint = config.endpoint
        self.stream = config.stream
        self.models: dict[str, ModelState] = {}
        self.sent_through_frontend = 0  # our own requests, as the frontend's counter sees them
        self.inflight = 0
        # The last round: (start, end, requests), wall time; end is inf while it runs. A
        # metrics scrape overlapping it may show its requests in flight after they ended.
        self._round_window = (0.0, 0.0, 0)
        self.rounds = 0
        self.starting_failures = 0  # failed while the engine was still starting: not counted
        self._requests = RequestCount()  # the frontend's, beyond our own canaries
        self._seen_generation = -1
        self._last_progress: float | None = None
        self._stuck_since = 0.0
        self.last_activity = time.time()
        # When real traffic was last seen (last_activity also moves with each canary round).
        self.last_traffic = self.last_activity
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    # --- idle detection ------------------------------------------------------------------
    def _traffic_total(self) -> float | None:
        frontend = self.state.facts(MetricsFacts).endpoints.get("frontend")
        if frontend is None or not frontend.up:
            return None
        return self.state.latest_total(self.names.requests_total) or 0.0

    def _progress(self) -> float:
        """Tokens being produced: TTFT and inter-token observations counted so far."""
        histograms = self.names.latency_histograms()
        state = self.state
        return sum(state.latest_total(histograms[key] + "_count") or 0.0 for key in ("ttft", "itl"))

    def observe_traffic(self, now: float) -> None:
        """Called every check: move `last_activity` when real traffic is seen.

        Traffic is a new request counted by the frontend (our own canaries subtracted), or
        requests in flight that are producing tokens. In-flight requests that produce
        nothing for STUCK_PERIODS idle periods are what a hung worker looks like; they no
        longer hold the canary back, since that is when a canary matters most.
        """
        if self.state.generation == self._seen_generation:
            return  # nothing collected since the last look
        self._seen_generation = self.state.generation
        total = self._traffic_total()
        if total is None:
            return
        progress = self._progress()
        # The signals as of the scrape the totals above are from (the render or evaluation
        # that would refresh them may not have run since): _own_inflight judges that scrape.
        self.signals.refresh()
        inflight = (self.signals.current.frontend_inflight or 0) - self.own_inflight()
        if self._requests.new_requests(total, self.sent_through_frontend):
            self.last_activity = self.last_traffic = now
        if inflight > 0:
            self.last_traffic = now  # work in flight, stuck or not, is not a quiet pod
            if self._last_progress is None or progress != self._last_progress or not self._stuck_since:
                self._stuck_since = now
            if progress != self._last_progress or now - self._stuck_since < STUCK_PERIODS * self.wait:
                self.last_activity = now
        else:
            self._stuck_since = 0.0
        self._last_progress = progress

    def own_inflight(self) -> int:
        """The canaries the last metrics scrape may show in flight: those in flight now, or
        the whole last round when the scrape overlapped it (the round may have ended since)."""
        own = self.inflight
        scraped = self.state.latest_time.get("dynamo_metrics")
        status = self.state.collectors.get("dynamo_metrics")
        start, end, count = self._round_window
        if (
            scraped is not None
            and status is not None
            and scraped <= end
            and scraped + status.last_duration >= start
        ):
            own = max(own, count)
        return own

    def idle_for(self, now: float) -> float:
        return now - self.last_activity

    def models_to_probe(self) -> list[str]:
        """The models /v1/models lists, and those it listed within the history window: a hung
        or dead worker's model leaves the list in ~12-16 s, which is when a canary matters.
        A model that left while another appeared (a rename, or a rolling update to a new
        name) was replaced, not lost: it is not probed."""
        view = self.state.facts(HealthFacts).endpoints.get("frontend")
        if view is None:
            return []
        listed = list(view.models or [])
        since = view.models_listed_since
        unlisted = []
        for model in sorted(name for name in view.models_seen if name not in listed):
            last_listed = view.models_seen[model]
            replaced = any(
                since.get(other, 0.0) > since.get(model, 0.0)
                and since.get(other, 0.0) >= last_listed - RENAME_OVERLAP
                for other in listed
            )
            if not replaced:
                unlisted.append(model)
        return listed + unlisted

    def paused(self, now: float) -> str:
        """Why no canary may run now ("" when one may): a drain, or Dynamo still starting
        (the frontend has not answered yet, within the start-up grace), are states in which
        a failing canary says nothing about a fault. The grace follows Dynamo's readiness,
        not the sidecar's uptime: a sidecar restarted next to a serving Dynamo probes at once."""
        if self.run.draining:
            return "draining"
        if self._dynamo_starting(now):
            return "dynamo_starting"
        return ""

    def _engine_starting(self, now: float) -> bool:
        """A watched worker is young and its engine has produced no token since it started
        (agent.core.signals.engine_start): it registered before it serves."""
        health = self.state.facts(HealthFacts).endpoints.values()
        uptimes = [v.uptime_seconds for v in health if v.kind == "worker" and v.uptime_seconds is not None]
        grace = self.config.startup_grace
        return bool(engine_start(self.state, self.names, uptimes, grace, now))

    def _dynamo_starting(self, now: float) -> bool:
        if now - self.state.started >= self.config.startup_grace:
            return False
        view = self.state.facts(HealthFacts).endpoints.get("frontend")
        return view is None or not view.first_ok_at

    # --- running -------------------------------------------------------------------------
    async def run_round(
        self, frontend_url: str | None = None, models: list[str] | None = None
    ) -> list[CanaryResult]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None), cookie_jar=aiohttp.DummyCookieJar()
            )  # cookies: none to keep, and the jar costs ~0.1 ms a request (collectors/http.py)
        frontend_url = frontend_url or self.config.frontend_url
        if models is None:
            models = self.models_to_probe()
            self._forget_unserved(models)
            # Bounded load under model churn: at most canary_max_models a round, taking the
            # least recently probed first so every model gets its turn.
            limit = self.config.max_models
            if len(models) > limit:
                models = sorted(models, key=self._last_probed)[:limit]
        self.rounds += 1
        results = []
        started = time.time()
        self._round_window = (started, math.inf, len(models))
        for model in models:
            self.inflight += 1
            # Counted as sent before it is: the frontend may count it before it answers, and
            # a scrape in between must not take it for traffic.
            self.sent_through_frontend += 1
            try:
                result = await send_canary(
                    self._session,
                    frontend_url,
                    model,
                    self.timeout,
                    self.endpoint,
                    self.stream,
                    self.telemetry,
                )
            finally:
                self.inflight -= 1
            if not result.status:
                self.sent_through_frontend -= 1  # it never reached the frontend's counter
            state = self.models.setdefault(model, ModelState())
            was_failing = state.failing
            starting = result.outcome != OK and self._engine_starting(time.time())
            if starting:
                self.starting_failures += 1
            state.observe(result, self.failures_to_fail, starting=starting)
            if state.failing and not was_failing:
                log.warning("canary failing", failures=state.consecutive_failures, **result.to_dict())
            elif was_failing and not state.failing:
                log.info("canary recovered", model=model)
            results.append(result)
        self._round_window = (started, time.time(), len(models))
        self.on_round()
        return results

    async def _loop(self) -> None:
        # Wakes when the next canary could be due, not on a fixed tick: an idle sidecar's
        # wake-ups cost CPU in every pod. Traffic in between is not missed: the counters
        # are compared on waking, and traffic seen then postpones the canary a full period.
        floor = min(1.0, max(0.1, self.config.dynamo_interval))
        delay = floor
        while not self._stop.is_set():
            await wait_event(self._stop, delay)
            now = time.time()
            self.observe_traffic(now)
            delay = max(floor, self.until_due(now))
            if self.paused(now) or self.idle_for(now) < self.wait:
                continue
            if not self.models_to_probe():
                delay = max(floor, self.config.dynamo_interval)  # the list's own pace
                continue
            try:
                await self.run_round()
            except Exception as exc:  # the canary must never take the sidecar down
                log.error("canary round failed", error=repr(exc))
            # The next canary waits a full idle period again: one per model per period.
            self.last_activity = time.time()
            delay = self.wait

    def until_due(self, now: float) -> float:
        """Seconds until a canary may next run, if nothing else happens meanwhile (0 while
        draining: the drain's end is not a time)."""
        if self.run.draining:
            return 0.0
        due = self.last_activity + self.wait - now
        if self._dynamo_starting(now):
            # Look again at the collection's pace: the canary is due once Dynamo answers.
            config = self.config
            grace_ends = self.state.started + config.startup_grace
            return max(due, min(config.dynamo_interval, grace_ends - now))
        return due

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._loop(), name="canary")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _last_probed(self, model: str) -> float:
        state = self.models.get(model)
        return state.last.timestamp if state is not None and state.last is not None else 0.0

    # --- reporting -----------------------------------------------------------------------
    def _forget_unserved(self, models: list[str] | None = None) -> None:
        """Forget the models the frontend no longer serves: unlisted for the whole history
        window (gone, not failing), or replaced by another name (a rename). Done on every
        read, not only in a canary round: no round runs while traffic flows, and /canaryz
        stayed 503 on a renamed model's name until one did."""
        if models is None:
            if self.state.facts(HealthFacts).endpoints.get("frontend") is None:
                return  # no listing read yet (or the frontend is not watched): nothing to judge by
            models = self.models_to_probe()
        for gone in set(self.models) - set(models):
            self.models.pop(gone, None)

    @property
    def failing_models(self) -> list[str]:
        self._forget_unserved()
        return [model for model, state in self.models.items() if state.failing]

    def samples(self) -> list[Sample]:
        self._forget_unserved()
        out: list[Sample] = []
        for model, state in self.models.items():
            for outcome, count in state.counts.items():
                out.append(m.CANARY_REQUESTS_TOTAL.sample(count, model=model, outcome=outcome))
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), state.buckets, strict=True):
                cumulative += count
                out.append(
                    m.CANARY_LATENCY_SECONDS.bucket(
                        cumulative,
                        model=model,
                        le="+Inf" if bound == float("inf") else f"{bound:g}",
                    )
                )
            out.append(m.CANARY_LATENCY_SECONDS.sum(state.latency_sum, model=model))
            out.append(m.CANARY_LATENCY_SECONDS.count(cumulative, model=model))
            out.append(m.CANARY_CONSECUTIVE_FAILURES.sample(state.consecutive_failures, model=model))
            out.append(m.CANARY_FAILING.sample(1 if state.failing else 0, model=model))
            if state.last_success:
                out.append(
                    m.CANARY_LAST_SUCCESS_TIMESTAMP_SECONDS.sample(
                        state.last_success,
                        model=model,
                    )
                )
            if state.last_ttft is not None:
                out.append(m.CANARY_TTFT_SECONDS.sample(state.last_ttft, model=model))
        return out

    def status(self) -> dict[str, Any]:
        self._forget_unserved()
        return {
            "enabled": self.enabled,
            "wait_seconds": self.wait,
            "timeout_seconds": self.timeout,
            "idle_seconds": round(self.idle_for(time.time()), 3),
            "paused": self.paused(time.time()) or None,
            "rounds": self.rounds,
            "failures_while_starting": self.starting_failures,
            "models": {
                model: {
                    "failing": state.failing,
                    "consecutive_failures": state.consecutive_failures,
                    "last_success": state.last_success or None,
                    "last": state.last.to_dict() if state.last else None,
                }
                for model, state in self.models.items()
            },
        }
