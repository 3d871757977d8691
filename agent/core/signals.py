"""Windowed signals derived from Dynamo's own series in the state history: request and
error rates, in-flight and queue depth, latency quantiles. Canary idle detection, drain and
diagnose read these; the exporter publishes them as dynamo_sidecar_dynamo_* gauges."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.core import metrics as m
from agent.core.handles import Handle
from agent.core.samples import Sample
from agent.core.state import State, histogram_quantile

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class DynamoNames:
    """Dynamo series names. The frontend family prefix follows DYN_METRICS_PREFIX."""

    frontend_prefix: str = "dynamo_frontend"

    @property
    def requests_total(self) -> str:
        return f"{self.frontend_prefix}_requests_total"

    @property
    def inflight(self) -> str:
        return f"{self.frontend_prefix}_inflight_requests"

    @property
    def queued(self) -> str:
        return f"{self.frontend_prefix}_queued_requests"

    @property
    def failures_total(self) -> str:
        return f"{self.frontend_prefix}_failures_total"

    @property
    def migration_limit(self) -> str:
        return f"{self.frontend_prefix}_model_migration_limit"

    @property
    def migrations_total(self) -> str:
        return f"{self.frontend_prefix}_model_migration_total"

    @property
    def frontend_rejections_total(self) -> str:
        return f"{self.frontend_prefix}_model_rejection_total"

    def latency_histograms(self) -> dict[str, str]:
        return {
            "ttft": f"{self.frontend_prefix}_time_to_first_token_seconds",
            "itl": f"{self.frontend_prefix}_inter_token_latency_seconds",
            "request_duration": f"{self.frontend_prefix}_request_duration_seconds",
            "queue": "dynamo_request_plane_queue_seconds",
            "worker_request_duration": "dynamo_component_request_duration_seconds",
        }

    worker_inflight: str = "dynamo_component_inflight_requests"
    worker_requests_total: str = "dynamo_component_requests_total"
    worker_rejections_total: str = "dynamo_rejection_request_total"
    worker_request_bytes_total: str = "dynamo_component_request_bytes_total"
    worker_response_bytes_total: str = "dynamo_component_response_bytes_total"
    worker_uptime: str = "dynamo_component_uptime_seconds"

    def progress_counters(self) -> list[str]:
        """Counters that move whenever an engine produces output: first tokens, further
        tokens, finished requests (frontend and worker views)."""
        histograms = self.latency_histograms()
        return [
            histograms["ttft"] + "_count",
            histograms["itl"] + "_count",
            histograms["request_duration"] + "_count",
            histograms["worker_request_duration"] + "_count",
        ]

    def history_names(self) -> set[str]:
        """Dynamo series worth keeping history for (the rest are only passed through)."""
        names = {
            self.requests_total,
            self.inflight,
            self.queued,
            self.migrations_total,
            self.frontend_rejections_total,
            self.worker_inflight,
            self.worker_requests_total,
            self.worker_rejections_total,
            self.worker_request_bytes_total,
            self.worker_response_bytes_total,
            self.worker_uptime,
            f"{self.frontend_prefix}_failures_total",
            "dynamo_request_queue",
            f"{self.frontend_prefix}_model_migration_limit",
            *self.progress_counters(),
            # Capacity trends for `audit --live` (engine gauges; absent series cost nothing).
            "vllm:kv_cache_usage_perc",
            "vllm:num_requests_waiting",
            "sglang:token_usage",
            # The queue rules judge an engine's waiting requests against its running ones.
            "vllm:num_requests_running",
            "sglang:num_queue_reqs",
            "sglang:num_running_reqs",
        }
        for histogram in self.latency_histograms().values():
            names.add(histogram + "_bucket")
        return names


@dataclass
class Signals:
    window: float
    request_rate: float | None = None
    error_rate: float | None = None
    frontend_inflight: float | None = None
    worker_inflight: float | None = None
    queued: float | None = None
    rejection_rate: float | None = None
    migration_rate: float | None = None
    request_bytes_rate: float | None = None
    response_bytes_rate: float | None = None
    latency: dict[tuple[str, float], float] = field(default_factory=dict)
    retransmit_ratio: float | None = None
    # Hung engine: seconds work has been in flight with no output progress, and how much.
    stalled_seconds: float = 0.0
    stalled_since: float = 0.0
    stalled_inflight: float = 0.0

    def inflight_total(self) -> float | None:
        """Work in flight in the pod (`work_in_flight`)."""
        return work_in_flight(self.frontend_inflight, self.worker_inflight, self.queued)

    def to_samples(self) -> list[Sample]:
        window = f"{int(self.window)}s"
        out: list[Sample] = []

        def put(handle: Handle, value: float | None, **labels: object) -> None:
            if value is not None:
                out.append(handle.sample_of(value, labels))

        put(m.DYNAMO_REQUEST_RATE, self.request_rate, window=window)
        put(m.DYNAMO_ERROR_RATE, self.error_rate, window=window)
        put(m.DYNAMO_INFLIGHT_REQUESTS, self.frontend_inflight, source="frontend")
        put(m.DYNAMO_INFLIGHT_REQUESTS, self.worker_inflight, source="worker")
        put(m.DYNAMO_QUEUED_REQUESTS, self.queued)
        if self.frontend_inflight is not None or self.worker_inflight is not None:
            put(m.DYNAMO_STALLED_SECONDS, self.stalled_seconds)
        put(m.DYNAMO_REJECTION_RATE, self.rejection_rate, window=window)
        put(m.DYNAMO_MIGRATION_RATE, self.migration_rate, window=window)
        put(m.DYNAMO_BYTES_RATE, self.request_bytes_rate, direction="in", window=window)
        put(m.DYNAMO_BYTES_RATE, self.response_bytes_rate, direction="out", window=window)
        put(m.TCP_RETRANSMIT_RATIO, self.retransmit_ratio, window=window)
        for (signal, quantile), value in sorted(self.latency.items()):
            put(
                m.DYNAMO_LATENCY_SECONDS,
                value,
                signal=signal,
                percentile=f"p{round(quantile * 100)}",
                window=window,
            )
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "window_seconds": self.window,
            "request_rate": self.request_rate,
            "error_rate": self.error_rate,
            "frontend_inflight": self.frontend_inflight,
            "worker_inflight": self.worker_inflight,
            "queued": self.queued,
            "rejection_rate": self.rejection_rate,
            "migration_rate": self.migration_rate,
            "tcp_retransmit_ratio": self.retransmit_ratio,
            "latency_seconds": {f"{s}_p{int(q * 100)}": v for (s, q), v in sorted(self.latency.items())},
        }


def work_in_flight(frontend: float | None, worker: float | None, queued: float | None) -> float | None:
    """The one definition of the pod's work in flight (signals, the drain): a request is
    counted at the frontend and at the worker both, and queued is a part of in-flight, so it
    is the largest of the views read, not their sum; None when none can be read."""
    values = [value for value in (frontend, worker, queued) if value is not None]
    return max(values) if values else None


def inflight_now(state: State, names: DynamoNames) -> float | None:
    """`work_in_flight` from the latest of Dynamo's gauges in `state`."""
    return work_in_flight(
        _sum_latest(state, names.inflight),
        _sum_latest(state, names.worker_inflight),
        _sum_latest(state, names.queued),
    )


def _sum_latest(state: State, name: str, **labels: str) -> float | None:
    # Dynamo's gauges come from its metrics collector: not a walk over every collector's samples.
    found = state.find(name, "dynamo_metrics", **labels)
    return sum(s.value for s in found) if found else None


def _sum_rates(state: State, names: list[str], window: float, now: float) -> float | None:
    values = [state.rate(name, window, now) for name in names]
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _stall(state: State, names: DynamoNames, now: float) -> tuple[float, float, float]:
    """(seconds, since, in flight) that Dynamo has held work in flight without producing any
    output, judged from the history: every scrape of one collector run shares a timestamp, so
    the progress counters and in-flight gauges line up point by point."""
    progress: dict[float, float] = {}
    for name in names.progress_counters():
        for _, ring in state.series_matching(name):
            for at, value in ring.points(until=now):
                progress[at] = progress.get(at, 0.0) + value
    inflight: dict[float, float] = {}
    for name in (names.inflight, names.worker_inflight):
        per_name: dict[float, float] = {}
        for _, ring in state.series_matching(name):
            for at, value in ring.points(until=now):
                per_name[at] = per_name.get(at, 0.0) + value
        for at, value in per_name.items():
            inflight[at] = max(inflight.get(at, 0.0), value)  # one request counts at both
    times = sorted(inflight)
    if not times or inflight[times[-1]] <= 0:
        return 0.0, 0.0, 0.0
    # Walk back while work stays in flight and the progress total does not move.
    latest = progress.get(times[-1])
    since = times[-1]
    for at in reversed(times[:-1]):
        if inflight[at] <= 0 or progress.get(at) != latest:
            break
        since = at
    return times[-1] - since, since, inflight[times[-1]]


def produced_since(state: State, names: DynamoNames, moment: float, now: float) -> bool:
    """Whether the engine produced output since `moment`: first tokens or further tokens
    (the frontend's TTFT and ITL counts). A cancelled or failed request also ends and is
    counted as a finished request, so finished-request counts are used only where no token
    count is visible (a worker pod without the frontend)."""
    histograms = names.latency_histograms()
    tokens = [histograms["ttft"] + "_count", histograms["itl"] + "_count"]
    counters = (
        tokens
        if any(True for name in tokens for _ in state.series_matching(name))
        else names.progress_counters()
    )
    for name in counters:
        for _, ring in state.series_matching(name):
            points = ring.points(since=moment, until=now)
            if len(points) >= 2 and points[-1][1] != points[0][1]:
                return True
    return False


def engine_start(
    state: State, names: DynamoNames, worker_uptimes: list[float], grace: float, now: float
) -> float:
    """When the youngest worker started (`now` minus its uptime), while it is within `grace`
    of that and its engine has produced no token since; 0 otherwise. A worker can register
    and accept requests before its engine serves (an engine warming up, the mocker's
    --startup-time): requests waiting then are a slow start, not a hung engine, and a canary
    that times out then is not failing."""
    if not worker_uptimes:
        return 0.0
    started = now - min(worker_uptimes)
    if now - started >= grace or produced_since(state, names, max(started, state.started), now):
        return 0.0
    return started


def compute(state: State, names: DynamoNames, window: float, now: float | None = None) -> Signals:
    now = time.time() if now is None else now
    out = Signals(window=window)
    out.request_rate = state.rate(names.requests_total, window, now)
    if out.request_rate is not None:
        out.error_rate = state.rate(names.requests_total, window, now, status="error") or 0.0
    out.frontend_inflight = _sum_latest(state, names.inflight)
    out.worker_inflight = _sum_latest(state, names.worker_inflight)
    out.queued = _sum_latest(state, names.queued)
    out.rejection_rate = _sum_rates(
        state, [names.worker_rejections_total, names.frontend_rejections_total], window, now
    )
    out.migration_rate = state.rate(names.migrations_total, window, now)
    out.request_bytes_rate = state.rate(names.worker_request_bytes_total, window, now)
    out.response_bytes_rate = state.rate(names.worker_response_bytes_total, window, now)
    retrans = state.increase(m.TCP_KERNEL_TOTAL.name, window, now, counter="RetransSegs")
    sent = state.increase(m.TCP_KERNEL_TOTAL.name, window, now, counter="OutSegs")
    if retrans is not None and sent:
        out.retransmit_ratio = retrans / sent
    out.stalled_seconds, out.stalled_since, out.stalled_inflight = _stall(state, names, now)
    for signal, histogram in names.latency_histograms().items():
        buckets = state.window_buckets(histogram, window, now)  # once; three quantiles from it
        for quantile in QUANTILES:
            value = histogram_quantile(quantile, buckets)
            if value is not None:
                out.latency[(signal, quantile)] = value
    return out


class SignalsCache:
    """The derived signals, computed once per update of their inputs and shared: the
    exporter renders them, the canary reads in-flight work from them, and the collection
    cycle's findings evaluation reuses the ones the render computed (as of that moment)."""

    def __init__(self, state: State, names: DynamoNames, window: float) -> None:
        self.state = state
        self.names = names
        self.window = window
        self.current = Signals(window=window)
        self._inputs: tuple[float | None, float | None] = (None, None)
        self._unevaluated: tuple[Signals, float] | None = None  # computed since the last evaluation

    def refresh(self) -> bool:
        """Recompute if their inputs changed; True when they were. The signals read only
        Dynamo's and the TCP collector's series: other collectors' cycles change nothing."""
        inputs = (self.state.latest_time.get("dynamo_metrics"), self.state.latest_time.get("tcp"))
        if inputs == self._inputs:
            return False
        self._inputs = inputs
        now = time.time()
        self.current = compute(self.state, self.names, self.window, now)
        self._unevaluated = (self.current, now)
        return True

    def now(self) -> tuple[Signals, float]:
        """Signals computed afresh, with the time they are as of."""
        now = time.time()
        return compute(self.state, self.names, self.window, now), now

    def for_evaluation(self) -> tuple[Signals, float]:
        """The signals `refresh` computed since the last evaluation (the same result as
        computing them again at that moment, for half the cost), else fresh ones."""
        signals, self._unevaluated = self._unevaluated, None
        return signals if signals is not None else self.now()


# --- SLO targets ----------------------------------------------------------------------------

# objective -> unit. Targets come from config slo_ttft_p99 / slo_itl_p99 / slo_error_rate.
SLO_OBJECTIVES = {"ttft_p99": "seconds", "itl_p99": "seconds", "error_rate": "ratio"}
# Failures that are the client's doing, not the server's: a bad request, an unknown model,
# and "cancelled", a client that closed its stream or gave up (Dynamo 1.6.1 counts it as
# status="error", error_type="cancelled").
CLIENT_ERROR_TYPES = {
    "not_found",
    "invalid_request",
    "validation",
    "bad_request",
    "unsupported",
    "cancelled",
    "",
}


def bucket_text(value: float, buckets: list[tuple[float, float]], quantile: float = 0.99) -> str:
    """A quantile as the data supports it: '42 ms' when the bucket is narrow, else the bucket
    bounds ('<= 2 s', '1-2.2 s'); interpolation inside a 0-2 s bucket is not a measurement."""
    from agent.core.state import quantile_bucket

    bounds = quantile_bucket(quantile, buckets)

    def fmt(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:g} s"

    if bounds is None:
        return fmt(value)
    lower, upper = bounds
    if upper == float("inf"):
        return f"> {fmt(lower)}"
    if upper - lower <= 0.25 * upper:
        return fmt(value)
    if lower <= 0:
        return f"<= {fmt(upper)}"
    return f"{fmt(lower)}-{fmt(upper)}"


@dataclass
class SloObservation:
    value: float
    target: float
    count: float  # observations (requests) in the window
    text: str
    since: float


def slo_observations(
    state: State, names: DynamoNames, config: object, window: float, now: float
) -> dict[str, SloObservation]:
    """Each configured objective's value over the window: what slo_breach judges and what the
    sidecar exports as dynamo_sidecar_slo_observed, so pod view and fleet view agree."""
    out: dict[str, SloObservation] = {}
    histograms = names.latency_histograms()
    for objective, histogram in (("ttft_p99", histograms["ttft"]), ("itl_p99", histograms["itl"])):
        target = float(getattr(config, "slo_" + objective, 0.0) or 0.0)
        if target <= 0:
            continue
        buckets = state.window_buckets(histogram, window, now)
        from agent.core.state import histogram_quantile

        value = histogram_quantile(0.99, buckets)
        if value is None:
            continue
        out[objective] = SloObservation(
            value, target, buckets[-1][1], bucket_text(value, buckets), now - window
        )
    target = float(getattr(config, "slo_error_rate", 0.0) or 0.0)
    if target > 0:
        total = state.increase(names.requests_total, window, now)
        if total:
            failed = 0.0
            for labels, ring in state.series_matching(names.requests_total, status="error"):
                if dict(labels).get("error_type", "") in CLIENT_ERROR_TYPES:
                    continue
                from agent.core.state import counter_increase

                points = ring.points(since=now - window, until=now)
                if len(points) >= 2:
                    failed += counter_increase(points)
            ratio = failed / total
            out["error_rate"] = SloObservation(ratio, target, total, f"{ratio:.1%}", now - window)
    return out
