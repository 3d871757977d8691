"""`dynamo-sidecar verify`: the fault drill.

Three phases, as Dynamo's own fault-tolerance tests run them: `standard` load, `overload`
(more clients; the fault command runs at its start) and `recovery` (the standard load again;
the recover command runs at its start). The client measures every request; the sidecar's
`/diagnose` is polled throughout so the report shows what the pod said next to what the
client saw; Dynamo's own histograms are read at each phase boundary so the client's
percentiles can be checked against the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent.core.signals import DynamoNames
from agent.core.textsafe import parse_json
from agent.tools.verify.load import LoadGenerator, LoadSpec, RequestRecord, connection_probe

PHASES = ("standard", "overload", "recovery")
QUANTILES = (0.5, 0.9, 0.99)
SLO_KEYS = (
    *tuple(f"{kind}_p{int(q * 100)}" for kind in ("ttft", "itl", "latency") for q in QUANTILES),
    "error_rate",
)
REPORT_VERSION = 1
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


class UsageError(Exception):
    """A bad argument: one line, exit 64 (EX_USAGE)."""


class Unreachable(UsageError):
    """The frontend could not be asked (down, not answering, no model list): the drill could
    not look, one line, exit 3."""


# --- arguments -------------------------------------------------------------------------


def parse_duration(raw: str, what: str) -> float:
    text = raw.strip().lower()
    scale = 1.0
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], factor
            break
    try:
        value = float(text) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{what}: expected a duration such as 500ms, 2s, 1m or 1h, got {raw[:40]!r}")
    return value


def parse_slo(raw: str) -> dict[str, float]:
    """`ttft_p99=500ms,itl_p99=50ms,error_rate=1%` -> seconds, or a fraction for error_rate."""
    targets: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SLO_KEYS:
            raise UsageError(
                f"--slo: expected KEY=VALUE with KEY one of {', '.join(SLO_KEYS)}; got {item[:40]!r}"
            )
        if key == "error_rate":
            targets[key] = parse_share(value, "--slo error_rate")
        else:
            targets[key] = parse_duration(value, f"--slo {key}")
    return targets


def parse_per_phase(raw: str, what: str, parse: Callable[[str], float]) -> dict[str, float]:
    """`10` for every phase, or `standard=10,overload=20,recovery=30` (others keep defaults)."""
    text = raw.strip()
    if "=" not in text:
        return dict.fromkeys(PHASES, parse(text))
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        phase, _, raw_value = item.partition("=")
        if phase.strip() not in PHASES:
            raise UsageError(
                f"{what}: expected PHASE=VALUE with PHASE one of {', '.join(PHASES)}; got {item[:40]!r}"
            )
        out[phase.strip()] = parse(raw_value)
    return out


def parse_share(raw: str, what: str) -> float:
    """`99%` or `0.99` -> 0.99; anything outside 0..1 is a UsageError naming `what`."""
    text = raw.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise UsageError(f"{what}: expected a share such as 99% or 0.99, got {raw[:40]!r}")
    return value


def parse_rate(raw: str) -> float:
    return parse_share(raw, "--min-success")


@dataclass
class DrillSpec:
    load: LoadSpec
    phase_seconds: dict[str, float]
    concurrency: int = 4
    overload_concurrency: int = 16
    fault_cmd: str = ""
    recover_cmd: str = ""
    command_timeout: float = 120.0
    sidecar_url: str = ""
    slo: dict[str, float] = field(default_factory=dict)
    min_success: dict[str, float] = field(default_factory=lambda: {"standard": 0.99})
    recovery_window: float = 5.0
    max_recovery: float | None = None
    max_requests: int = 100_000
    poll_interval: float = 1.0


# --- statistics ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: a value that was observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{int(q * 100)}": _round(percentile(values, q)) for q in QUANTILES}


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def phase_stats(records: list[RequestRecord], duration: float) -> dict[str, Any]:
    good = [r for r in records if r.ok]
    errors: dict[str, int] = {}
    statuses: dict[str, int] = {}
    examples: dict[str, str] = {}
    for record in records:
        if record.ok:
            continue
        errors[record.outcome] = errors.get(record.outcome, 0) + 1
        key = str(record.status) if record.status else "none"
        statuses[key] = statuses.get(key, 0) + 1
        examples.setdefault(record.outcome, record.error[:200])
    tokens = sum(r.tokens for r in good)
    return {
        "requests": len(records),
        "successes": len(good),
        "success_rate": _round(len(good) / len(records), 4) if records else None,
        "errors_by_type": dict(sorted(errors.items())),
        "errors_by_status": dict(sorted(statuses.items())),
        "error_examples": examples,
        "latency_seconds": _percentiles([r.latency for r in good]),
        "ttft_seconds": _percentiles([r.ttft for r in good if r.ttft is not None]),
        "itl_seconds": _percentiles([gap for r in good for gap in r.gaps]),
        "output_tokens": tokens,
        "tokens_per_second": round(tokens / duration, 2) if duration > 0 else None,
        "requests_per_second": round(len(records) / duration, 2) if duration > 0 else None,
    }


def recovery_time(
    records: list[RequestRecord], start: float, end: float, target: float, window: float
) -> float | None:
    """Seconds from `start` to the first `window` whose requests succeed at `target` or better."""
    ordered = sorted(records, key=lambda r: r.start)
    step = 0.25
    t = start
    while t + window <= end + 1e-9:
        inside = [r for r in ordered if t <= r.start < t + window]
        if inside and sum(r.ok for r in inside) / len(inside) >= target - 1e-9:
            return round(t - start, 2)
        t += step
    return None


def timeline(records: list[RequestRecord], bucket: float = 1.0) -> list[dict[str, Any]]:
    """Per second of drill time (by completion): requests, successes, latency p50/p99."""
    if not records:
        return []
    last = max(r.end for r in records)
    rows = []
    for index in range(int(last // bucket) + 1):
        lo, hi = index * bucket, (index + 1) * bucket
        inside = [r for r in records if lo <= r.end < hi]
        good = [r.latency for r in inside if r.ok]
        ttfts = [r.ttft for r in inside if r.ok and r.ttft is not None]
        rows.append(
            {
                "t": lo,
                "requests": len(inside),
                "successes": len(good),
                "latency_p50": _round(percentile(good, 0.5)),
                "latency_p99": _round(percentile(good, 0.99)),
                "ttft_p99": _round(percentile(ttfts, 0.99)),
            }
        )
    return rows


# --- Dynamo's own histograms -----------------------------------------------------------


def histogram_buckets(text: str, family: str, model: str) -> dict[float, float]:
    """{upper bound: cumulative count} of one histogram, summed over series for `model`."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = family + "_bucket"
    buckets: dict[float, float] = {}
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(wanted) or (line.startswith("# ") and family in line)
    ]
    try:
        for parsed in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in parsed.samples:
                if sample.name != wanted or sample.labels.get("model", model) != model:
                    continue
                bound = float(sample.labels.get("le", "nan"))
                if not math.isnan(bound):
                    buckets[bound] = buckets.get(bound, 0.0) + float(sample.value)
    except ValueError:
        return {}
    return buckets


def bucket_index(bounds: list[float], value: float) -> int:
    return next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds) - 1)


def compare_histogram(
    before: dict[float, float], after: dict[float, float], client: dict[str, float | None]
) -> dict[str, Any] | None:
    """Dynamo's quantile buckets over the window next to the client's percentiles; they agree
    when the client's value lies in Dynamo's bucket or a neighbouring one."""
    bounds = sorted(after)
    if not bounds:
        return None
    delta = [(b, after[b] - before.get(b, 0.0)) for b in bounds]
    if any(count < 0 for _, count in delta):
        return {"note": "Dynamo's counters reset in this window (a restart); not compared"}
    total = delta[-1][1]
    if total <= 0:
        return {"note": "Dynamo counted no requests in this window", "count": 0}
    out: dict[str, Any] = {"count": int(total), "quantiles": {}}
    for q in QUANTILES:
        key = f"p{int(q * 100)}"
        rank = q * total
        index = next(i for i, (_, count) in enumerate(delta) if count >= rank)
        lower = bounds[index - 1] if index else 0.0
        upper = bounds[index]
        client_value = client.get(key)
        agrees = None
        if client_value is not None:
            agrees = abs(bucket_index(bounds, client_value) - index) <= 1
        out["quantiles"][key] = {
            "dynamo_bucket": [lower, None if math.isinf(upper) else upper],
            "client": client_value,
            "agrees": agrees,
        }
    return out


# --- the drill -------------------------------------------------------------------------


@dataclass
class CommandRun:
    command: str
    phase: str
    started: float
    returncode: int | None = None
    seconds: float | None = None
    output: str = ""
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "phase": self.phase,
            "started_at": round(self.started, 2),
            "returncode": self.returncode,
            "seconds": _round(self.seconds, 2),
            "timed_out": self.timed_out,
            "output_tail": self.output[-2000:],
        }


async def run_command(command: str, phase: str, clock: Callable[[], float], timeout: float) -> CommandRun:
    """Runs a shell command in its own session; output goes to a file so a command that
    leaves a process behind (`nohup worker &`) ends when the shell does, not when its child
    closes the pipe."""
    run = CommandRun(command, phase, clock())
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_shell(
            command, stdout=output, stderr=output, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        try:
            run.returncode = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            run.timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            run.returncode = await proc.wait()
        run.seconds = clock() - run.started
        output.seek(0)
        run.output = output.read()[-4000:].decode("utf-8", "replace")
    return run


class FindingLog:
    """What the sidecar's /diagnose said over the drill: each finding's first and last sighting."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, Any]] = {}
        self.sightings: list[tuple[float, str]] = []  # (time, id), for per-phase membership
        self.polls = 0
        self.poll_errors = 0
        self.last_error = ""
        self.answered: list[float] = []  # when a poll was answered with a report
        self.failed: list[tuple[float, str]] = []  # when one was not, and why

    def fail(self, when: float, error: str) -> None:
        self.poll_errors += 1
        self.last_error = error
        self.failed.append((when, error))

    def observe(self, when: float, report: dict[str, Any]) -> None:
        self.polls += 1
        self.answered.append(when)
        for finding in report.get("findings") or []:
            if not isinstance(finding, dict) or not isinstance(finding.get("id"), str):
                continue
            if finding.get("state", "active") != "active":
                continue  # resolved, or a past event: not what the pod shows during this phase
            ident = finding["id"]
            severity = str(finding.get("severity", "info"))
            entry = self.seen.setdefault(
                ident,
                {"id": ident, "severity": severity, "summary": str(finding.get("summary", ""))[:300],
                 "first_seen": round(when, 2)},
            )  # fmt: skip
            if SEVERITY_ORDER.get(severity, 0) > SEVERITY_ORDER.get(entry["severity"], 0):
                entry["severity"] = severity
                entry["summary"] = str(finding.get("summary", ""))[:300]
            entry["last_seen"] = round(when, 2)
            self.sightings.append((when, ident))

    def during(self, start: float, end: float) -> list[dict[str, Any]]:
        firsts: dict[str, float] = {}
        for when, ident in self.sightings:
            if start <= when < end and ident not in firsts:
                firsts[ident] = when
        out = []
        for ident, when in sorted(firsts.items(), key=lambda kv: kv[1]):
            entry = dict(self.seen[ident])
            entry["first_seen_in_phase"] = round(when - start, 2)
            out.append(entry)
        out.sort(key=lambda e: (-SEVERITY_ORDER.get(e["severity"], 0), e["first_seen_in_phase"]))
        return out

    def reads(self, start: float, end: float) -> dict[str, Any]:
        """How the polls of one phase went: a phase with none answered was not looked at."""
        failed = [error for when, error in self.failed if start <= when < end]
        return {
            "answered": sum(start <= when < end for when in self.answered),
            "failed": len(failed),
            "last_error": failed[-1] if failed else "",
        }


async def preflight(session: aiohttp.ClientSession, frontend_url: str, model: str) -> str:
    """The model to use; Unreachable when the frontend cannot be asked, UsageError when it
    does not serve the model asked for."""
    url = frontend_url + "/v1/models"
    try:
        async with asyncio.timeout(10):
            async with session.get(url, allow_redirects=False) as response:
                body = await response.content.read(1 << 20)
                status = response.status
                location = response.headers.get("Location", "")[:120]
    except TimeoutError:
        raise Unreachable(f"--frontend-url: {url} did not answer within 10s") from None
    except aiohttp.ClientError as exc:
        reason = getattr(exc, "os_error", None) or exc
        raise Unreachable(f"--frontend-url: cannot reach {url}: {str(reason)[:200]}") from None
    if 300 <= status < 400:
        # verify talks only to --frontend-url: a redirect elsewhere is not followed.
        raise Unreachable(
            f"--frontend-url: {url} answered HTTP {status}, a redirect to {location!r}; "
            "verify does not follow redirects: give the frontend's own URL"
        )
    if status != 200:
        raise Unreachable(f"--frontend-url: {url} answered HTTP {status}, not a model list")
    listing, why = parse_json(body, max_depth=16, text_limit=512)
    try:
        if why:
            raise ValueError(why)
        ids = [str(item["id"]) for item in listing["data"]]
    except (ValueError, KeyError, TypeError):
        raise Unreachable(f"--frontend-url: {url} did not answer with an OpenAI model list") from None
    if model:
        if model not in ids:
            listed = ", ".join(ids[:10]) or "none"
            raise UsageError(f"--model: {model!r} is not served by {frontend_url} (models: {listed})")
        return model
    if not ids:
        raise Unreachable(
            f"--frontend-url: {frontend_url} lists no models yet; pass --model or wait for a worker"
        )
    return ids[0]


class Progress:
    """One line per second: a redrawn status line on a terminal, JSON lines otherwise."""

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, status: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.tty:
            width = 20
            done = int(width * min(1.0, status["phase_elapsed"] / max(status["phase_seconds"], 1e-9)))
            rate = "-" if status["success_rate"] is None else f"{status['success_rate'] * 100:.1f}%"
            findings = ",".join(status["findings"][:3]) or "none"
            line = (
                f"\r{status['phase']:>8} [{'#' * done}{'.' * (width - done)}] "
                f"{status['phase_elapsed']:5.1f}/{status['phase_seconds']:g}s "
                f"{status['requests']} req {rate} ok  findings: {findings}"
            )
            self.stream.write(line[:160].ljust(100))
        else:
            self.stream.write(json.dumps({"progress": status}) + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def _poll_sidecar(
    session: aiohttp.ClientSession, url: str, findings: FindingLog, clock: Callable[[], float], every: float
) -> None:
    while True:
        try:
            async with asyncio.timeout(max(2.0, every)):
                async with session.get(
                    url + "/diagnose", params={"format": "json"}, allow_redirects=False
                ) as response:
                    report = json.loads(await response.content.read(4 << 20))
            if not isinstance(report, dict):
                raise ValueError("not a report")
            if "findings" not in report:
                raise ValueError(f"HTTP {response.status}: not a diagnose report")
            findings.observe(clock(), report)
        except (TimeoutError, aiohttp.ClientError, ValueError, RecursionError) as exc:
            findings.fail(clock(), f"{type(exc).__name__}: {exc}"[:200])
        await asyncio.sleep(every)


async def _metrics_snapshot(
    session: aiohttp.ClientSession, frontend_url: str, families: Collection[str] = ()
) -> str | None:
    """The frontend's /metrics, only the lines of `families` kept (four snapshots of a 32 MiB
    exposition would otherwise stay in memory for the whole drill); None when it could not be
    read. An empty text is a reading: before the first request Dynamo has no histogram lines."""
    try:
        async with asyncio.timeout(5):
            async with session.get(frontend_url + "/metrics", allow_redirects=False) as response:
                if response.status != 200:
                    return None
                text = (await response.content.read(32 << 20)).decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError):
        return None
    if not families:
        return text
    return "\n".join(line for line in text.splitlines() if any(family in line[:200] for family in families))


async def run_drill(spec: DrillSpec, progress: Progress | None = None) -> dict[str, Any]:
    progress = progress or Progress(enabled=False)
    origin = time.monotonic()
    wall_origin = time.time()

    def clock() -> float:
        return time.monotonic() - origin

    names = DynamoNames()
    histograms = {
        "ttft": names.latency_histograms()["ttft"],
        "itl": names.latency_histograms()["itl"],
        "latency": names.latency_histograms()["request_duration"],
    }
    findings = FindingLog()
    commands: list[CommandRun] = []
    command_tasks: list[asyncio.Task[CommandRun]] = []
    bounds: dict[str, tuple[float, float]] = {}
    snapshots: dict[str, str | None] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as control:
        model = await preflight(control, spec.load.frontend_url, spec.load.model)
        load_spec = LoadSpec(**{**spec.load.__dict__, "model": model})
        poller = None
        if spec.sidecar_url:
            poller = asyncio.create_task(
                _poll_sidecar(control, spec.sidecar_url, findings, clock, spec.poll_interval)
            )
        stragglers: list[asyncio.Task[None]] = []
        try:
            async with LoadGenerator(load_spec, spec.max_requests, clock) as load:
                families = list(histograms.values())
                snapshots["start"] = await _metrics_snapshot(control, spec.load.frontend_url, families)
                for phase in PHASES:
                    start = clock()
                    end = start + spec.phase_seconds[phase]
                    bounds[phase] = (start, end)
                    command = {"overload": spec.fault_cmd, "recovery": spec.recover_cmd}.get(phase, "")
                    if command:
                        command_tasks.append(
                            asyncio.create_task(run_command(command, phase, clock, spec.command_timeout))
                        )
                    concurrency = spec.overload_concurrency if phase == "overload" else spec.concurrency
                    phase_load = asyncio.create_task(load.run_phase(phase, concurrency, end))
                    while not phase_load.done():
                        await asyncio.wait([phase_load], timeout=1.0)
                        mine = [r for r in load.records if r.phase == phase]
                        progress.update(
                            {
                                "phase": phase,
                                "phase_elapsed": round(min(clock() - start, spec.phase_seconds[phase]), 1),
                                "phase_seconds": spec.phase_seconds[phase],
                                "requests": len(mine),
                                "success_rate": round(sum(r.ok for r in mine) / len(mine), 4)
                                if mine
                                else None,
                                "findings": sorted({i for when, i in findings.sightings if when >= start}),
                            }
                        )
                    stragglers += phase_load.result()
                    if phase == "standard" and spec.fault_cmd and stragglers:
                        # The baseline's last requests finish before the fault: a request the
                        # fault kills is the fault's, not a blemish on the standard phase.
                        await asyncio.wait(stragglers, timeout=spec.load.request_timeout + 1)
                        stragglers = [task for task in stragglers if not task.done()]
                    snapshots[phase] = await _metrics_snapshot(control, spec.load.frontend_url, families)
                if stragglers:
                    await asyncio.wait(stragglers, timeout=spec.load.request_timeout + 1)
                # One more look so a finding raised by the last requests is not missed.
                if poller is not None:
                    await asyncio.sleep(min(spec.poll_interval, 1.0))
                records = list(load.records)
            probe = await connection_probe(load_spec, clock) if spec.load.stream else None
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
            progress.done()
        for task in command_tasks:
            commands.append(await task)
    report = build_report(
        spec, model, records, bounds, findings, commands, snapshots, histograms, wall_origin
    )
    report["connection_probe"] = probe
    return report


def build_report(
    spec: DrillSpec,
    model: str,
    records: list[RequestRecord],
    bounds: dict[str, tuple[float, float]],
    findings: FindingLog,
    commands: list[CommandRun],
    snapshots: dict[str, str | None],
    histograms: dict[str, str],
    wall_origin: float,
) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    previous = "start"
    for phase in PHASES:
        start, end = bounds[phase]
        mine = [r for r in records if r.phase == phase]
        stats = phase_stats(mine, end - start)
        stats["start"] = round(start, 2)
        stats["end"] = round(end, 2)
        stats["concurrency"] = spec.overload_concurrency if phase == "overload" else spec.concurrency
        stats["findings"] = findings.during(start, end) if spec.sidecar_url else None
        if spec.sidecar_url:
            stats["sidecar_reads"] = findings.reads(start, end)
        dynamo: dict[str, Any] = {}
        earlier, later = snapshots.get(previous), snapshots.get(phase)
        if earlier is not None and later is not None:
            for key, family in histograms.items():
                compared = compare_histogram(
                    histogram_buckets(earlier, family, model),
                    histogram_buckets(later, family, model),
                    stats[f"{key}_seconds"],
                )
                if compared is not None:
                    dynamo[key] = compared
        stats["dynamo_histograms"] = dynamo
        phases[phase] = stats
        previous = phase
    standard_rate = phases["standard"]["success_rate"]
    start, end = bounds["recovery"]
    # A recovery phase shorter than the window is judged over the whole phase.
    window = min(spec.recovery_window, end - start)
    recovery: dict[str, Any] = {"window_seconds": window, "target_success_rate": standard_rate}
    recovered_at = None
    if standard_rate is not None:
        recovered_at = recovery_time(
            [r for r in records if r.phase == "recovery"], start, end, standard_rate, window
        )
    recovery["seconds"] = recovered_at
    recovery["recovered"] = recovered_at is not None
    after = [
        r
        for r in records
        if r.phase == "recovery" and recovered_at is not None and r.start >= start + recovered_at
    ]
    recovery["after_recovery"] = phase_stats(after, max(1e-9, end - start - (recovered_at or 0)))
    checks = verdict(spec, phases, recovery, commands)
    return {
        "version": REPORT_VERSION,
        "kind": "dynamo-sidecar verify",
        "started_at": round(wall_origin, 3),
        "target": {
            "frontend_url": spec.load.frontend_url,
            "model": model,
            "endpoint": spec.load.endpoint,
            "stream": spec.load.stream,
            "max_tokens": spec.load.max_tokens,
            "connections": "new" if spec.load.new_connections else "keep-alive",
            "sidecar_url": spec.sidecar_url or None,
        },
        "settings": {
            "phase_seconds": spec.phase_seconds,
            "concurrency": spec.concurrency,
            "overload_concurrency": spec.overload_concurrency,
            "request_timeout": spec.load.request_timeout,
            "slo": spec.slo,
            "min_success": spec.min_success,
            "max_recovery_seconds": spec.max_recovery,
        },
        "phases": phases,
        "recovery": recovery,
        "commands": [c.to_dict() for c in commands],
        "sidecar": (
            {
                "polls": findings.polls,
                "poll_errors": findings.poll_errors,
                "last_error": findings.last_error,
                # Phases in which no poll was answered: the drill could not say what the pod saw.
                "unread_phases": [p for p in PHASES if not phases[p]["sidecar_reads"]["answered"]],
            }
            if spec.sidecar_url
            else None
        ),
        "timeline": timeline(records),
        "checks": checks,
        "passed": all(c["met"] for c in checks),
    }


def _slo_value(stats: dict[str, Any], key: str) -> float | None:
    if key == "error_rate":
        rate = stats.get("success_rate")
        return None if rate is None else round(1 - rate, 4)
    kind, _, quantile = key.partition("_")
    return stats[f"{kind}_seconds"].get(quantile)


def verdict(
    spec: DrillSpec, phases: dict[str, Any], recovery: dict[str, Any], commands: list[CommandRun]
) -> list[dict[str, Any]]:
    """Every target as a check: what was asked, what was observed, whether it was met."""
    checks: list[dict[str, Any]] = []

    def check(name: str, phase: str, target: Any, observed: Any, met: bool) -> None:
        checks.append(
            {"check": name, "phase": phase, "target": target, "observed": observed, "met": bool(met)}
        )

    for phase, minimum in spec.min_success.items():
        rate = phases[phase]["success_rate"]
        check("success_rate", phase, f">= {minimum:.4g}", rate, rate is not None and rate >= minimum)
    # SLOs hold under the standard load, and again once the deployment has recovered; the
    # overload phase is there to show the degradation, not to meet them.
    for key, target in spec.slo.items():
        for phase, stats in (
            ("standard", phases["standard"]),
            ("recovery (after recovery)", recovery["after_recovery"]),
        ):
            if phase.startswith("recovery") and not recovery["recovered"]:
                continue
            value = _slo_value(stats, key)
            unit = "" if key == "error_rate" else "s"
            check(key, phase, f"<= {target:g}{unit}", value, value is not None and value <= target)
    if spec.fault_cmd or spec.recover_cmd or spec.max_recovery is not None:
        check("recovered", "recovery", f"success rate back to the standard phase's for {recovery['window_seconds']:g}s",
              recovery["seconds"], recovery["recovered"])  # fmt: skip
    if spec.max_recovery is not None:
        seconds = recovery["seconds"]
        check("recovery_seconds", "recovery", f"<= {spec.max_recovery:g}s", seconds,
              seconds is not None and seconds <= spec.max_recovery)  # fmt: skip
    for command in commands:
        check("command", command.phase, f"{command.command[:80]!r} exits 0", command.returncode,
              command.returncode == 0 and not command.timed_out)  # fmt: skip
    return checks
