"""`/metrics` under load, side by side with its anchors, in one run:

- the sidecar (watching the simulator, every collector at 1 s, 8 fake GPUs when gcc exists),
- Debian's prometheus-node-exporter (default collectors),
- a bare aiohttp app returning the sidecar's exposition bytes (the ceiling for the server),

each under wrk at 1 and 50 connections (bounded: loopback, fixed duration), while a real
Prometheus scrapes the sidecar every second; afterwards Prometheus is asked how many of its
scrapes failed.

    python bench/scrape.py               # 15 s per wrk run
    python bench/scrape.py --seconds 5   # shorter
    python bench/scrape.py --smoke       # 1 s runs, no Prometheus (the test suite)
Targets (issue 14): >= 50x node_exporter and >= 80 % of bare aiohttp in requests/s, p99
within 1.5x of bare aiohttp's; no failed Prometheus scrape.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gpu import fake_gpu_env  # noqa: E402
from tests.helpers import free_port, wait_for_sync  # noqa: E402
from tests.procs import PYTHON, http_get, start_sim  # noqa: E402

BARE_APP = """
import sys
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def metrics(request):
    return web.Response(body=body, content_type="text/plain", charset="utf-8")
app = web.Application()
app.router.add_get("/metrics", metrics)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _seconds(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def wrk(url: str, connections: int, seconds: float) -> dict[str, Any]:
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--latency",
         "-H", "Accept-Encoding: identity", url],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\n\s+50%\s+(\S+)", out)
    p99 = re.search(r"\n\s+99%\s+(\S+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    answered = int(total.group(1)) if total else 0
    non_2xx = int(errors.group(1)) if errors else 0
    return {
        "requests_per_second": float(rate.group(1)) if rate else None,
        # What a scraper can use: node_exporter answers 503 past 40 scrapes in flight, and
        # wrk counts those answers in Requests/sec too.
        "ok_requests_per_second": (
            round(float(rate.group(1)) * (answered - non_2xx) / answered, 2) if rate and answered else None
        ),
        "p50_ms": round(_seconds(p50.group(1)) * 1000, 2) if p50 else None,
        "p99_ms": round(_seconds(p99.group(1)) * 1000, 2) if p99 else None,
        "non_2xx": non_2xx,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def prometheus_config(target: str, directory: Path) -> Path:
    path = directory / "prometheus.yml"
    path.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: sidecar\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    return path


def query(prometheus: str, expression: str) -> float | None:
    status, body = http_get(f"{prometheus}/api/v1/query?query={urllib.parse.quote(expression)}")
    if status != 200:
        return None
    result = json.loads(body)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def run(seconds: float, smoke: bool) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    env = fake_gpu_env(workdir)
    procs: list[subprocess.Popen[Any]] = []
    sim, ports = start_sim()
    procs.append(sim)
    try:
        port = free_port()
        args = [PYTHON, "-m", "agent.cli", "run", "--listen-host", "127.0.0.1", "--listen-port", str(port),
                "--log-level", "warning", "--frontend-url", f"http://127.0.0.1:{ports['frontend']}",
                "--worker-system-urls", f"http://127.0.0.1:{ports['worker']}", "--process-pid", str(ports["pid"]),
                "--collector-timeout", "0.8"]  # fmt: skip
        for key in ("dynamo-interval", "process-interval", "gpu-interval", "tcp-interval"):
            args += [f"--{key}", "1"]
        sidecar = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sidecar)
        sidecar_url = f"http://127.0.0.1:{port}/metrics"
        wait_for_sync(
            lambda: http_get(sidecar_url.replace("/metrics", "/readyz"))[0] == 200, timeout=60, what="ready"
        )
        time.sleep(3)  # a few cycles: GPU, TCP and Dynamo series all present
        body = http_get(sidecar_url)[1]
        (workdir / "body").write_bytes(body)

        bare_port = free_port()
        (workdir / "bare.py").write_text(BARE_APP)
        bare = subprocess.Popen([PYTHON, str(workdir / "bare.py"), str(bare_port), str(workdir / "body")])
        procs.append(bare)
        bare_url = f"http://127.0.0.1:{bare_port}/metrics"
        wait_for_sync(lambda: http_get(bare_url)[0] == 200, timeout=30, what="bare app")

        node_url = ""
        if shutil.which("prometheus-node-exporter"):
            node_port = free_port()
            node = subprocess.Popen(
                ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{node_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(node)
            node_url = f"http://127.0.0.1:{node_port}/metrics"
            wait_for_sync(lambda: http_get(node_url)[0] == 200, timeout=30, what="node_exporter")

        prometheus_url = ""
        if not smoke and shutil.which("prometheus"):
            prom_port = free_port()
            config = prometheus_config(f"127.0.0.1:{port}", workdir)
            prom = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--web.listen-address=127.0.0.1:{prom_port}",
                 f"--storage.tsdb.path={workdir / 'tsdb'}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(prom)
            prometheus_url = f"http://127.0.0.1:{prom_port}"
            wait_for_sync(
                lambda: http_get(prometheus_url + "/-/ready")[0] == 200, timeout=60, what="prometheus"
            )
        started = time.time()

        results: dict[str, Any] = {"body_bytes": {"sidecar": len(body)}}
        if node_url:
            results["body_bytes"]["node_exporter"] = len(http_get(node_url)[1])
        for connections in (1, 50):
            row: dict[str, Any] = {}
            for name, url in (
                ("sidecar", sidecar_url),
                ("bare_aiohttp", bare_url),
                ("node_exporter", node_url),
            ):
                if url:
                    row[name] = wrk(url, connections, seconds)
            side, bare_row, node_row = row["sidecar"], row["bare_aiohttp"], row.get("node_exporter")
            row["sidecar_vs_bare_rps"] = round(
                side["requests_per_second"] / bare_row["requests_per_second"], 2
            )
            row["sidecar_vs_bare_p99"] = round(side["p99_ms"] / bare_row["p99_ms"], 2)
            if node_row and node_row["ok_requests_per_second"]:
                row["sidecar_vs_node_exporter_rps"] = round(
                    side["ok_requests_per_second"] / node_row["ok_requests_per_second"], 1
                )
            results[f"connections_{connections}"] = row
        for line in http_get(sidecar_url)[1].decode().splitlines():
            if line.startswith("dynamo_sidecar_exposition_render_seconds "):
                results["render_seconds_last_cycle"] = round(float(line.split()[1]), 5)
            if line.startswith("dynamo_sidecar_exposition_render_longest_step_seconds "):
                results["render_longest_step_seconds"] = round(float(line.split()[1]), 5)
        if prometheus_url:
            time.sleep(2)  # the last scrapes land
            span = int(time.time() - started)
            scrapes = query(prometheus_url, f'count_over_time(up{{job="sidecar"}}[{span}s])')
            good = query(prometheus_url, f'sum_over_time(up{{job="sidecar"}}[{span}s])')
            slowest = query(
                prometheus_url, f'max_over_time(scrape_duration_seconds{{job="sidecar"}}[{span}s])'
            )
            results["prometheus"] = {
                "scrape_interval_seconds": 1,
                "scrapes": scrapes,
                "failed": None if scrapes is None or good is None else scrapes - good,
                "slowest_scrape_ms": None if slowest is None else round(slowest * 1000, 1),
            }
        return results
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="per wrk run")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(1.0 if args.smoke else args.seconds, args.smoke), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
