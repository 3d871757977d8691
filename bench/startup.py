"""Start-up: seconds from exec to the first `/readyz` 200 (every collector has run once), to
the first `/metrics` that carries Dynamo's series and to the first complete `/diagnose` (every
collector read: nothing under `unread`), watching the simulator with every collector on (8 fake
GPUs when gcc exists). Also the interpreter and imports alone, as the floor, and where the
import time goes (`python -X importtime`, self time summed by top-level package).

    python bench/startup.py            # 5 runs
    python bench/startup.py --runs 10
    python bench/startup.py --smoke    # 1 run
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gpu import fake_gpu_env  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.procs import PYTHON, http_get, start_sim  # noqa: E402


def one_run(ports: dict[str, int], env: dict[str, str]) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen(
        [PYTHON, "-m", "agent.cli", "run", "--listen-host", "127.0.0.1", "--listen-port", str(port),
         "--log-level", "warning", "--frontend-url", f"http://127.0.0.1:{ports['frontend']}",
         "--worker-system-urls", f"http://127.0.0.1:{ports['worker']}", "--process-pid", str(ports["pid"])],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out: dict[str, float] = {}
    try:
        deadline = started + 60
        while time.monotonic() < deadline and "ready" not in out:
            if "listening" not in out and http_get(base + "/healthz", timeout=1)[0] == 200:
                out["listening"] = time.monotonic() - started
            if http_get(base + "/readyz", timeout=1)[0] == 200:
                out["ready"] = time.monotonic() - started
            time.sleep(0.01)
        while time.monotonic() < deadline and ("dynamo_series" not in out or "diagnose" not in out):
            if "dynamo_series" not in out:
                status, body = http_get(base + "/metrics", timeout=2)
                if status == 200 and b"dynamo_frontend_requests_total" in body:
                    out["dynamo_series"] = time.monotonic() - started
            if "diagnose" not in out:
                status, body = http_get(base + "/diagnose", timeout=5)
                if status == 200 and not json.loads(body).get("unread", ["?"]):
                    out["diagnose"] = time.monotonic() - started
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return out


def import_breakdown(env: dict[str, str], top: int = 12) -> dict[str, float]:
    """Milliseconds of import self time by top-level package, for the modules `run` imports."""
    err = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import agent.cli, agent.runtime.sidecar, agent.runtime.server"],
        capture_output=True, text=True, check=True, env=env,
    ).stderr  # fmt: skip
    totals: dict[str, float] = {}
    for line in err.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            package = match.group(2).split(".")[0]
            totals[package] = totals.get(package, 0.0) + int(match.group(1)) / 1000
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    out = {name: round(ms, 1) for name, ms in ranked[:top]}
    out["(all)"] = round(sum(totals.values()), 1)
    return out


def run(runs: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    env = fake_gpu_env(workdir)
    imports = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([PYTHON, "-c", "import agent.cli, agent.runtime.sidecar"], check=True, env=env)
        imports.append(time.monotonic() - t0)
    sim, ports = start_sim()
    try:
        results = [one_run(ports, env) for _ in range(runs)]
    finally:
        sim.kill()
        sim.wait(timeout=10)

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)} if values else {}

    return {
        "runs": runs,
        "imports_seconds": summary(imports),
        "first_healthz_seconds": summary([r["listening"] for r in results if "listening" in r]),
        "first_readyz_seconds": summary([r["ready"] for r in results if "ready" in r]),
        "first_dynamo_series_seconds": summary([r["dynamo_series"] for r in results if "dynamo_series" in r]),
        "first_complete_diagnose_seconds": summary([r["diagnose"] for r in results if "diagnose" in r]),
        "import_ms_by_package": import_breakdown(env),
        "fake_gpus": 8 if "FAKE_NVML_STATE" in env else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(1 if args.smoke else args.runs), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
