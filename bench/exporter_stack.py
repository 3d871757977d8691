"""The sidecar's cost beside the exporter stack an SRE would otherwise run for the same pod,
measured side by side in one run under a real Prometheus scraping everything:

- the sidecar at its defaults (every collector on, 8 fake GPUs when gcc exists, canaries on),
- Debian's prometheus-node-exporter (default collectors),
- prometheus-process-exporter configured for the Dynamo processes,
- prometheus-blackbox-exporter probing the frontend's and the worker's health endpoints,

all watching the same Dynamo (the simulator, or a real Dynamo 1.6.1 frontend + mocker with
`--real`). Prometheus scrapes the sidecar, node_exporter, process-exporter and both blackbox
probes every `--interval` seconds; after a warm-up, CPU (user + system, % of one core) and
RSS are read from /proc for each process over `--seconds`.

    python bench/exporter_stack.py                    # 120 s at 5 s scrapes, simulator
    python bench/exporter_stack.py --real             # real Dynamo (DYNAMO_PYTHON)
    python bench/exporter_stack.py --smoke            # 5 s, for the test suite
Target (issue 28): the sidecar's CPU <= 0.6x the stack's (must be <= 0.7x).
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from bench.overhead import (  # noqa: E402
    cpu_seconds,
    fake_idle_gpus,
    quiet_state,
    rss_mb,
)
from tests.helpers import free_port, wait_for_sync  # noqa: E402
from tests.procs import PYTHON, http_get, start_sim  # noqa: E402

BINARIES = {
    "node_exporter": "prometheus-node-exporter",
    "process_exporter": "prometheus-process-exporter",
    "blackbox_exporter": "prometheus-blackbox-exporter",
    "prometheus": "prometheus",
}


def missing_binaries() -> list[str]:
    return [name for name in BINARIES.values() if shutil.which(name) is None]


def process_exporter_config(patterns: list[str]) -> str:
    """One group per Dynamo process kind, matched on its command line."""
    lines = ["process_names:"]
    for pattern in patterns:
        lines += ['  - name: "{{.Comm}}"', "    cmdline:", f"    - '{pattern}'"]
    return "\n".join(lines) + "\n"


def blackbox_config() -> str:
    return "modules:\n  http_2xx:\n    prober: http\n    timeout: 2s\n"


def prometheus_config(interval: float, jobs: dict[str, str], probes: list[str], blackbox: str) -> str:
    text = (
        f"global:\n  scrape_interval: {interval:g}s\n  scrape_timeout: {min(interval, 4):g}s\n"
        "scrape_configs:\n"
    )
    for job, target in jobs.items():
        text += f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
    text += (
        "  - job_name: blackbox\n    metrics_path: /probe\n    params:\n      module: [http_2xx]\n"
        "    static_configs:\n      - targets:\n"
        + "".join(f"        - '{url}'\n" for url in probes)
        + "    relabel_configs:\n"
        "      - source_labels: [__address__]\n        target_label: __param_target\n"
        "      - source_labels: [__param_target]\n        target_label: instance\n"
        f"      - target_label: __address__\n        replacement: '{blackbox}'\n"
    )
    return text


def query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prometheus}/api/v1/query?query={urllib.parse.quote(expression)}")
    if status != 200:
        return []
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def run(seconds: float, interval: float, real: bool, gpus: bool) -> dict[str, Any]:
    missing = missing_binaries()
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)} (apt-get install -y {' '.join(missing)})")
    workdir = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    env = fake_idle_gpus(workdir) if gpus else None
    procs: list[subprocess.Popen[Any]] = []
    dynamo = None
    try:
        if real:
            from tests.real_dynamo import RealDynamo, dynamo_python, own_processes

            python = dynamo_python()
            if python is None:
                raise SystemExit("no real Dynamo installed (DYNAMO_PYTHON)")
            dynamo = RealDynamo(python, workdir)
            dynamo.start_worker()
            dynamo.start_frontend()
            dynamo.wait_model()
            frontend, worker = dynamo.frontend_url, dynamo.worker_url
            patterns = own_processes(dynamo).split(",")
            targets = ["--process-patterns", ",".join(patterns)]
        else:
            sim, ports = start_sim()
            procs.append(sim)
            frontend = f"http://127.0.0.1:{ports['frontend']}"
            worker = f"http://127.0.0.1:{ports['worker']}"
            patterns = [r"agent\.dynamo_sim --frontend-port " + str(ports["frontend"])]
            targets = ["--process-pid", str(ports["pid"])]

        port = free_port()
        sidecar = subprocess.Popen(
            [PYTHON, "-m", "agent.cli", "run", "--listen-host", "127.0.0.1", "--listen-port", str(port),
             "--log-level", "warning", "--frontend-url", frontend, "--worker-system-urls", worker, *targets],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(sidecar)

        node_port, process_port, blackbox_port, prom_port = (free_port() for _ in range(4))
        (workdir / "process.yml").write_text(process_exporter_config(patterns))
        (workdir / "blackbox.yml").write_text(blackbox_config())
        node = subprocess.Popen(
            ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{node_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        process = subprocess.Popen(
            ["prometheus-process-exporter", f"-config.path={workdir / 'process.yml'}",
             f"-web.listen-address=127.0.0.1:{process_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        blackbox = subprocess.Popen(
            ["prometheus-blackbox-exporter", f"--config.file={workdir / 'blackbox.yml'}",
             f"--web.listen-address=127.0.0.1:{blackbox_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs += [node, process, blackbox]
        jobs = {
            "sidecar": f"127.0.0.1:{port}",
            "node_exporter": f"127.0.0.1:{node_port}",
            "process_exporter": f"127.0.0.1:{process_port}",
        }
        probes = [frontend + "/health", worker + "/health"]
        (workdir / "prometheus.yml").write_text(
            prometheus_config(interval, jobs, probes, f"127.0.0.1:{blackbox_port}")
        )
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", f"--storage.tsdb.path={workdir / 'tsdb'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(prom)
        prometheus = f"http://127.0.0.1:{prom_port}"
        wait_for_sync(lambda: http_get(prometheus + "/-/ready")[0] == 200, timeout=60, what="prometheus")
        wait_for_sync(
            lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=60, what="sidecar ready"
        )

        def all_up() -> bool:
            ups = query(prometheus, "up")
            return len(ups) == len(jobs) + len(probes) and all(r["value"][1] == "1" for r in ups)

        wait_for_sync(all_up, timeout=max(30, 4 * interval), what="every target up")
        # Warm-up: a few scrapes and collection cycles (first renders, imports, discovery).
        time.sleep(2 if seconds < 30 else min(15.0, seconds / 4))
        # The idle pod settles into quiet (agent/runtime/quiet.py) once no traffic was seen for
        # 30 s: measure it settled, as it runs for hours (a sidecar without it: 60 s more).
        if seconds >= 30:
            with contextlib.suppress(AssertionError):
                wait_for_sync(lambda: quiet_state(port).get("quiet"), timeout=60, what="quiet")
        quiet_at_start = quiet_state(port)
        watched = {"sidecar": sidecar, "node_exporter": node, "process_exporter": process,
                   "blackbox_exporter": blackbox}  # fmt: skip
        cpu0 = {name: cpu_seconds(p.pid) for name, p in watched.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        took = time.monotonic() - t0
        cpu1 = {name: cpu_seconds(p.pid) for name, p in watched.items()}
        quiet_at_end = quiet_state(port)
        rss = {name: rss_mb(p.pid) for name, p in watched.items()}
        span = max(1, int(took))
        failed = {
            r["metric"].get("job", "?") + ":" + r["metric"].get("instance", "?"): float(r["value"][1])
            for r in query(prometheus, f"count_over_time(up[{span}s]) - sum_over_time(up[{span}s])")
        }
        probe_ok = {
            r["metric"]["instance"]: float(r["value"][1])
            for r in query(prometheus, f"min_over_time(probe_success[{span}s])")
        }
        groups = {
            r["metric"]["groupname"]: int(float(r["value"][1]))
            for r in query(prometheus, "namedprocess_namegroup_num_procs")
        }
        series = {
            r["metric"]["job"]: int(float(r["value"][1])) for r in query(prometheus, "scrape_samples_scraped")
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if dynamo is not None:
            dynamo.stop()

    def row(names: list[str]) -> dict[str, float]:
        return {
            "cpu_percent_of_one_core": round(sum(100 * (cpu1[n] - cpu0[n]) / took for n in names), 3),
            "rss_mb": round(sum(rss[n] for n in names), 1),
        }

    stack = ["node_exporter", "process_exporter", "blackbox_exporter"]
    sidecar_row, stack_row = row(["sidecar"]), row(stack)
    return {
        "target": "real Dynamo 1.6.1" if real else "simulator",
        "scrape_interval_seconds": interval,
        "seconds": round(took, 1),
        "fake_gpus": 8 if env and "FAKE_NVML_STATE" in env else 0,
        # Whether the sidecar judged the pod quiet (collectors slowed) at the start and end.
        "sidecar_quiet": {
            "start": quiet_at_start.get("quiet"),
            "end": quiet_at_end.get("quiet"),
            "why_not": quiet_at_end.get("why_not"),
        },
        "sidecar": sidecar_row,
        "exporter_stack": stack_row,
        "per_exporter": {name: row([name]) for name in stack},
        "sidecar_vs_stack_cpu": round(
            sidecar_row["cpu_percent_of_one_core"] / max(1e-9, stack_row["cpu_percent_of_one_core"]), 2
        ),
        "sidecar_vs_stack_rss": round(sidecar_row["rss_mb"] / max(1e-9, stack_row["rss_mb"]), 2),
        "samples_per_scrape": series,
        "process_exporter_groups": groups,  # processes matched per group (Dynamo's)
        "failed_scrapes": failed,
        "probe_success_min": probe_ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=5.0, help="Prometheus's scrape interval")
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--no-gpus", action="store_true", help="no fake GPUs for the sidecar")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    seconds, interval = (5.0, 1.0) if args.smoke else (args.seconds, args.interval)
    print(json.dumps(run(seconds, interval, args.real, not args.no_gpus), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
