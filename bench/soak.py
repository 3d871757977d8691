"""The reliability soak for longer: tests/reliability/test_soak.py (a flapping simulated Dynamo,
OTLP down, rotating logs, steady scrapes) for ten minutes, printing RSS, task and thread
counts at the baseline and the end, and the exit time after SIGTERM.

    python bench/soak.py              # 600 s
    python bench/soak.py --seconds 120
    python bench/soak.py --smoke      # 8 s: the wiring only; the suite runs the soak itself for 30 s

`--kind hostile` (issue 26): the sidecar as a real process, with the memory limit the
injector gives it (`--memory-limit`, 160Mi), against a hostile Dynamo whose /metrics invents
series every scrape (new label sets of history-kept names, new names, long label values),
while four clients pull /history's worst case page after page, Prometheus scrapes /metrics
and /healthz is polled every 100 ms. Prints the sidecar's RSS (baseline, peak, end) against
the limit, its memory budget as /status reports it, and the longest /healthz wait.

    python bench/soak.py --kind hostile --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--kind", choices=["flapping", "hostile"], default="flapping")
    parser.add_argument("--memory-limit", default="160Mi", help="hostile: the limit the sidecar is given")
    args = parser.parse_args()
    seconds = 8.0 if args.smoke else args.seconds
    if args.kind == "hostile":
        print(json.dumps(asyncio.run(hostile(seconds, args.memory_limit)), indent=1))
        return 0
    env = {**os.environ, "DYN_SIDECAR_SOAK_SECONDS": str(seconds)}
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "tests/reliability/test_soak.py",
        ],
        cwd=ROOT,
        env=env,
        timeout=seconds + 300,
    )


class HostileDynamo:
    """A frontend and a worker on loopback whose /metrics invent series every scrape."""

    def __init__(self) -> None:
        self.scrapes = 0

    def metrics(self) -> bytes:
        self.scrapes += 1
        n = self.scrapes
        lines = ["# TYPE dynamo_frontend_requests_total counter"]
        # 1,500 new label sets of a history-kept counter each scrape, 200-character values.
        lines += [
            f'dynamo_frontend_requests_total{{model="m{n}-{i}-{"x" * 200}",status="success",'
            f'endpoint="completions",request_type="unary",error_type=""}} {n}'
            for i in range(1500)
        ]
        lines += ["# TYPE dynamo_frontend_inflight_requests gauge"]
        lines += [f'dynamo_frontend_inflight_requests{{model="m{n}-{i}"}} {i % 7}' for i in range(500)]
        lines += [f"bomb_{n}_{i} 1" for i in range(300)]  # new names too
        return ("\n".join(lines) + "\n").encode()

    async def start(self) -> tuple[Any, int]:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            if request.path.endswith("/metrics"):
                return web.Response(body=self.metrics(), content_type="text/plain")
            body: dict[str, Any]
            if request.path.startswith("/w/"):
                body = {
                    "status": "ready",
                    "uptime": {"secs": 10, "nanos": 0},
                    "endpoints": {"generate": "ready"},
                }
            elif request.path.endswith("/v1/models"):
                body = {"object": "list", "data": [{"id": "tiny"}]}
            else:
                body = {"status": "healthy", "endpoints": ["dyn://dynamo.backend.generate"], "instances": []}
            return web.json_response(body)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def hostile(seconds: float, memory_limit: str) -> dict[str, Any]:
    import aiohttp

    sys.path.insert(0, str(ROOT))
    from agent.core.signals import DynamoNames
    from agent.runtime.server import MAX_HISTORY_NAMES
    from tests.helpers import free_port

    dynamo = HostileDynamo()
    runner, dynamo_port = await dynamo.start()
    port = free_port()
    env = {**os.environ, "DYN_SIDECAR_MEMORY_LIMIT": memory_limit}
    args = [
        sys.executable,
        "-m",
        "agent.cli",
        "run",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
    ]
    args += ["--frontend-url", f"http://127.0.0.1:{dynamo_port}"]
    args += ["--worker-system-urls", f"http://127.0.0.1:{dynamo_port}/w"]
    args += [
        "--dynamo-interval",
        "2",
        "--process-interval",
        "2",
        "--startup-grace",
        "0",
        "--log-format",
        "json",
    ]
    args += ["--tcp-enabled", "false", "--gpu-enabled", "false", "--canary-enabled", "false"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    names = sorted(DynamoNames().history_names())[:MAX_HISTORY_NAMES]
    history_url = url + "/history?" + "&".join(f"name={name}" for name in names)
    healthz: list[float] = []
    counts = {"history_pages": 0, "history_bytes": 0, "scrapes": 0}
    rss: list[float] = []
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the sidecar did not become ready")
                await asyncio.sleep(0.2)
            baseline = _rss_mb(proc.pid)
            end = time.monotonic() + seconds

            async def history_client() -> None:
                offset: Any = 0
                while time.monotonic() < end:
                    async with http.get(f"{history_url}&offset={offset}") as response:
                        body = await response.read()
                    counts["history_pages"] += 1
                    counts["history_bytes"] += len(body)
                    offset = json.loads(body).get("next_offset") or 0

            async def scraper() -> None:
                while time.monotonic() < end:
                    async with http.get(url + "/metrics") as response:
                        await response.read()
                    counts["scrapes"] += 1
                    await asyncio.sleep(1.0)

            async def prober() -> None:
                while time.monotonic() < end:
                    began = time.monotonic()
                    async with http.get(url + "/healthz") as response:
                        await response.read()
                    healthz.append(time.monotonic() - began)
                    await asyncio.sleep(0.1)

            async def sampler() -> None:
                while time.monotonic() < end:
                    rss.append(_rss_mb(proc.pid))
                    await asyncio.sleep(1.0)

            await asyncio.gather(*(history_client() for _ in range(4)), scraper(), prober(), sampler())
            async with http.get(url + "/status") as response:
                status = await response.json()
        limit_mb = (status["history"]["memory_limit_bytes"] or 0) / 2**20
        return {
            "seconds": seconds,
            "memory_limit_mb": round(limit_mb, 1),
            "rss_baseline_mb": round(baseline, 1),
            "rss_peak_mb": round(max(rss, default=baseline), 1),
            "rss_end_mb": round(rss[-1] if rss else baseline, 1),
            "rss_peak_of_limit": round(max(rss, default=baseline) / limit_mb, 3) if limit_mb else None,
            "memory_budget_mb": round(status["history"]["memory_budget_bytes"] / 2**20, 1),
            "memory_budget_used_mb": round(status["history"]["memory_budget_used_bytes"] / 2**20, 1),
            "history_series": status["history"]["series"],
            "history_refused": status["history"]["refused"],
            "dynamo_scrapes": dynamo.scrapes,
            **counts,
            "healthz_polls": len(healthz),
            "healthz_longest_seconds": round(max(healthz, default=0.0), 3),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
