"""Drain under load: bounded concurrent streaming requests through a Dynamo, SIGTERM to the
Dynamo and the sidecar together mid-load (as Kubernetes does), then compare what the client
saw with the sidecar's drain summary.

    python bench/drain.py                 # simulated Dynamo (a subprocess)
    python bench/drain.py --real          # real Dynamo frontend + mocker (SIGTERM to the frontend)
    python bench/drain.py --smoke         # small and quick, for CI

Bounded: at most --requests requests, --concurrency at a time, and --seconds of load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.procs import spawn_sidecar, start_sim  # noqa: E402


class Load:
    def __init__(self, frontend: str, concurrency: int, limit: int, seconds: float, max_tokens: int) -> None:
        self.frontend = frontend
        self.concurrency = concurrency
        self.limit = limit
        self.seconds = seconds
        self.max_tokens = max_tokens
        self.sent = 0
        self.records: list[dict[str, Any]] = []
        self.stop = asyncio.Event()

    async def _worker(self, session: aiohttp.ClientSession, deadline: float) -> None:
        while not self.stop.is_set() and self.sent < self.limit and time.monotonic() < deadline:
            self.sent += 1
            started = time.time()
            record: dict[str, Any] = {"started": started, "status": 0, "complete": False}
            try:
                body = {"model": "tiny", "prompt": "hello", "max_tokens": self.max_tokens, "stream": True}
                async with session.post(self.frontend + "/v1/completions", json=body) as response:
                    record["status"] = response.status
                    text = await response.text()
                    record["complete"] = (
                        response.status == 200 and text.endswith("data: [DONE]\n\n") and '"error"' not in text
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["error"] = type(exc).__name__
            record["ended"] = time.time()
            self.records.append(record)
            if record["status"] != 200:
                await asyncio.sleep(0.05)  # the frontend is going away: do not spin

    async def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            await asyncio.gather(*(self._worker(session, deadline) for _ in range(self.concurrency)))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="drain-bench-"))
    dynamo_proc: subprocess.Popen[Any]
    real = None
    if args.real:
        from tests.real_dynamo import RealDynamo, dynamo_python

        python = dynamo_python()
        if python is None:
            raise RuntimeError("real Dynamo not installed")
        real = RealDynamo(python, workdir)
        real.start_worker(speedup=1.0)
        real.start_frontend()
        real.wait_model()
        frontend, worker = real.frontend_url, real.worker_url
        assert real.frontend is not None
        dynamo_proc = real.frontend
        dynamo_pids = [real.frontend.pid]
    else:
        dynamo_proc, ports = start_sim("--token-delay", str(args.token_delay))
        dynamo_pids = [ports["pid"]]
        frontend, worker = f"http://127.0.0.1:{ports['frontend']}", f"http://127.0.0.1:{ports['worker']}"
    sidecar, _ = spawn_sidecar(
        frontend,
        worker,
        "--drain-interval",
        "0.25",
        "--drain-settle",
        "0.5",
        "--termination-grace-period",
        "60",
        pid=dynamo_pids[0],
        interval="0.5",
    )
    try:
        load = Load(frontend, args.concurrency, args.requests, args.seconds, args.max_tokens)
        task = asyncio.create_task(load.run())
        await asyncio.sleep(args.signal_after)
        signalled = time.time()
        dynamo_proc.send_signal(signal.SIGTERM)
        sidecar.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(sidecar.communicate, timeout=120)
        sidecar_exit = time.time()
        load.stop.set()
        await task
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
        if dynamo_proc.poll() is None:
            dynamo_proc.kill()
        dynamo_proc.wait(timeout=30)
        if real is not None:
            real.stop()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary = next(
        (
            line
            for line in lines
            if line["message"] in {"drain finished", "drain deadline reached with work in flight"}
        ),
        None,
    )
    records = load.records
    inflight_at_signal = [r for r in records if r["started"] < signalled < r["ended"]]
    client = {
        "sent": len(records),
        "completed": sum(1 for r in records if r["complete"]),
        "failed": sum(1 for r in records if not r["complete"]),
        "inflight_at_signal": len(inflight_at_signal),
        "inflight_at_signal_completed": sum(1 for r in inflight_at_signal if r["complete"]),
        "last_completion_after_signal_seconds": round(
            max((r["ended"] for r in records if r["complete"]), default=signalled) - signalled, 3
        ),
    }
    agree = (
        summary is not None
        and summary["inflight_at_start"] == client["inflight_at_signal"]
        and sidecar_exit >= max((r["ended"] for r in inflight_at_signal), default=0)
        # Completions are countable only while Dynamo's /metrics still answers.
        and (
            summary["reason"] != "inflight_zero"
            or summary["requests_completed_during_drain"] == client["inflight_at_signal_completed"]
        )
    )
    return {
        "dynamo": "real" if args.real else "simulated",
        "client": client,
        "sidecar_exit_after_signal_seconds": round(sidecar_exit - signalled, 3),
        "sidecar_exit_code": sidecar.returncode,
        "drain_summary": summary
        and {
            k: summary.get(k)
            for k in (
                "reason",
                "duration_seconds",
                "inflight_at_start",
                "inflight_at_end",
                "requests_completed_during_drain",
                "requests_failed_during_drain",
            )
        },
        "agree": agree,
        "stderr": err[-500:] if sidecar.returncode else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--signal-after", type=float, default=3.0)
    args = parser.parse_args()
    if args.smoke:
        args.concurrency, args.requests, args.seconds, args.signal_after = 4, 200, 10, 1.5
    result = asyncio.run(bench(args))
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["agree"] and result["sidecar_exit_code"] == 0 else 1)


if __name__ == "__main__":
    main()
