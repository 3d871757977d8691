"""`dynamo-sidecar audit`: manifests shaped as users write them for the Dynamo operator, a
hardened one, bad input, and `--live` against the simulator with a real sidecar process."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from agent.core import exitcodes
from agent.tools.audit import audit_documents
from agent.tools.audit.capacity import fit_line, forecast, max_observed
from agent.tools.inject import Options, inject
from tests.helpers import free_port, wait_for_sync
from tests.procs import ENV, PYTHON, http_post, start_sidecar

OPTIONS = Options(image="registry.test/dynamo-sidecar:0.1.0")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "audit"


def load(name: str) -> list[Any]:
    return list(yaml.safe_load_all((FIXTURES / name).read_text()))


def audit_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "agent.cli", "audit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**ENV, **(env or {})},
    )


def by_rule(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for finding in result["findings"]:
        out.setdefault(finding["rule"], []).append(finding)
    return out


# --- manifests -----------------------------------------------------------------------------


def test_operator_defaults_give_the_expected_findings_paths_and_actions() -> None:
    result = audit_documents(load("dgd_defaults.yaml"))
    rules = by_rule(result)
    assert result["status"] == "critical"
    port = rules["system_port_out_of_range"][0]
    assert port["severity"] == "critical" and "VllmDecodeWorker" in port["subject"]
    assert port["evidence"][0] == {"signal": "spec.services.VllmDecodeWorker.envs[0]", "value": "40000"}
    liveness = rules["worker_liveness_single_failure"][0]
    assert liveness["evidence"][0]["signal"] == "livenessProbe (operator default)"
    assert "spec.services.VllmDecodeWorker.extraPodSpec.mainContainer.livenessProbe" in liveness["actions"][0]
    # The operator's defaults are NVIDIA's deliberate trade-offs: info, with the trade-off.
    assert liveness["severity"] == "info"
    readiness = rules["frontend_readiness_on_health"][0]
    assert readiness["severity"] == "info" and "Frontend" in readiness["subject"]
    assert "/v1/models" in readiness["actions"][1]
    # One worker pod in the graph: nowhere to migrate a stream to yet.
    migration = rules["migration_off"][0]
    assert migration["severity"] == "info"
    assert migration["actions"][0].startswith("set DYN_MIGRATION_LIMIT=3 in spec.services.Frontend.envs")
    health = rules["worker_health_check_disabled"][0]
    assert health["severity"] == "info" and "on purpose" in health["summary"]
    assert health["evidence"][0] == {
        "signal": "spec.services.VllmDecodeWorker.envs[name=DYN_HEALTH_CHECK_ENABLED]",
        "value": "false (operator default)",
    }
    # Only the frontend: a worker unregisters from discovery on SIGTERM and drains itself.
    (prestop,) = rules["no_prestop_drain"]
    assert prestop["subject"].endswith("Frontend") and prestop["severity"] == "warning"
    assert prestop["evidence"][1] == {
        "signal": "DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS (unset: 5 s)",
        "value": 5.0,
    }
    assert len(rules["main_without_resources"]) == 2
    assert {f["severity"] for f in rules["no_sidecar"]} == {"info"}
    # Dynamo's own defaults fit the operator's 60 s grace period: no finding for it.
    assert "grace_shorter_than_drain" not in rules
    for finding in result["findings"]:
        assert finding["category"] == "configuration_risk" and finding["actions"]


def test_hardened_and_injected_manifest_gives_nothing_at_warning_or_above() -> None:
    hardened = load("dgd_hardened.yaml")
    plain = by_rule(audit_documents(hardened))
    # Without the sidecar the only warning left is the frontend's missing preStop drain.
    assert {rule for rule, fs in plain.items() if any(f["severity"] != "info" for f in fs)} == {
        "no_prestop_drain"
    }
    assert [f["subject"].rsplit(" ", 1)[1] for f in plain["no_prestop_drain"]] == ["Frontend"]
    injected = [inject(document, OPTIONS)[0] for document in hardened]
    result = audit_documents(injected)
    assert result["status"] == "ok", [f["summary"] for f in result["findings"]]
    assert not [f for f in result["findings"] if f["severity"] != "info"]


def test_workloads_and_rendered_helm_output() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "worker"},
        "spec": {
            "template": {
                "metadata": {"labels": {"nvidia.com/dynamo-component-type": "worker"}},
                "spec": {
                    "terminationGracePeriodSeconds": 20,
                    "containers": [
                        {
                            "name": "main",
                            "image": "dynamo",
                            "command": ["python3", "-m", "dynamo.vllm"],
                            "env": [{"name": "DYN_HEALTH_CHECK_ENABLED", "value": "false"}],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": 9090}},
                            "livenessProbe": {
                                "httpGet": {"path": "/live", "port": 9090},
                                "failureThreshold": 1,
                            },
                        }
                    ],
                },
            }
        },
    }
    injected = inject(deployment, OPTIONS)[0]
    # A sidecar injected by hand without shareProcessNamespace or main's env.
    broken = copy.deepcopy(injected)
    broken["spec"]["template"]["spec"].pop("shareProcessNamespace")
    sidecar = broken["spec"]["template"]["spec"]["initContainers"][0]
    sidecar["env"] = [e for e in sidecar["env"] if e["name"] != "DYN_HEALTH_CHECK_ENABLED"]
    sidecar["env"].append({"name": "DYN_SIDECAR_DRAIN_TIMEOUT", "value": "30"})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    rules = by_rule(audit_documents([service, broken, None]))
    grace = rules["grace_shorter_than_drain"][0]
    assert grace["evidence"][0] == {
        "signal": "spec.template.spec.terminationGracePeriodSeconds",
        "value": 20.0,
    }
    assert "set spec.template.spec.terminationGracePeriodSeconds: 45" in grace["actions"][0]
    # Readiness on /health with the health check off: the worker never becomes ready.
    assert rules["worker_health_check_disabled"][0]["severity"] == "critical"
    # No canary: /live does no I/O, one missed probe is a stuck process (NVIDIA's choice).
    assert rules["worker_liveness_single_failure"][0]["severity"] == "info"
    assert rules["sidecar_drain_exceeds_grace"][0]["severity"] == "critical"
    assert (
        rules["sidecar_without_process_namespace"][0]["evidence"][0]["signal"]
        == "spec.template.spec.shareProcessNamespace"
    )
    assert "DYN_HEALTH_CHECK_ENABLED" in rules["sidecar_missing_dynamo_env"][0]["summary"]
    # The same through the command line, as rendered Helm output on stdin.
    out = audit_cli("-f", "-", "--format", "json", stdin=yaml.safe_dump_all([service, broken]))
    assert out.returncode == 2, out.stderr
    assert json.loads(out.stdout)["status"] == "critical"
    html = audit_cli("-f", "-", "--format", "html", stdin=yaml.safe_dump_all([service, broken]))
    assert "<!DOCTYPE html>" in html.stdout and "sidecar_drain_exceeds_grace" in html.stdout


def test_v1beta1_paths_dgd_env_and_a_worker_hook_that_holds_sigterm() -> None:
    """v1beta1 (the storage version): findings name `spec.components[i]...` paths, the DGD's
    own `spec.env` counts, and a worker preStop that blocks on /drain (what inject wrote
    before) is named: it leaves Dynamo 5 s of its own shutdown."""
    dgd: dict[str, Any] = {
        "apiVersion": "nvidia.com/v1beta1",
        "kind": "DynamoGraphDeployment",
        "metadata": {"name": "g"},
        "spec": {
            "env": [{"name": "DYN_SYSTEM_PORT", "value": "40000"}],
            "components": [
                {"name": "Frontend", "type": "frontend", "podTemplate": {"spec": {"containers": [{"name": "main", "image": "d"}]}}},
                {"name": "planner", "type": "planner"},
                {
                    "name": "decode",
                    "type": "decode",
                    "replicas": 2,
                    "podTemplate": {"spec": {"containers": [{"name": "main", "image": "d", "args": ["--model", "m"]}]}},
                },
            ],
        },
    }  # fmt: skip
    result = audit_documents([dgd, {"kind": "Foo", "metadata": {"name": "f"}}])
    rules = by_rule(result)
    assert result["pods"] == [
        "DynamoGraphDeployment g / component Frontend",
        "DynamoGraphDeployment g / component decode",
    ]
    port = rules["system_port_out_of_range"][0]
    assert port["evidence"][0] == {"signal": "spec.env[0]", "value": "40000"}
    assert rules["worker_liveness_single_failure"][0]["actions"][0].startswith(
        "set spec.components[2].podTemplate.spec.containers[0].livenessProbe"
    )
    assert rules["migration_off"][0]["severity"] == "warning"  # two decode pods to migrate between
    assert any("planner" in note for note in result["notes"])
    assert any(note.startswith("Foo f: not a kind audit knows") for note in result["notes"])
    # The hook this project injected into workers before: POST /drain, blocking up to grace - 5 s.
    old = copy.deepcopy(dgd)
    main = old["spec"]["components"][2]["podTemplate"]["spec"]["containers"][0]
    main["lifecycle"] = {
        "preStop": {
            "exec": {
                "command": [
                    "python3",
                    "-c",
                    "u.urlopen(u.Request('http://127.0.0.1:9469/drain', method='POST'), timeout=55)",
                ]
            }
        }
    }
    hold = by_rule(audit_documents([old]))["worker_prestop_holds_sigterm"][0]
    assert hold["severity"] == "warning" and "gets 5s before the kubelet's SIGKILL" in hold["summary"]
    assert hold["evidence"][0] == {
        "signal": "spec.components[2].podTemplate.spec.containers[0].lifecycle.preStop",
        "value": 55.0,
    }
    # What inject writes now returns at once: nothing to say.
    assert "worker_prestop_holds_sigterm" not in by_rule(audit_documents([inject(dgd, OPTIONS)[0]]))


def test_bad_input_is_one_clear_line() -> None:
    cases = [
        ("kind: Foo\nmetadata: {name: x}\n", "not a kind audit knows"),
        ("a: [\n", "valid YAML"),
        ("- just\n- a list\n", "not a Kubernetes object"),
        (
            "kind: DynamoGraphDeployment\nmetadata: {name: g}\nspec: {services: 3}\n",
            "spec.services: expected a mapping, got an integer",
        ),
    ]
    for text, message in cases:
        out = audit_cli("-f", "-", stdin=text)
        assert out.returncode == exitcodes.USAGE, (text, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert audit_cli().returncode == exitcodes.USAGE
    assert "cannot read it: no such file or directory" in audit_cli("-f", "/nonexistent.yaml").stderr


# --- capacity ------------------------------------------------------------------------------


def test_fit_and_forecast_on_synthetic_history() -> None:
    fit = fit_line([(t, 2.0 * t + 1) for t in range(10)])
    assert fit is not None and abs(fit.slope_per_second - 2.0) < 1e-9 and fit.r2 > 0.999
    growing = {
        "series": {
            "dynamo_frontend_queued_requests": [
                {"labels": {}, "points": [[t, t / 10] for t in range(0, 601, 5)]}
            ]
        }
    }
    findings, fits = forecast(growing, min_history=300, queue_limit=100)
    queue = [f for f in findings if f["rule"] == "capacity_queue_growing"]
    assert queue and "reaches 100 queued in" in queue[0]["summary"] and fits["queue_depth"]["r2"] > 0.99
    flat = {
        "series": {
            "dynamo_frontend_queued_requests": [
                {"labels": {}, "points": [[t, 3 + (t % 2)] for t in range(0, 601, 5)]}
            ]
        }
    }
    assert forecast(flat, min_history=300)[0] == []
    short = forecast(
        growing
        | {"series": {"dynamo_frontend_queued_requests": [{"labels": {}, "points": [[0, 0], [30, 9]]}]}},
        300,
    )[0]
    assert [f["rule"] for f in short] == ["capacity_history_short"] and short[0]["severity"] == "info"
    kv = {
        "series": {
            "vllm:kv_cache_usage_perc": [
                {"labels": {"worker_id": "a"}, "points": [[t, 0.2 + t / 1000] for t in range(0, 601, 10)]}
            ]
        }
    }
    kv_findings = forecast(kv, 300)[0]
    assert kv_findings[0]["rule"] == "capacity_kv_cache_filling" and "full in" in kv_findings[0]["summary"]
    buckets = [
        {"labels": {"le": le}, "points": [[0, 0], [60, count]]}
        for le, count in (("1", 5), ("10", 9), ("60", 10), ("+Inf", 10))
    ]
    assert max_observed(buckets) == 60.0


class FakeApiServer:
    """An API server that answers one GET pods/<name> with a pod, or 403."""

    def __init__(self, pod: dict[str, Any] | None) -> None:
        self.pod = pod
        self.port = free_port()
        self.requests: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    def _serve(self) -> None:
        async def handler(request: web.Request) -> web.Response:
            self.requests.append(request.path)
            if self.pod is None:
                return web.json_response({"kind": "Status", "code": 403}, status=403)
            return web.json_response(self.pod)

        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", handler)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _clients(frontend: str, stop: asyncio.Event, count: int, ramp: float = 0.0) -> None:
    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.post(
                        frontend + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 4}
                    ) as r:
                        await r.read()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(client()))
        if ramp:
            await asyncio.sleep(ramp)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _live(sidecar_url: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = audit_cli(
        "--live", "--sidecar-url", sidecar_url, "--min-history", "6s", "--format", "json", *extra, env=env
    )
    assert "Traceback" not in out.stderr, out.stderr
    result = json.loads(out.stdout)
    # The exit code says the status; "unknown" (3) when a source could not be read and
    # nothing at warning or above was found in the rest.
    assert out.returncode == {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}[result["status"]], out
    return result


@pytest.mark.slow
def test_live_forecasts_saturation_from_a_growing_queue_and_none_from_a_flat_load(
    sim_process: dict[str, int],
) -> None:
    frontend = f"http://127.0.0.1:{sim_process['frontend']}"
    http_post(
        f"http://127.0.0.1:{sim_process['control']}/faults", {"max_concurrency": 1, "token_delay": 0.05}
    )
    sidecar, sidecar_url = start_sidecar(sim_process, interval="0.3")
    no_api = {k: "" for k in ("POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST")}
    try:

        def audit_under_load(count: int, ramp: float, after: float) -> dict[str, Any]:
            """Audit while the load runs: the queue the sidecar sees is the load's."""

            async def go() -> dict[str, Any]:
                stop = asyncio.Event()
                load = asyncio.create_task(_clients(frontend, stop, count, ramp))
                await asyncio.sleep(after)
                result = await asyncio.to_thread(
                    _live, sidecar_url, "--trend-window", f"{after - 1:g}s", env=no_api
                )
                stop.set()
                await load
                return result

            return asyncio.run(go())

        # Flat: four clients against one slot, a steady queue of about three.
        flat = audit_under_load(4, 0.0, 8.0)
        assert not [
            f for f in flat["findings"] if f["category"] == "capacity_risk" and f["severity"] != "info"
        ], flat
        assert flat["capacity_fits"]["queue_depth"] is not None
        assert any("configuration not checked" in note for note in flat["notes"])
        # No pod spec outside a cluster: that check was not made, so the audit is not "ok".
        assert [m["source"] for m in flat["unread"]] == ["pod spec"]
        assert flat["status"] == "unknown", flat["findings"]
        # Growing: one more client every half second while the sidecar watches.
        grown = audit_under_load(20, 0.4, 8.0)
        queue = [f for f in grown["findings"] if f["rule"] == "capacity_queue_growing"]
        assert queue, (grown["capacity_fits"], grown["findings"])
        assert (
            queue[0]["evidence"][0]["value"]["slope_per_minute"] > 0
            and "reaches 100 queued in" in queue[0]["summary"]
        )
        # Too little history for a claim: said so, and nothing claimed.
        short = json.loads(
            audit_cli(
                "--live", "--sidecar-url", sidecar_url, "--min-history", "1h", "--format", "json", env=no_api
            ).stdout
        )
        assert [f["rule"] for f in short["findings"] if f["category"] == "capacity_risk"] == [
            "capacity_history_short"
        ]
    finally:
        sidecar.terminate()
        sidecar.communicate(timeout=30)


def test_live_reads_its_own_pod_spec_when_rbac_allows(sim_process: dict[str, int]) -> None:
    sidecar, sidecar_url = start_sidecar(sim_process, interval="0.3")
    pod = inject(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "fe-0", "labels": {"nvidia.com/dynamo-component-type": "frontend"}},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "dynamo",
                        "command": ["python3", "-m", "dynamo.frontend"],
                        # Below what the watched process (the simulator, ~40 MB) uses.
                        "resources": {"limits": {"memory": "16Mi"}},
                    }
                ]
            },
        },
        OPTIONS,
    )[0]
    try:
        api = FakeApiServer(pod)
        env = {"POD_NAME": "fe-0", "POD_NAMESPACE": "llm"}
        result = _live(sidecar_url, "--kube-api", api.url, env=env)
        assert api.requests == ["/api/v1/namespaces/llm/pods/fe-0"]
        assert result["pods"] == ["Pod fe-0"]
        rules = by_rule(result)
        assert "migration_off" in rules and "main_without_resources" in rules
        memory = rules["memory_limit_below_peak"][0]
        assert memory["severity"] == "critical" and memory["evidence"][0]["value"] == 16 * 2**20
        assert memory["evidence"][1]["value"] > 16 * 2**20  # the observed peak, from the history
        assert rules["migration_off"][0]["evidence"][0]["signal"].startswith("spec.containers[0]")
        assert "no_sidecar" not in rules  # it runs next to one
        denied = FakeApiServer(None)
        refused = _live(sidecar_url, "--kube-api", denied.url, env=env)
        assert any("RBAC" in note for note in refused["notes"]), refused["notes"]
        assert not [f for f in refused["findings"] if f["category"] == "configuration_risk"]
        unreachable = _live("http://127.0.0.1:9", env={**env, "KUBERNETES_SERVICE_HOST": ""})
        assert any("cannot read the sidecar" in note for note in unreachable["notes"])
        assert {m["source"] for m in unreachable["unread"]} == {"sidecar", "pod spec"}
        assert unreachable["status"] == "unknown" and unreachable["findings"] == []
    finally:
        sidecar.terminate()
        sidecar.communicate(timeout=30)
    wait_for_sync(lambda: sidecar.poll() is not None, timeout=5, what="sidecar exited")
