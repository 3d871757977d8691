"""Do the sidecar's derived TTFT quantiles agree with PromQL's histogram_quantile?

Starts a Dynamo (the simulated one, or a real frontend + mocker with --real), the sidecar,
and a real Prometheus server (Debian package `prometheus`) scraping Dynamo's /metrics
directly; sends bounded traffic with varied TTFT; then compares, for p50/p90/p99, the
sidecar's window quantile with

    histogram_quantile(q, sum by (le) (increase(<ttft>_bucket[W])))

evaluated by Prometheus at the same moment. Agreement means within one bucket width.

    python bench/quantile_agreement.py            # simulated Dynamo
    python bench/quantile_agreement.py --real     # real Dynamo (needs ~/.cache/dynamo-sidecar/dynamo-1.6.1)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from agent.config import load_config
from agent.dynamo_sim import DynamoSim
from agent.runtime.sidecar import Sidecar

TTFT = "dynamo_frontend_time_to_first_token_seconds"
WINDOW = 60.0
QUANTILES = (0.5, 0.9, 0.99)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_prometheus(frontend: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    target = urllib.parse.urlsplit(frontend).netloc
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: dynamo\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def promql(base: str, query: str, at: float) -> float | None:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.loads(response.read())
    except OSError:
        return None  # not up yet
    result = data["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value  # NaN


def bucket_bounds(metrics_text: str) -> list[float]:
    bounds = set()
    for line in metrics_text.splitlines():
        if line.startswith(TTFT + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bounds.add(float(le))
    return sorted(bounds)


def bucket_width(bounds: list[float], value: float) -> float:
    previous = 0.0
    for bound in bounds:
        if value <= bound:
            return bound - previous if bound != float("inf") else float("inf")
        previous = bound
    return float("inf")


async def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.25)
    raise TimeoutError(what)


async def run(requests: int = 120, real: bool = False) -> dict[str, Any]:
    if shutil.which("prometheus") is None:
        raise RuntimeError("prometheus server not installed (Debian package 'prometheus')")
    workdir = Path(tempfile.mkdtemp(prefix="quantiles-"))
    sim: DynamoSim | None = None
    dynamo = None
    if real:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.real_dynamo import RealDynamo, dynamo_python

        python = dynamo_python()
        if python is None:
            raise RuntimeError("real Dynamo not installed")
        dynamo = RealDynamo(python, workdir)
        dynamo.start_worker(speedup=1.0)
        dynamo.start_frontend()
        dynamo.wait_model()
        frontend, worker = dynamo.frontend_url, dynamo.worker_url
    else:
        sim = DynamoSim()
        await sim.start("127.0.0.1", 0, 0)
        frontend, worker = sim.url("frontend"), sim.url("worker")
    prometheus, prom_url = start_prometheus(frontend, workdir)
    sidecar = Sidecar(
        load_config(
            overrides={
                "listen_host": "127.0.0.1",
                "listen_port": "0",
                "frontend_url": frontend,
                "worker_system_urls": worker,
                "dynamo_interval": "1",
                "process_interval": "5",
                "signal_window": str(WINDOW),
                "process_pid": "0",
            }
        )
    )
    await sidecar.start()
    try:
        await wait_until(lambda: promql(prom_url, "up", time.time()) == 1.0, 30, "prometheus scraping")
        started = time.time()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for index in range(requests):
                if sim is not None:
                    # A spread of TTFTs across several buckets.
                    sim.faults.ttft_extra = random.choice((0.0, 0.0, 0.003, 0.01, 0.02, 0.05))
                    sim.faults.token_delay = 0.001
                async with session.post(
                    frontend + "/v1/completions",
                    json={"model": "tiny", "prompt": "hi", "max_tokens": 2 + index % 5},
                ) as response:
                    await response.read()
        traffic_seconds = time.time() - started
        # Let both scrape the final state twice.
        await asyncio.sleep(2.5)
        at = time.time()
        async with aiohttp.ClientSession() as session, session.get(frontend + "/metrics") as response:
            bounds = bucket_bounds(await response.text())
        rows = []
        for quantile in QUANTILES:
            ours = sidecar.state.window_quantile(TTFT, quantile, WINDOW, now=at)
            theirs = promql(
                prom_url,
                f"histogram_quantile({quantile}, sum by (le) (increase({TTFT}_bucket[{int(WINDOW)}s])))",
                at,
            )
            width = bucket_width(bounds, theirs) if theirs is not None else float("inf")
            agree = ours is not None and theirs is not None and abs(ours - theirs) <= width
            rows.append(
                {
                    "quantile": quantile,
                    "sidecar": ours,
                    "promql": theirs,
                    "bucket_width": width,
                    "agree": agree,
                }
            )
        return {
            "dynamo": "real" if real else "simulated",
            "requests": requests,
            "traffic_seconds": round(traffic_seconds, 2),
            "window_seconds": WINDOW,
            "rows": rows,
        }
    finally:
        await sidecar.stop()
        prometheus.terminate()
        prometheus.wait(timeout=10)
        if sim is not None:
            await sim.stop()
        if dynamo is not None:
            dynamo.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--real", action="store_true", help="use a real Dynamo frontend + mocker")
    parser.add_argument("--smoke", action="store_true", help="small run for CI")
    args = parser.parse_args()
    result = asyncio.run(run(30 if args.smoke else args.requests, args.real))
    for row in result["rows"]:
        print(
            f"p{row['quantile'] * 100:g}: sidecar {row['sidecar']:.6f}s  promql {row['promql']:.6f}s  bucket width {row['bucket_width']:.6f}s  {'AGREE' if row['agree'] else 'DISAGREE'}"
        )
    print(json.dumps(result))
    sys.exit(0 if all(row["agree"] for row in result["rows"]) else 1)


if __name__ == "__main__":
    main()
