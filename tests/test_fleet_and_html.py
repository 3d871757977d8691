"""Fleet scope against a real Prometheus server scraping several sidecars, and the HTML
report in headless Chromium."""

from __future__ import annotations

import asyncio
import html
import json
import re
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
from tests.helpers import PYTHON, base_url, free_port, wait_for


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
        cli = await asyncio.to_thread(
            subprocess.run,
            [PYTHON, "-m", "agent.cli", "diagnose", "--prometheus-url", prom, "--namespace", "inference"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 2 and "everywhere: all 3 pods" in cli.stdout
        other_ns = await asyncio.to_thread(
            subprocess.run,
            [PYTHON, "-m", "agent.cli", "diagnose", "--prometheus-url", prom, "--namespace", "elsewhere"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # No sidecar there: nothing was looked at, so not "ok".
        assert other_ns.returncode == 3 and "0 sidecars" in other_ns.stdout
        assert (
            "NOT READ: dynamo_sidecar_build_info: no sidecar's metrics in Prometheus in namespace elsewhere"
            in other_ns.stdout
        )
        # The same overrides as the pods and the alerts: a restart threshold of 3 is >= 3 here.
        overridden = await asyncio.to_thread(
            subprocess.run,
            [PYTHON, "-m", "agent.cli", "diagnose", "--prometheus-url", prom, "--format", "json",
             "--thresholds", "worker_restarted.restarts=3"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        fleet = json.loads(overridden.stdout)
        assert fleet["thresholds"] == {"worker_restarted.restarts": 3.0}
        away = await asyncio.to_thread(
            subprocess.run,
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
    from tests.helpers import get_json, post_completion

    sidecar = await make_sidecar(sim, canary_enabled="false")
    await wait_for(lambda: sidecar.ready, what="ready")
    await sim.kill_worker()  # the frontend keeps listing it: stale instance, failed requests
    for _ in range(3):
        await post_completion(http, sim.url("frontend"))

    def below(node: dict) -> list[str]:
        return [i for s in node["symptoms"] for i in [s["id"], *below(s)]]

    async def folded() -> dict | None:
        report = await get_json(http, base_url(sidecar) + "/diagnose")
        top = report["tree"][0] if report["tree"] else {}
        return report if top.get("id") == "endpoint_refused:worker" and len(below(top)) >= 2 else None

    report = await wait_for(folded, timeout=15, what="the refused worker with its symptoms folded under it")
    symptoms = below(report["tree"][0])
    direct = len(report["tree"][0]["symptoms"])
    # An age under a second reads "now": let the cause be old enough to read "Ns ago".
    since = next(f["since"] for f in report["findings"] if f["id"] == report["tree"][0]["id"])
    await wait_for(lambda: time.time() - since >= 1.5, timeout=5, what="the cause a second old")
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
    # The cause is a card; its symptoms are cards inside one folded <details> within it.
    cause = dom.index('data-id="endpoint_refused:worker"')
    fold = dom.index('<details class="symptoms">', cause)
    end = dom.index("</details>", fold)
    for symptom in symptoms:
        assert fold < dom.index(f'data-id="{symptom}"') < end, symptom
    assert '<details class="symptoms" open' not in dom  # folded until opened
    assert f"explains {direct} finding" in dom
    # Markdown-ish code in actions renders as code; ages are shown; the page reloads itself.
    spans = [span for f in report["findings"] for a in f["actions"] for span in re.findall(r"`([^`]+)`", a)]
    assert spans and all(f"<code>{html.escape(span, quote=False)}</code>" in dom for span in spans)
    assert "`" not in dom
    assert " ago)" in dom and 'http-equiv="refresh" content="15"' in dom
    assert "<script" not in dom and "http://" not in dom.split("<body>")[0]  # no external assets
    still = await asyncio.to_thread(
        subprocess.run,
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url + "&refresh=0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "http-equiv" not in still.stdout and "auto-reload off" in still.stdout
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
