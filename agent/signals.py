"""Windowed signals derived from Dynamo's own series in the state history: request and
error rates, in-flight and queue depth, latency quantiles. Canary idle detection, drain and
diagnose read these; the exporter publishes them as dynamo_sidecar_dynamo_* gauges."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.samples import Sample, sample
from agent.state import State

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

    def inflight_total(self) -> float | None:
        """Work in flight in the pod: a request is counted at the frontend and at the worker
        both, so this is the larger of the two views, not their sum."""
        values = [v for v in (self.frontend_inflight, self.worker_inflight) if v is not None]
        return max(values) if values else None

    def to_samples(self) -> list[Sample]:
        window = f"{int(self.window)}s"
        out: list[Sample] = []

        def put(name: str, value: float | None, **labels: object) -> None:
            if value is not None:
                out.append(sample("dynamo_sidecar_" + name, value, **labels))

        put("dynamo_request_rate", self.request_rate, window=window)
        put("dynamo_error_rate", self.error_rate, window=window)
        put("dynamo_inflight_requests", self.frontend_inflight, source="frontend")
        put("dynamo_inflight_requests", self.worker_inflight, source="worker")
        put("dynamo_queued_requests", self.queued)
        put("dynamo_rejection_rate", self.rejection_rate, window=window)
        put("dynamo_migration_rate", self.migration_rate, window=window)
        put("dynamo_bytes_rate", self.request_bytes_rate, direction="in", window=window)
        put("dynamo_bytes_rate", self.response_bytes_rate, direction="out", window=window)
        put("tcp_retransmit_ratio", self.retransmit_ratio, window=window)
        for (signal, quantile), value in sorted(self.latency.items()):
            put(
                "dynamo_latency_seconds",
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


def _sum_latest(state: State, name: str, **labels: str) -> float | None:
    found = state.find(name, **labels)
    return sum(s.value for s in found) if found else None


def _sum_rates(state: State, names: list[str], window: float, now: float) -> float | None:
    values = [state.rate(name, window, now) for name in names]
    present = [v for v in values if v is not None]
    return sum(present) if present else None


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
    retrans = state.increase("dynamo_sidecar_tcp_kernel_total", window, now, counter="RetransSegs")
    sent = state.increase("dynamo_sidecar_tcp_kernel_total", window, now, counter="OutSegs")
    if retrans is not None and sent:
        out.retransmit_ratio = retrans / sent
    for signal, histogram in names.latency_histograms().items():
        for quantile in QUANTILES:
            value = state.window_quantile(histogram, quantile, window, now)
            if value is not None:
                out.latency[(signal, quantile)] = value
    return out
