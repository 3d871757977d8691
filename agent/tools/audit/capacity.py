"""Capacity risk from the running sidecar's history: queue depth, in flight, KV-cache usage
and TTFT p99 over the history window, each fitted with a straight line and extrapolated to
"time to saturation / SLO breach at the current growth". The fit is always shown; a risk is
claimed only from enough history, a fit that explains the points (r^2), and growth that is
more than noise over the span."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from agent.core.signals import DynamoNames
from agent.core.state import histogram_quantile
from agent.tools.audit.checks import CAPACITY

NAMES = DynamoNames()
QUEUE = NAMES.queued
INFLIGHT = NAMES.inflight
KV_USAGE = ("vllm:kv_cache_usage_perc", "sglang:token_usage")
TTFT_BUCKETS = NAMES.latency_histograms()["ttft"] + "_bucket"
DURATION_BUCKETS = NAMES.latency_histograms()["request_duration"] + "_bucket"
HISTORY_NAMES = [QUEUE, INFLIGHT, *KV_USAGE, TTFT_BUCKETS, DURATION_BUCKETS]
MIN_R2 = 0.5


@dataclass
class Fit:
    points: int
    span_seconds: float
    slope_per_second: float
    intercept: float  # value at the last point's time
    r2: float
    first: float
    last: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "span_seconds": round(self.span_seconds, 1),
            "slope_per_minute": round(self.slope_per_second * 60, 6),
            "value_now_fitted": round(self.intercept, 6),
            "r2": round(self.r2, 3),
            "first": round(self.first, 6),
            "last": round(self.last, 6),
        }


def fit_line(points: list[tuple[float, float]]) -> Fit | None:
    """Least squares over (t, v); None for fewer than 3 points or no time spread."""
    if len(points) < 3:
        return None
    ts = [t for t, _ in points]
    vs = [v for _, v in points]
    n = len(points)
    mean_t, mean_v = sum(ts) / n, sum(vs) / n
    var_t = sum((t - mean_t) ** 2 for t in ts)
    if var_t <= 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t
    total = sum((v - mean_v) ** 2 for v in vs)
    residual = sum((v - (mean_v + slope * (t - mean_t))) ** 2 for t, v in points)
    r2 = 1.0 - residual / total if total > 0 else 0.0
    now = ts[-1]
    return Fit(n, ts[-1] - ts[0], slope, mean_v + slope * (now - mean_t), r2, vs[0], vs[-1])


def summed(series: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """One value per scrape: the series of one name summed at each timestamp (a scrape's
    samples share the time the sidecar stored them)."""
    totals: dict[float, float] = {}
    for entry in series:
        for t, v in entry.get("points") or []:
            if isinstance(v, int | float) and math.isfinite(v):
                totals[float(t)] = totals.get(float(t), 0.0) + float(v)
    return sorted(totals.items())


def maxed(series: list[dict[str, Any]]) -> list[tuple[float, float]]:
    highest: dict[float, float] = {}
    for entry in series:
        for t, v in entry.get("points") or []:
            if isinstance(v, int | float) and math.isfinite(v):
                highest[float(t)] = max(highest.get(float(t), -math.inf), float(v))
    return sorted(highest.items())


def quantile_over_slices(
    series: list[dict[str, Any]], quantile: float, slices: int = 8
) -> list[tuple[float, float]]:
    """The quantile of each slice of the window, from the cumulative buckets' increase."""
    by_time: dict[float, dict[float, float]] = {}
    for entry in series:
        bound = float((entry.get("labels") or {}).get("le", "nan"))
        if math.isnan(bound):
            continue
        for t, v in entry.get("points") or []:
            cell = by_time.setdefault(float(t), {})
            cell[bound] = cell.get(bound, 0.0) + float(v)
    times = sorted(by_time)
    if len(times) < slices + 1:
        return []
    step = (len(times) - 1) / slices
    out = []
    for index in range(slices):
        start, end = times[round(index * step)], times[round((index + 1) * step)]
        before, after = by_time[start], by_time[end]
        buckets = [(bound, after[bound] - before.get(bound, 0.0)) for bound in sorted(after)]
        if any(count < 0 for _, count in buckets):
            continue  # a restart inside the slice
        value = histogram_quantile(quantile, buckets)
        if value is not None:
            out.append((end, value))
    return out


def max_observed(series: list[dict[str, Any]]) -> float | None:
    """The upper bound of the highest bucket any request reached over the window."""
    highest: float | None = None
    grouped: dict[float, list[float]] = {}
    for entry in series:
        bound = float((entry.get("labels") or {}).get("le", "nan"))
        values = [v for _, v in entry.get("points") or []]
        if values and not math.isnan(bound):
            grouped.setdefault(bound, []).append(values[-1] - values[0])
    bounds = sorted(grouped)
    if bounds and sum(grouped[bounds[0]]) > 0:
        highest = bounds[0]
    for lower, upper in itertools.pairwise(bounds):
        if sum(grouped[upper]) > sum(grouped[lower]):
            # Past the last finite bound only a lower bound is known: that bound.
            highest = lower if math.isinf(upper) else upper
    return highest


def _eta(fit: Fit, limit: float) -> float | None:
    if fit.slope_per_second <= 0:
        return None
    return max(0.0, (limit - fit.intercept) / fit.slope_per_second)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _finding(
    rule: str, severity: str, summary: str, evidence: list[tuple[str, Any]], actions: list[str]
) -> dict[str, Any]:
    return {
        "id": rule,
        "rule": rule,
        "category": CAPACITY,
        "severity": severity,
        "summary": summary,
        "subject": "pod",
        "since": 0,
        "evidence": [{"signal": s, "value": v} for s, v in evidence],
        "actions": actions,
        "explained_by": [],
        "explains": [],
    }


def forecast(
    history: dict[str, Any],
    min_history: float,
    queue_limit: float = 100.0,
    inflight_limit: float | None = None,
    slo_ttft_p99: float | None = None,
    window: float | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(findings, fits shown per signal); `window` fits only the most recent seconds."""
    series = history.get("series") or {}
    if window:
        since = float(history.get("now") or 0) - window
        series = {
            name: [
                {**entry, "points": [p for p in entry.get("points") or [] if p[0] >= since]}
                for entry in entries
            ]
            for name, entries in series.items()
        }
    signals: dict[str, list[tuple[float, float]]] = {
        "queue_depth": summed(series.get(QUEUE) or []),
        "inflight": summed(series.get(INFLIGHT) or []),
        "kv_cache_usage": maxed([e for name in KV_USAGE for e in series.get(name) or []]),
        "ttft_p99_seconds": quantile_over_slices(series.get(TTFT_BUCKETS) or [], 0.99),
    }
    fits: dict[str, Any] = {}
    findings: list[dict[str, Any]] = []
    spans = [pts[-1][0] - pts[0][0] for pts in signals.values() if len(pts) >= 2]
    span = max(spans, default=0.0)
    if span < min_history:
        findings.append(
            _finding(
                "capacity_history_short",
                "info",
                f"capacity: {span:.0f}s of history, {min_history:.0f}s needed before a trend is claimed; no capacity risk is claimed",
                [("history span", round(span, 1)), ("needed", min_history)],
                ["run the audit again later, or lower --min-history if the pod's load is steady"],
            )
        )
        return findings, {name: None for name in signals}
    for name, points in signals.items():
        fit = fit_line(points)
        fits[name] = None if fit is None else fit.to_dict()
        if fit is None or fit.r2 < MIN_R2:
            continue
        grows = fit.slope_per_second * fit.span_seconds
        evidence = [(f"fit of {name} over {fit.span_seconds:.0f}s", fit.to_dict())]
        if name == "queue_depth" and grows >= 2:
            eta = _eta(fit, queue_limit)
            findings.append(
                _finding(
                    "capacity_queue_growing",
                    "critical" if eta is not None and eta < 600 else "warning",
                    f"capacity: the frontend's queue grew by {fit.slope_per_second * 60:.1f} requests/min over {_duration(fit.span_seconds)} "
                    f"(now ~{fit.intercept:.0f}, r^2 {fit.r2:.2f}): requests arrive faster than the workers serve them"
                    + (
                        f"; at this rate it reaches {queue_limit:g} queued in {_duration(eta)}"
                        if eta is not None
                        else ""
                    ),
                    evidence,
                    [
                        "add workers (or replicas) for this model",
                        "lower the load or admission (max concurrency) until then",
                    ],
                )
            )
        elif name == "inflight" and grows >= 2 and inflight_limit:
            eta = _eta(fit, inflight_limit)
            if eta is not None:
                findings.append(
                    _finding(
                        "capacity_inflight_growing",
                        "warning",
                        f"capacity: requests in flight grow by {fit.slope_per_second * 60:.1f}/min (now ~{fit.intercept:.0f}, r^2 {fit.r2:.2f}); "
                        f"at this rate they reach {inflight_limit:g} in {_duration(eta)}",
                        evidence,
                        ["add workers before the limit is reached"],
                    )
                )
        elif name == "kv_cache_usage" and grows >= 0.05:
            eta = _eta(fit, 1.0)
            if eta is not None:
                findings.append(
                    _finding(
                        "capacity_kv_cache_filling",
                        "critical" if eta < 600 else "warning" if eta < 3600 else "info",
                        f"capacity: KV-cache usage grows by {fit.slope_per_second * 6000:.1f} points/min (now {fit.intercept * 100:.0f}%, "
                        f"r^2 {fit.r2:.2f}); at this rate it is full in {_duration(eta)}, and requests then queue or are preempted",
                        evidence,
                        ["add workers or KV capacity (more GPUs per worker, a smaller max context)"],
                    )
                )
        elif name == "ttft_p99_seconds" and slo_ttft_p99 and grows >= 0.1 * max(fit.first, 1e-3):
            eta = _eta(fit, slo_ttft_p99)
            if eta is not None:
                findings.append(
                    _finding(
                        "capacity_ttft_slo_risk",
                        "warning" if eta > 0 else "critical",
                        f"capacity: TTFT p99 grows by {fit.slope_per_second * 60 * 1000:.0f} ms/min (now ~{fit.intercept * 1000:.0f} ms, "
                        f"r^2 {fit.r2:.2f}); at this rate it passes the {slo_ttft_p99 * 1000:.0f} ms target in {_duration(eta)}",
                        evidence,
                        ["add workers before the target is passed", "check the queue: TTFT grows with it"],
                    )
                )
    return findings, fits
