"""Fleet scope against a real Prometheus server scraping several sidecars, and the HTML
report in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from agent.diagnose.fleet import evaluate_fleet, fleet_queries
from agent.dynamo_sim import DynamoSim
from agent.facts import EndpointFacts, HealthFacts
from tests.conftest import PYTHON, base_url, free_port, wait_for


def _promql_ok(base: str, promql: str) -> bool:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["status"] == "success"
    except OSError:
        return False


def _scrape_targets_up(base: str, count: int) -> bool:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": "sum(up)"})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.loads(response.read())["data"]["result"]
    except OSError:
        return False
    return bool(result) and float(result[0]["value"][1]) >= count


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus server not installed (Debian package 'prometheus')"
)
async def test_fleet_scope_one_pod_then_everywhere(make_sidecar) -> None:
    sims = [DynamoSim() for _ in range(3)]
    for sim in sims:
        await sim.start("127.0.0.1", 0, 0)
    sidecars = [await make_sidecar(sim, canary_enabled="false") for sim in sims]
    workdir = Path(tempfile.mkdtemp(prefix="fleet-"))
    port = free_port()
    placement = [
        ("dynamo-frontend-a", "node-1"),
        ("dynamo-frontend-b", "node-2"),
        ("dynamo-frontend-c", "node-2"),
    ]
    targets = "\n".join(
        f"      - targets: ['127.0.0.1:{sidecar.port}']\n        labels: {{pod: {pod}, node: {node}, namespace: inference}}"
        for sidecar, (pod, node) in zip(sidecars, placement, strict=True)
    )
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: sidecars\n    static_configs:\n"
        + targets
        + "\n"
    )
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prom = f"http://127.0.0.1:{port}"
    try:
        await wait_for(
            lambda: _scrape_targets_up(prom, 3),
            timeout=30,
            interval=0.5,
            what="prometheus scraping 3 sidecars",
        )
        # Every fleet query is valid PromQL for this Prometheus.
        for rule, promql in fleet_queries("inference").items():
            assert await asyncio.to_thread(_promql_ok, prom, promql), (rule, promql)
        healthy = await asyncio.to_thread(evaluate_fleet, prom, "inference")
        assert healthy["sidecars"] == 3 and healthy["findings"] == []
        await sims[0].stop_part("frontend")

        async def one_pod() -> dict | None:
            report = await asyncio.to_thread(evaluate_fleet, prom, "inference")
            return next((f for f in report["findings"] if f["rule"] == "endpoint_refused"), None)

        finding = await wait_for(one_pod, timeout=30, interval=0.5, what="refused on one pod")
        assert finding["scope"] == "one pod: inference/dynamo-frontend-a on node node-1"
        assert finding["category"] == "startup_failure" and finding["actions"]
        for sim in sims[1:]:
            sim.faults.worker_gone = True

        async def node_two() -> dict | None:
            report = await asyncio.to_thread(evaluate_fleet, prom, "inference")
            found = next((f for f in report["findings"] if f["rule"] == "frontend_no_instances"), None)
            return found if found and len(found["pods"]) == 2 else None

        finding = await wait_for(node_two, timeout=30, interval=0.5, what="no instances on node-2")
        assert finding["scope"] == "one node: node-2 (all pods there)"
        await sims[1].stop_part("frontend")
        await sims[2].stop_part("frontend")

        async def everywhere() -> dict | None:
            report = await asyncio.to_thread(evaluate_fleet, prom, "inference")
            found = next((f for f in report["findings"] if f["rule"] == "endpoint_refused"), None)
            return found if found and found["scope"].startswith("everywhere") else None

        finding = await wait_for(everywhere, timeout=30, interval=0.5, what="refused everywhere")
        assert finding["scope"] == "everywhere: all 3 pods"
        # The CLI: text, and exit code 2 for a critical finding; 3 when Prometheus is away.
        cli = subprocess.run(
            [PYTHON, "-m", "agent.cli", "diagnose", "--prometheus-url", prom, "--namespace", "inference"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 2 and "everywhere: all 3 pods" in cli.stdout
        other_ns = subprocess.run(
            [PYTHON, "-m", "agent.cli", "diagnose", "--prometheus-url", prom, "--namespace", "elsewhere"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other_ns.returncode == 0 and "0 sidecars" in other_ns.stdout
        away = subprocess.run(
            [PYTHON, "-m", "agent.cli", "diagnose", "--prometheus-url", f"http://127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert away.returncode == 3
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
        for sim in sims:
            await sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed (Debian package 'chromium')"
)
async def test_html_report_in_headless_chromium(sim, make_sidecar, http, tmp_path: Path) -> None:
    sidecar = await make_sidecar(sim, canary_enabled="false")
    sim.faults.worker_notready = True
    await wait_for(
        lambda: (
            sidecar.state.facts("dynamo_health", HealthFacts)
            .endpoints.get("worker", EndpointFacts("worker", ""))
            .probe()
            .status
            == "notready"
        ),
        what="notready seen",
    )
    url = base_url(sidecar) + "/diagnose?format=html"
    profile = tmp_path / "profile"
    dump = await asyncio.to_thread(
        subprocess.run,
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = dump.stdout
    assert 'data-id="worker_notready_endpoints_ready:worker"' in dom
    assert "health-check payloads are not registered" in dom
    assert "DYN_HEALTH_CHECK_ENABLED" in dom
    assert "<script" not in dom and "http://" not in dom.split("<body>")[0]  # no external assets
    shot = tmp_path / "diagnose.png"
    await asyncio.to_thread(
        subprocess.run,
        [
            "chromium",
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            url,
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
    _ = time
