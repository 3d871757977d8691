"""Multinode deployments: the webhook fed pods shaped like the Dynamo operator's golden render
outputs (a Deployment, a LeaderWorkerSet's leader and worker, Grove's -ldr and -wkr cliques;
tests/fixtures/upstream/dynamo/operator-testdata), and a non-leader sidecar run as injected,
with no Dynamo server: it watches GPU, processes, cgroup and TCP and raises nothing critical."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from agent.config import load_config
from agent.tools.inject import SIDECAR, Options, inject
from agent.tools.webhook import mutate_review
from tests.helpers import ROOT, free_port, wait_for_sync
from tests.procs import ENV, PYTHON, http_get

RENDERS = ROOT / "tests" / "fixtures" / "upstream" / "dynamo" / "operator-testdata"
EXAMPLES = ROOT / "tests" / "fixtures" / "upstream" / "dynamo" / "examples"
NAMESPACE = "inference"


def concrete(node: Any) -> Any:
    """The golden files' matchers (`$pattern:`, `$var:`, `$strict`) as values a cluster has."""
    if isinstance(node, dict):
        return {k: concrete(v) for k, v in node.items() if not k.startswith("$") and v != "$notexists"}
    if isinstance(node, list):
        return [concrete(v) for v in node]
    if isinstance(node, str) and node.startswith("$pattern:"):
        return re.sub(r"\\", "", node[len("$pattern:") :]).replace(".*", "0")
    if isinstance(node, str) and node.startswith("$var:"):
        return "5d7c9f"
    return node


def render(case: str) -> dict[str, Any]:
    return concrete(yaml.safe_load((RENDERS / case / "output.yaml").read_text()))


def pod(name: str, template: dict[str, Any], labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """A Pod as the workload controller creates it from a template, with the labels,
    annotations and container env that controller adds."""
    spec = copy.deepcopy(template["spec"])
    for container in spec["containers"]:
        container.setdefault("env", []).extend({"name": k, "value": v} for k, v in (env or {}).items())
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {**template["metadata"]["labels"], **(labels or {})},
            "annotations": {**(template["metadata"].get("annotations") or {}), **(annotations or {})},
        },
        "spec": spec,
    }


def admitted(obj: dict[str, Any]) -> dict[str, Any]:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u1", "operation": "CREATE", "object": obj}}  # fmt: skip
    answer, outcome = mutate_review(review, Options(image="registry.example/dynamo-sidecar:test"))
    assert outcome == "patched", answer
    return jsonpatch.apply_patch(obj, json.loads(base64.b64decode(answer["response"]["patch"])))


def sidecar_env(spec: dict[str, Any]) -> dict[str, Any]:
    (sidecar,) = [c for c in spec["initContainers"] if c["name"] == SIDECAR]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in sidecar["env"]}


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, "1.30.0", strict=True)


def lws_pods(lws_webhook_first: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The leader and first worker of group 0, as LWS creates them. LWS's own pod webhook adds
    the worker index label and env; whether that ran before ours depends on webhook order."""
    templates = render("dcd/lws")["spec"]["leaderWorkerTemplate"]
    name = {
        "leaderworkerset.sigs.k8s.io/name": "lws-manifest-0",
        "leaderworkerset.sigs.k8s.io/template-revision-hash": "7b9d",
    }
    group = {
        "leaderworkerset.sigs.k8s.io/group-index": "0",
        "leaderworkerset.sigs.k8s.io/group-key": "689ce1b5",
    }
    leader_extra: dict[str, str] = {}
    worker_extra: dict[str, str] = {}
    env_leader: dict[str, str] = {}
    env_worker: dict[str, str] = {}
    if lws_webhook_first:
        leader_extra = {"leaderworkerset.sigs.k8s.io/worker-index": "0"}
        worker_extra = {"leaderworkerset.sigs.k8s.io/worker-index": "1"}
        env_leader = {"LWS_WORKER_INDEX": "0", "LWS_GROUP_SIZE": "2"}
        env_worker = {"LWS_WORKER_INDEX": "1", "LWS_GROUP_SIZE": "2"}
    leader = pod("lws-manifest-0-0", templates["leaderTemplate"], {**name, **leader_extra}, env=env_leader)
    worker = pod("lws-manifest-0-0-1", templates["workerTemplate"], {**name, **group, **worker_extra},
                 {"leaderworkerset.sigs.k8s.io/leader-name": "lws-manifest-0-0"}, env_worker)  # fmt: skip
    return leader, worker


@pytest.mark.parametrize("lws_webhook_first", [False, True])
def test_lws_leader_is_a_worker_and_its_workers_are_non_leaders(lws_webhook_first: bool) -> None:
    leader, worker = (admitted(p) for p in lws_pods(lws_webhook_first))
    for injected in (leader, worker):
        validate(injected)
    assert sidecar_env(leader["spec"])["DYN_SIDECAR_ROLE"] == "worker"
    assert sidecar_env(leader["spec"])["DYN_SIDECAR_MULTINODE_POSITION"] == "leader"
    assert sidecar_env(worker["spec"])["DYN_SIDECAR_ROLE"] == "non-leader"
    # The operator stripped the worker's probes: it serves no Dynamo system port.
    assert "readinessProbe" not in worker["spec"]["containers"][0]
    hook = worker["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "/drain?wait=false" in hook


def test_grove_cliques_and_a_deployment() -> None:
    pcs = render("dgd/grove")
    cliques = {c["name"]: c for c in pcs["spec"]["template"]["cliques"]}
    grove_env = {
        "GROVE_PCS_NAME": "grove-manifest",
        "GROVE_PCS_INDEX": "0",
        "GROVE_HEADLESS_SERVICE": "grove-manifest-0",
    }

    def grove_pod(clique: str, pclq: str) -> dict[str, Any]:
        template = {"metadata": {"labels": cliques[clique]["labels"], "annotations": cliques[clique]["annotations"]},
                    "spec": cliques[clique]["spec"]["podSpec"]}  # fmt: skip
        return pod(f"{pclq}-0", template, {"grove.io/podclique": pclq, "grove.io/podclique-pod-index": "0",
                   "app.kubernetes.io/managed-by": "grove-operator"}, env={**grove_env, "GROVE_PCLQ_NAME": pclq})  # fmt: skip

    frontend = admitted(grove_pod("frontend", "grove-manifest-0-frontend"))
    leader = admitted(grove_pod("decode-ldr", "grove-manifest-0-decode-0-decode-ldr"))
    worker = admitted(grove_pod("decode-wkr", "grove-manifest-0-decode-0-decode-wkr"))
    for injected in (frontend, leader, worker):
        validate(injected)
    assert sidecar_env(frontend["spec"])["DYN_SIDECAR_ROLE"] == "frontend"
    assert "DYN_SIDECAR_MULTINODE_POSITION" not in sidecar_env(frontend["spec"])
    assert sidecar_env(leader["spec"])["DYN_SIDECAR_ROLE"] == "worker"
    assert sidecar_env(worker["spec"])["DYN_SIDECAR_ROLE"] == "non-leader"
    # The frontend's hook holds SIGTERM while its streams finish; the workers' return at once.
    front_hook = frontend["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "/drain'" in front_hook and "timeout=55" in front_hook
    # A single-node Deployment's pod; a `role: worker` label alone (a common label name) is
    # not taken for an LWS worker.
    deployment = render("dcd/deployment")
    template = deployment["spec"]["template"]
    single = pod("deployment-manifest-7d9-x", template, {"role": "worker"})
    injected = admitted(single)
    validate(injected)
    env = sidecar_env(injected["spec"])
    assert env["DYN_SIDECAR_ROLE"] == template["metadata"]["labels"][
        "nvidia.com/dynamo-component-type"
    ].replace("decode", "worker")
    assert "DYN_SIDECAR_MULTINODE_POSITION" not in env


def kubelet_env(container: dict[str, Any], pod_meta: dict[str, Any]) -> dict[str, str]:
    """The env the kubelet gives `container` in a pod with this metadata: downward-API
    fields resolved (an absent label is empty) and $(VAR) expanded from the entries above."""
    out: dict[str, str] = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
            value = (
                pod_meta.get("labels", {}).get(label.group(1), "") if label
                else {"metadata.name": pod_meta["name"], "metadata.namespace": NAMESPACE, "spec.nodeName": "gpu-node-7"}.get(path, "")
            )  # fmt: skip
        else:
            value = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: out.get(m.group(1), m.group(0)), entry["value"]
            )
        out[entry["name"]] = value
    return out


def multinode_sidecar() -> dict[str, Any]:
    """The sidecar `inject` adds to NVIDIA's vLLM disagg-multinode decode component."""
    dgd = yaml.safe_load((EXAMPLES / "v1beta1" / "vllm" / "disagg-multinode.yaml").read_text())
    out, _ = inject(dgd, Options(image="registry.example/dynamo-sidecar:test"))
    decode = next(c for c in out["spec"]["components"] if c["name"] == "decode")
    return decode["podTemplate"]["spec"]["initContainers"][0]


def test_a_dgd_multinode_component_resolves_its_role_from_the_pods_own_labels() -> None:
    """One template, rendered by the operator into leader and non-leader pods: the role is
    decided in each pod from the labels LWS/Grove pods carry (downward API)."""
    sidecar = multinode_sidecar()
    cases = {
        "LWS leader": ({"role": "leader"}, "worker"),
        "LWS worker": ({"role": "worker"}, "non-leader"),
        "Grove leader clique": ({"grove.io/podclique": "vllm-disagg-0-decode-0-decode-ldr"}, "worker"),
        "Grove worker clique": ({"grove.io/podclique": "vllm-disagg-0-decode-0-decode-wkr"}, "non-leader"),
        "Grove GMS weight server clique": ({"grove.io/podclique": "llm-serving-mn-0-agg-gms-0"}, "non-leader"),
        "Grove worker with a user `role` label": (
            {"role": "gpu", "grove.io/podclique": "vllm-disagg-0-decode-0-decode-wkr"}, "non-leader"),
    }  # fmt: skip
    for case, (labels, role) in cases.items():
        env = kubelet_env(sidecar, {"name": "p", "labels": labels})
        config = load_config(environ=env, warn=lambda message: None)
        assert config.role == role, (case, env["DYN_SIDECAR_MULTINODE_POSITION"])


POD_INIT = """
import os, subprocess, sys
sidecar = subprocess.Popen([sys.executable, "-m", "agent.cli", *sys.argv[2:]])
flag = sys.argv[1]
while not os.path.exists(flag):  # the test says when main starts
    if sidecar.poll() is not None:
        sys.exit(sidecar.returncode)
    os.system("sleep 0.05")
# A stand-in for what the operator runs in a vLLM non-leader's main (no Ray here): its
# command line, `ray start --address=<leader>:6379 --block`, is what the sidecar looks for.
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "ray", "start",
                  "--address=vllm-disagg-decode-0.leader:6379", "--block"])
sidecar.wait()
"""


@pytest.mark.slow
def test_non_leader_sidecar_run_as_injected_raises_nothing_critical(tmp_path: Path) -> None:
    """The container as injected into an LWS worker pod (its args, its env as the kubelet
    resolves it), in a PID namespace of its own as in a pod with shareProcessNamespace, with
    no Dynamo server anywhere. Test-only overrides: a free loopback port, a 2 s start-up
    grace instead of 60 s, a 0.5 s process interval, and no TCP collector (the network
    namespace is the host's, whose socket table is not the pod's). First main runs nothing
    (its Ray agent died): a warning, never critical; then main runs the Ray agent: nothing to
    say."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
        ).returncode
    ):
        pytest.skip("cannot create a PID namespace here (unshare needs root or user namespaces)")
    sidecar = multinode_sidecar()
    env = kubelet_env(sidecar, {"name": "vllm-disagg-decode-0-0-1", "labels": {"role": "worker"}})
    port = free_port()
    as_injected = load_config(environ=env, warn=lambda message: None)
    assert as_injected.role == "non-leader" and as_injected.tcp_enabled and as_injected.gpu_enabled
    assert not as_injected.watch_frontend and not as_injected.watch_workers  # no endpoint, no canary
    env.update({"DYN_SIDECAR_LISTEN_HOST": "127.0.0.1", "DYN_SIDECAR_LISTEN_PORT": str(port),
                "DYN_SIDECAR_STARTUP_GRACE": "2s", "DYN_SIDECAR_PROCESS_INTERVAL": "0.5",
                "DYN_SIDECAR_TCP_ENABLED": "false", "DYN_SIDECAR_LOG_FORMAT": "json"})  # fmt: skip
    init = tmp_path / "pod_init.py"
    init.write_text(POD_INIT)
    main_started = tmp_path / "main-started"
    pod_ns = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
         PYTHON, str(init), str(main_started), *sidecar["args"]],
        env={**ENV, **env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def findings() -> dict[str, dict[str, Any]]:
        report = json.loads(http_get(url + "/diagnose?format=json")[1])
        return {f["rule"]: f for f in report["findings"]}

    try:
        wait_for_sync(lambda: http_get(url + "/readyz")[0] == 200, timeout=30, what="sidecar ready")
        status = json.loads(http_get(url + "/status")[1])
        assert status["config"]["role"] == "non-leader"
        assert status["config"]["multinode_position"] == "worker"
        # No Dynamo endpoint to watch: no health or metrics collector runs at all.
        assert set(status["collectors"]) == {"process", "cgroup", "gpu"}
        assert status["uptime_seconds"] < 2, "started too slowly to see the start-up grace"
        assert "no_dynamo_process" not in findings()  # still in the start-up grace
        missing = wait_for_sync(lambda: findings().get("no_dynamo_process"), timeout=20, what="grace over")
        assert missing["severity"] == "warning"
        assert "multinode agent (ray, sshd, dynamo --headless)" in missing["summary"]
        assert missing["actions"][0].startswith("This is a multinode non-leader pod")
        now = findings()
        assert [f for f in now.values() if f["severity"] == "critical"] == []
        assert not set(now) & {"endpoint_refused", "endpoint_timeout", "dynamo_starting", "canary_failing"}
        main_started.touch()
        wait_for_sync(
            lambda: findings().get("no_dynamo_process", {}).get("severity") in (None, "info"),
            timeout=20,
            what="the Ray agent seen",
        )
        now = findings()
        assert [f for f in now.values() if f["severity"] in {"warning", "critical"}] == [], now

        def matched() -> float | None:
            found = re.search(
                r"^dynamo_sidecar_processes_matched (\S+)$", http_get(url + "/metrics")[1].decode(), re.M
            )
            return float(found.group(1)) if found else None

        wait_for_sync(lambda: matched() == 1, timeout=10, what="the Ray agent counted in /metrics")
    finally:
        pod_ns.kill()  # --kill-child: the namespace's init, and with it every process in it
        pod_ns.communicate(timeout=30)
