"""Seconds from a fault to the correct top finding, and any false positive beside it.

Each fault of the demo's simulated Dynamo (every knob), plus a healthy run and a sidecar
started before Dynamo, and, when a real Dynamo 1.6.1 is installed (DYNAMO_PYTHON, as .ci/run
sets it), worker SIGKILL / SIGSTOP / SIGSTOP+SIGCONT / kill mid-stream / frontend SIGTERM /
slow start / sidecar before Dynamo / wrong system port. The sidecar runs at its default
collection interval unless --interval is given; bounded traffic (a few concurrent one-token
requests) runs where the fault needs it.

A miss is a top finding that is not the expected one by the deadline (2 collection intervals
plus the probe timeout; one signal window for latency and SLO). A false positive is any other
warning or critical finding that is not folded under the top one.

    python bench/time_to_finding.py               # sim at default intervals (5 s), then real Dynamo
    python bench/time_to_finding.py --quick       # 1 s interval, sim only
    python bench/time_to_finding.py --real-only
    python bench/time_to_finding.py --sim-only --from-quiet   # faults that begin in a quiet pod
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from agent.config import load_config
from agent.dynamo_sim import DynamoSim
from agent.runtime.sidecar import Sidecar

SEVERE = {"warning", "critical"}


@dataclass
class Case:
    name: str
    expect: str  # expected top finding id; "" for none at warning or above
    fault: Callable[[Any, Sidecar], Awaitable[None]] | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    traffic: int = 0  # concurrent requests kept going
    deadline_intervals: float = 2.0
    window_bound: bool = False  # latency and SLO: within one signal window instead
    before: Callable[[Any], Awaitable[None]] | None = None  # warm-up (baseline traffic)
    demo_traffic: bool = False  # `traffic` clients as `dynamo-sidecar demo --concurrency` sends


@dataclass
class Outcome:
    case: str
    expect: str
    seconds: float | None
    top: str
    false_positives: list[str]
    deadline: float

    @property
    def ok(self) -> bool:
        return self.seconds is not None and self.seconds <= self.deadline and not self.false_positives


def _knob(**changes: Any) -> Callable[[DynamoSim, Sidecar], Awaitable[None]]:
    async def apply(sim: DynamoSim, sidecar: Sidecar) -> None:
        sim.faults.update(changes)

    return apply


async def _kill_worker(sim: DynamoSim, sidecar: Sidecar) -> None:
    await sim.kill_worker()


async def _stop_frontend(sim: DynamoSim, sidecar: Sidecar) -> None:
    await sim.stop_part("frontend")


SIM_CASES = [
    Case("healthy", ""),
    Case("frontend_hang", "endpoint_timeout:frontend", _knob(frontend_hang=True)),
    Case("frontend_slow (3 s)", "endpoint_timeout:frontend", _knob(frontend_slow=3.0)),
    Case("frontend_5xx", "endpoint_bad_response:frontend", _knob(frontend_5xx=True)),
    Case("frontend_malformed", "endpoint_bad_response:frontend", _knob(frontend_malformed=True)),
    Case("frontend_draining", "dynamo_draining:frontend", _knob(frontend_draining=True)),
    Case("frontend stopped", "endpoint_refused:frontend", _stop_frontend),
    Case("worker_hang", "endpoint_timeout:worker", _knob(worker_hang=True)),
    Case("worker_slow (3 s)", "endpoint_timeout:worker", _knob(worker_slow=3.0)),
    Case("worker_notready", "worker_notready_endpoints_ready:worker", _knob(worker_notready=True)),
    Case("worker_gone", "frontend_no_instances:frontend", _knob(worker_gone=True)),
    Case("worker killed (stale_instance)", "endpoint_refused:worker", _kill_worker, traffic=1),
    Case("stale_instance", "frontend_stale_instances:frontend", _knob(stale_instance=True), traffic=1),
    Case(
        "ttft_extra (0.5 s, SLO 200 ms)",
        "slo_breach:ttft_p99",
        _knob(ttft_extra=0.5),
        {"slo_ttft_p99": "200ms"},
        traffic=2,
        window_bound=True,
    ),
    Case(
        "token_delay (50 ms, SLO 20 ms)",
        "slo_breach:itl_p99",
        _knob(token_delay=0.05),
        {"slo_itl_p99": "20ms"},
        traffic=2,
        window_bound=True,
    ),
    # README's recipe: `demo --concurrency 8 --fault max_concurrency=1 --fault token_delay=0.1`,
    # with the demo's own clients (a small completion each, 0.5 s apart).
    Case(
        "max_concurrency (1, 8 demo clients, token_delay 0.1 s)",
        "queue_growing:frontend",
        _knob(max_concurrency=1, token_delay=0.1),
        traffic=8,
        window_bound=True,
        demo_traffic=True,
    ),
    # hung_engine_after is two intervals of no progress; a third sees it.
    Case(
        "engine_hang (under traffic)",
        "engine_hung:engine",
        _knob(engine_hang=True),
        traffic=2,
        deadline_intervals=3,
    ),
]


SMOKE = {"healthy", "worker_hang", "worker_gone", "engine_hang (under traffic)"}


async def _traffic(url: str, clients: int, stop: asyncio.Event, max_tokens: int = 4) -> None:
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(
                    url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": max_tokens}
                ) as response:
                    await response.read()
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(clients)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _judge(report: dict[str, Any], expect: str) -> tuple[bool, str, list[str]]:
    findings = report["findings"]
    top = findings[0]["id"] if findings else ""
    folded = set(findings[0]["explains"]) if findings else set()
    extra = [
        f["id"]
        for f in findings
        if f["severity"] in SEVERE and f["id"] != expect and f["id"] not in folded and not f["explained_by"]
    ]
    if not expect:
        return not [f for f in findings if f["severity"] in SEVERE], top, extra
    return top == expect, top, extra


def _sidecar_config(interval: float, overrides: dict[str, str], **urls: str) -> Any:
    values = {
        "listen_host": "127.0.0.1",
        "listen_port": "0",
        "dynamo_interval": f"{interval:g}",
        "process_interval": f"{interval:g}",
        "collector_timeout": f"{min(4.0, interval * 0.8):g}",
        # As at the defaults (5 s / 4 s / 2 s): a probe times out well before its collector.
        "http_timeout": f"{min(2.0, interval * 0.4):g}",
        "startup_grace": "0",
        "canary_enabled": "false",
        "tcp_enabled": "false",
        "gpu_enabled": "false",
        "process_pid": str(os.getpid()),
        "signal_window": "60",
        **urls,
        **overrides,
    }
    return load_config(environ={}, overrides=values)


async def run_sim_case(case: Case, interval: float, from_quiet: bool = False) -> Outcome:
    sim = DynamoSim()
    await sim.start("127.0.0.1", 0, 0)
    overrides = case.overrides
    if from_quiet:
        # The pod counts as quiet after three health cycles with no traffic (the least
        # quiet_after allows): the fault then begins while the collectors run slowed.
        overrides = {**overrides, "quiet_after": f"{3 * interval:g}"}
    config = _sidecar_config(
        interval, overrides, frontend_url=sim.url("frontend"), worker_system_urls=sim.url("worker")
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    stop = asyncio.Event()
    load = None
    if case.traffic:
        from agent.tools.demo import _traffic as demo_traffic

        clients = (
            demo_traffic(sim.url("frontend"), stop, 0.5, case.traffic)
            if case.demo_traffic
            else _traffic(sim.url("frontend"), case.traffic, stop)
        )
        load = asyncio.create_task(clients)
    deadline = (
        config.signal_window if case.window_bound else case.deadline_intervals * interval
    ) + config.http_timeout
    try:
        await asyncio.wait_for(sidecar.scheduler.first_cycle_done.wait(), 30)
        if case.traffic:
            await asyncio.sleep(3 * interval)  # a baseline before the fault
        elif from_quiet:
            deadline_quiet = time.monotonic() + 12 * interval
            while not sidecar.quiet.quiet:
                if time.monotonic() > deadline_quiet:
                    raise RuntimeError(f"{case.name}: the pod never became quiet ({sidecar.quiet.why_not})")
                await asyncio.sleep(0.2)
            # Past the first beat: the slowed collectors run on it (agent/runtime/scheduler.py).
            await asyncio.sleep(2 * interval * config.quiet_slowdown)
        started = time.monotonic()
        if case.fault is not None:
            await case.fault(sim, sidecar)
        return await _watch(case, sidecar, started, deadline)
    finally:
        stop.set()
        if load is not None:
            await asyncio.gather(load, return_exceptions=True)
        await sidecar.stop()
        await sim.stop()


async def _watch(case: Case, sidecar: Sidecar, started: float, deadline: float) -> Outcome:
    seen: float | None = None
    top: str = ""
    extra: list[str] = []
    end = started + deadline + (2.0 if case.expect else 0.0)
    while time.monotonic() < end:
        report = sidecar.diagnose_report()
        good, top, extra = _judge(report, case.expect)
        if case.expect and good and seen is None:
            seen = time.monotonic() - started
        if case.expect and seen is not None:
            break
        if not case.expect and not good:
            break
        await asyncio.sleep(0.1)
    if not case.expect:
        seen = deadline if not extra and _judge(sidecar.diagnose_report(), "")[0] else None
    return Outcome(case.name, case.expect or "(nothing at warning+)", seen, top, extra, deadline)


async def run_before_dynamo(interval: float) -> Outcome:
    sim = DynamoSim()
    # Reserve ports, start the sidecar first, then Dynamo.
    await sim.start("127.0.0.1", 0, 0)
    frontend, worker = sim.url("frontend"), sim.url("worker")
    await sim.stop()
    config = _sidecar_config(
        interval, {"startup_grace": "60"}, frontend_url=frontend, worker_system_urls=worker
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    bad: list[str] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3 * interval:
            report = sidecar.diagnose_report()
            bad = [f["id"] for f in report["findings"] if f["severity"] in SEVERE]
            if bad:
                break
            await asyncio.sleep(0.2)
        await sim.start("127.0.0.1", int(frontend.rsplit(":", 1)[1]), int(worker.rsplit(":", 1)[1]))
        while not bad and time.monotonic() - started < 6 * interval:
            report = sidecar.diagnose_report()
            bad = [f["id"] for f in report["findings"] if f["severity"] in SEVERE]
            await asyncio.sleep(0.2)
    finally:
        await sidecar.stop()
        await sim.stop()
    return Outcome(
        "sidecar started before Dynamo", "(info only)", None if bad else 0.0, "", bad, 6 * interval
    )


# --- real Dynamo ------------------------------------------------------------------------------


def _real_cases() -> list[tuple[str, str, str]]:
    """(name, expected top finding id, how) for the real Dynamo."""
    return [
        ("worker SIGKILL", "endpoint_refused:worker", "kill"),
        ("worker SIGSTOP", "process_stalled:dynamo.mocker/{pid}", "stop"),
        ("worker SIGSTOP+SIGCONT", "worker_registration_lost:discovery", "stopcont"),
        ("worker killed mid-stream", "endpoint_refused:worker", "midstream"),
        ("frontend SIGTERM, a stream in flight", "dynamo_draining:frontend", "sigterm"),
        ("frontend SIGTERM, idle (logs say so)", "(info only)", "sigterm_idle"),
        ("wrong worker system port", "endpoint_wrong_port:worker", "wrongport"),
        ("slow start (mocker --startup-time 20)", "(info only)", "slowstart"),
        ("sidecar started before Dynamo", "(info only)", "before"),
    ]


async def run_real_case(name: str, expect: str, how: str, interval: float, python: str) -> Outcome:
    from tests.real_dynamo import RealDynamo, own_processes

    workdir = Path(tempfile.mkdtemp(prefix="ttf-"))
    dynamo = RealDynamo(python, workdir)
    threads: list[threading.Thread] = []
    sidecar: Sidecar | None = None
    info_only = expect == "(info only)"
    try:
        if how not in {"before", "slowstart"}:
            dynamo.start_worker(speedup=0.1 if how in {"midstream", "sigterm"} else 10.0)
            dynamo.start_frontend()
            dynamo.wait_model()
        overrides = {
            "process_pid": "0",
            "process_patterns": own_processes(dynamo),
            "log_files": f"{dynamo.frontend_log},{dynamo.worker_log}",
            "startup_grace": "60" if how in {"before", "slowstart"} else "0",
        }
        worker_url = dynamo.worker_url
        if how == "wrongport":
            from tests.helpers import free_port

            worker_url = f"http://127.0.0.1:{free_port()}"
        config = _sidecar_config(
            interval, overrides, frontend_url=dynamo.frontend_url, worker_system_urls=worker_url
        )
        sidecar = Sidecar(config)
        await sidecar.start()
        await asyncio.wait_for(sidecar.scheduler.first_cycle_done.wait(), 30)
        started = time.monotonic()
        if how == "kill":
            dynamo.signal_worker(signal.SIGKILL)
        elif how in {"stop", "stopcont"}:
            assert dynamo.worker is not None
            expect = expect.format(pid=dynamo.worker.pid)
            dynamo.signal_worker(signal.SIGSTOP)
            if how == "stopcont":
                await asyncio.sleep(20)  # past the ~12 s after which it drops out of discovery
                dynamo.signal_worker(signal.SIGCONT)
                started = time.monotonic()
        elif how == "midstream":
            thread = threading.Thread(target=lambda: dynamo.completion("ttf", 200, stream=True, timeout=60))
            thread.start()
            threads.append(thread)
            await asyncio.sleep(1.5)
            started = time.monotonic()
            dynamo.signal_worker(signal.SIGKILL)
        elif how in {"sigterm", "sigterm_idle"}:
            assert dynamo.frontend is not None
            if how == "sigterm":
                thread = threading.Thread(
                    target=lambda: dynamo.completion("ttf", 150, stream=True, timeout=60)
                )
                thread.start()
                threads.append(thread)
                await asyncio.sleep(1.5)
                started = time.monotonic()
            dynamo.frontend.send_signal(signal.SIGTERM)
        elif how in {"before", "slowstart"}:
            args = ["--startup-time", "20"] if how == "slowstart" else []

            def start_both(args: list[str] = args) -> None:
                dynamo.start_worker(extra_args=args)
                dynamo.start_frontend()

            thread = threading.Thread(target=start_both)
            thread.start()
            threads.append(thread)
        if info_only:
            bad: list[str] = []
            while time.monotonic() - started < 30:
                report = sidecar.diagnose_report()
                bad = [f["id"] for f in report["findings"] if f["severity"] in SEVERE]
                if bad:
                    break
                await asyncio.sleep(0.3)
            return Outcome(name, expect, None if bad else 0.0, "", bad, 30.0)
        deadline = 2 * interval + config.http_timeout + (3.0 if how == "stopcont" else 0.0)
        return await _watch(Case(name, expect), sidecar, started, deadline)
    finally:
        if sidecar is not None:
            await sidecar.stop()
        dynamo.stop()
        for thread in threads:
            thread.join(60)


def _table(outcomes: list[Outcome], interval: float) -> str:
    lines = [
        f"collection interval {interval:g} s",
        "",
        "| fault | expected top finding | seconds to it | deadline | other warning/critical |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        seconds = (
            "MISS" if o.seconds is None else f"{o.seconds:.1f}" + (" LATE" if o.seconds > o.deadline else "")
        )
        if o.seconds is not None and o.expect.startswith("("):
            seconds = "-"  # nothing expected: the row passes by what did not appear
        if o.seconds is None and o.top:
            seconds += f" (top: {o.top})"
        lines.append(
            f"| {o.case} | `{o.expect}` | {seconds} | {o.deadline:.1f} s | {', '.join(o.false_positives) or 'none'} |"
        )
    misses = sum(1 for o in outcomes if not o.ok)
    lines.append("")
    lines.append(
        f"{len(outcomes) - misses} of {len(outcomes)} named correctly in time with no false positive"
    )
    return "\n".join(lines)


async def main() -> int:
    from agent.core.log import configure

    configure("warning", "console", stream=sys.stderr)  # the table alone on stdout
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=5.0, help="collection interval (default 5 s)")
    parser.add_argument("--quick", action="store_true", help="1 s interval, simulator only")
    parser.add_argument("--smoke", action="store_true", help="CI: --quick over four cases")
    parser.add_argument(
        "--from-quiet",
        action="store_true",
        help="simulator faults that need no traffic begin once the pod is quiet (collectors slowed)",
    )
    parser.add_argument("--real-only", action="store_true")
    parser.add_argument("--sim-only", action="store_true")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="only the cases whose name contains TEXT (repeatable)",
    )
    args = parser.parse_args()
    args.quick = args.quick or args.smoke
    args.sim_only = args.sim_only or args.from_quiet
    interval = 1.0 if args.quick else args.interval
    outcomes: list[Outcome] = []
    cases = [c for c in SIM_CASES if c.name in SMOKE] if args.smoke else SIM_CASES
    if args.only:
        cases = [c for c in cases if any(text in c.name for text in args.only)]
    if not args.real_only:
        for case in cases:
            if args.from_quiet and case.traffic:
                continue  # traffic ends quiet before any fault
            outcome = await run_sim_case(case, interval, from_quiet=args.from_quiet)
            if args.from_quiet:
                outcome.case += " (from quiet)"
            outcomes.append(outcome)
            print(f"sim  {outcomes[-1]}", file=sys.stderr)
        if args.from_quiet:
            pass  # the sidecar-before-Dynamo case has no quiet pod to start from
        elif not args.only or any(text in "sidecar started before Dynamo" for text in args.only):
            outcomes.append(await run_before_dynamo(interval))
    python = os.environ.get("DYNAMO_PYTHON", "")
    if not args.quick and not args.sim_only and python and Path(python).exists():
        for name, expect, how in [
            c for c in _real_cases() if not args.only or any(t in c[0] for t in args.only)
        ]:
            outcomes.append(await run_real_case(name, expect, how, interval, python))
            print(f"real {outcomes[-1]}", file=sys.stderr)
    elif not args.quick and not args.sim_only:
        print("real Dynamo not installed (DYNAMO_PYTHON): simulator cases only", file=sys.stderr)
    print(_table(outcomes, interval))
    if args.smoke:
        return 0  # smoke mode proves the bench runs; timing goals are judged in full runs
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
