"""`inject` and `audit` held against NVIDIA's own DynamoGraphDeployment examples, both API
versions (tests/fixtures/upstream/dynamo, see its SOURCES): every frontend, worker, prefill and
decode gets exactly one sidecar, the result is valid by the real CRD's schema for its version,
injecting twice changes nothing, planners and EPPs are left alone, the DGD's own env reaches the
sidecar, and audit reads every example without a critical finding (and warns only where its
advice applies). The bulk calls the pure functions; two subprocess runs check the exit codes."""

from __future__ import annotations

import copy
import functools
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.tools.audit import audit_documents
from agent.tools.inject import COPIED_ENV, SIDECAR, Options, inject, role_of
from tests.crd_schema import errors
from tests.helpers import ROOT
from tests.procs import ENV, PYTHON

UPSTREAM = ROOT / "tests" / "fixtures" / "upstream" / "dynamo"
EXAMPLES = UPSTREAM / "examples"
CRD = UPSTREAM / "crd" / "nvidia.com_dynamographdeployments.yaml"
VERSIONS = ("v1alpha1", "v1beta1")
IMAGE = "registry.example/dynamo-sidecar:test"
OPTIONS = Options(image=IMAGE)
# Warnings a stock example may still get, because they apply to it as shipped.
APPLIES = {
    "main_without_resources",  # no cpu/memory request: BestEffort QoS, placed blind, evicted first
    "no_prestop_drain",  # frontends only: Dynamo's own 5 s drain cuts longer streams
    "migration_off",  # only where the graph runs two or more worker pods to migrate to
}


def example_files(version: str) -> list[Path]:
    return sorted(EXAMPLES.joinpath(version).rglob("*.yaml"))


@functools.cache
def _parsed(path: Path) -> tuple[Any, ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=loader) if d is not None)


def documents(path: Path) -> list[Any]:
    """The file's documents (parsed once; a fresh copy each call, so a test may change them)."""
    return copy.deepcopy(list(_parsed(path)))


def dgds(version: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (str(path.relative_to(EXAMPLES)), doc)
        for path in example_files(version)
        for doc in documents(path)
        if doc.get("kind") == "DynamoGraphDeployment"
    ]


def units(dgd: dict[str, Any]) -> list[tuple[str, str | None, dict[str, Any], dict[str, Any], int]]:
    """(name, sidecar role or None, pod spec, main container, node count) per service/component."""
    out = []
    spec = dgd["spec"]
    if dgd["apiVersion"].endswith("/v1beta1"):
        for component in spec["components"]:
            pod = (component.get("podTemplate") or {}).get("spec") or {}
            main: dict[str, Any] = next(
                (c for c in pod.get("containers") or [] if c.get("name") == "main"), {}
            )
            nodes = (component.get("multinode") or {}).get("nodeCount", 1)
            out.append((component["name"], role_of(component.get("type")), pod, main, nodes))
    else:
        for name, service in spec["services"].items():
            role = role_of(service.get("subComponentType")) or role_of(service.get("componentType"))
            pod = service.get("extraPodSpec") or {}
            nodes = (service.get("multinode") or {}).get("nodeCount", 1)
            out.append((name, role, pod, pod.get("mainContainer") or {}, nodes))
    return out


def env_map(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in entries}


def test_the_corpus_is_nvidias_examples_of_both_versions_with_their_licence() -> None:
    counts = Counter(
        (p.relative_to(EXAMPLES).parts[0], p.relative_to(EXAMPLES).parts[1]) for p in EXAMPLES.rglob("*.yaml")
    )
    assert counts == {
        ("v1alpha1", "mocker"): 2, ("v1alpha1", "sglang"): 7, ("v1alpha1", "trtllm"): 7, ("v1alpha1", "vllm"): 26,
        ("v1beta1", "mocker"): 2, ("v1beta1", "sglang"): 7, ("v1beta1", "trtllm"): 8, ("v1beta1", "vllm"): 29,
    }  # fmt: skip
    for path in UPSTREAM.rglob("*.yaml"):
        assert "SPDX-License-Identifier: Apache-2.0" in path.read_text()[:400], path
    sources = (UPSTREAM / "SOURCES").read_text()
    assert "2a6da14c83617f5412caba5777dbf0e2399e9c5f" in sources and "Apache-2.0" in sources
    for version in VERSIONS:
        assert {doc["apiVersion"] for _, doc in dgds(version)} == {f"nvidia.com/{version}"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_served_component_gets_exactly_one_valid_idempotent_sidecar(version: str) -> None:
    injected_count = 0
    skipped: Counter[str] = Counter()
    for where, dgd in dgds(version):
        assert errors(CRD, dgd) == [], where  # the validator accepts NVIDIA's own examples
        out, notes = inject(dgd, OPTIONS)
        assert inject(out, OPTIONS)[0] == out, f"{where}: injecting twice changed it"
        assert errors(CRD, out) == [], where
        dgd_env = env_map(dgd["spec"].get("env") or dgd["spec"].get("envs") or [])
        for (name, role, pod, main, nodes), (_, _, before, _, _) in zip(units(out), units(dgd), strict=True):
            sidecars = [c for c in pod.get("initContainers") or [] if c["name"] == SIDECAR]
            assert not [c for c in pod.get("containers") or [] if c["name"] == SIDECAR], where
            if role is None:
                assert pod == before, where
                skipped[next(n for n in notes if f" {name}: " in n).split("type ")[1].split(" ")[0]] += 1
                continue
            assert len(sidecars) == 1, f"{where} {name}"
            injected_count += 1
            sidecar = sidecars[0]
            env = env_map(sidecar["env"])
            assert env["DYN_SIDECAR_ROLE"] == role, f"{where} {name}"
            assert sidecar["image"] == IMAGE  # the CRD's CEL rule: an init container needs an image
            assert pod["shareProcessNamespace"] is True and main["lifecycle"]["preStop"]
            # The DGD's own env reaches the sidecar unless the service or main override it.
            own = env_map(main.get("env") or [])
            for key, value in dgd_env.items():
                if COPIED_ENV.search(key) and key not in own:
                    assert env[key] == value, f"{where} {name}: {key}"
            differ = nodes > 1 or ("gms-failover" in where and name == "agg")  # inter-pod GMS
            assert ("DYN_SIDECAR_MULTINODE_POSITION" in env) == (role == "worker" and differ), (
                f"{where} {name}"
            )
    frontends_and_workers = {"v1alpha1": 104, "v1beta1": 111}[version]
    assert injected_count == frontends_and_workers
    assert skipped == ({"'planner'": 4} if version == "v1alpha1" else {"'planner'": 4, "'epp'": 2})


def test_dgd_level_observability_env_reaches_the_sidecar() -> None:
    """NVIDIA's tracing example puts OTLP and JSONL logging at the DGD level."""
    for version, key in (("v1beta1", "env"), ("v1alpha1", "envs")):
        dgd = documents(EXAMPLES / version / "vllm" / "agg_tracing.yaml")[0]
        assert {e["name"] for e in dgd["spec"][key]} >= {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "DYN_LOGGING_JSONL",
        }
        out, _ = inject(dgd, OPTIONS)
        for name, _, pod, _, _ in units(out):
            env = env_map(pod["initContainers"][0]["env"])
            assert (
                env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
                == "http://tempo.observability.svc.cluster.local:4317"
            )
            assert env["DYN_LOGGING_JSONL"] == "true", (version, name)
        # The service's own value wins over the DGD's, as the operator merges them.
        changed = copy.deepcopy(dgd)
        if version == "v1beta1":
            main = changed["spec"]["components"][1]["podTemplate"]["spec"]["containers"][0]
            main.setdefault("env", []).append({"name": "DYN_LOGGING_JSONL", "value": "false"})
        else:
            worker = next(s for s in changed["spec"]["services"].values() if s["componentType"] == "worker")
            worker.setdefault("envs", []).append({"name": "DYN_LOGGING_JSONL", "value": "false"})
        out, _ = inject(changed, OPTIONS)
        worker_env = env_map(units(out)[1][2]["initContainers"][0]["env"])
        assert worker_env["DYN_LOGGING_JSONL"] == "false"


@pytest.mark.parametrize("version", VERSIONS)
def test_audit_reads_every_example_and_warns_only_where_the_advice_applies(version: str) -> None:
    for path in example_files(version):
        docs = documents(path)
        for injected in (False, True):
            result = audit_documents([inject(d, OPTIONS)[0] for d in docs] if injected else docs)
            where = f"{path.relative_to(EXAMPLES)} (injected: {injected})"
            assert result["status"] in {"ok", "warning"}, where
            assert result["pods"], where
            warned = {f["rule"] for f in result["findings"] if f["severity"] == "warning"}
            assert warned <= APPLIES, (where, warned - APPLIES)
            for finding in result["findings"]:
                if finding["rule"] == "no_prestop_drain":
                    assert finding["subject"].lower().endswith("frontend"), where
                    assert not injected, where  # the injected frontend's preStop holds SIGTERM
                if finding["rule"] == "migration_off" and finding["severity"] == "warning":
                    workers = next(
                        e["value"] for e in finding["evidence"] if e["signal"].startswith("worker pods")
                    )
                    assert workers >= 2, where
                if finding["rule"] in {"worker_health_check_disabled", "worker_liveness_single_failure"}:
                    assert finding["severity"] == "info", where  # the operator's deliberate default


def test_the_command_line_on_examples_of_both_versions() -> None:
    multinode = EXAMPLES / "v1beta1" / "trtllm" / "disagg-multinode.yaml"
    injected = subprocess.run(
        [PYTHON, "-m", "agent.cli", "inject", "-f", str(multinode), "--image", IMAGE],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert injected.returncode == 0, injected.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(injected.stdout)]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "DynamoGraphDeployment"]
    assert injected.stdout.count(f"name: {SIDECAR}\n") == 3
    audited = subprocess.run(
        [PYTHON, "-m", "agent.cli", "audit", "-f", "-", "--format", "json"],
        input=injected.stdout + "---\n" + (EXAMPLES / "v1alpha1" / "vllm" / "disagg_planner.yaml").read_text(),
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert audited.returncode == 1, audited.stderr  # warnings that apply; never 2 (critical)
    assert "Traceback" not in audited.stderr
