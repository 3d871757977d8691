"""The pods a manifest describes, as the Dynamo operator would run them.

A DynamoGraphDeployment service is not a pod spec: the operator fills in probes, env, the
grace period and ports. Each service is read here with the operator's defaults applied
(Dynamo operator docs, "Operator Default Values Injection"), and every value keeps the
manifest path it came from, or says it is the operator's default, so a finding can name the
exact place to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.tools.inject import COMPONENT_LABEL, SIDECAR, TEMPLATE_KINDS, role_of

OPERATOR_GRACE = 60
OPERATOR = "operator default"
# What the operator sets when a component does not: ai-dynamo/dynamo 2a6da14c (2026-08-21),
# deploy/operator/internal/dynamo/component_frontend.go and component_worker.go (probes, env),
# component_common.go (terminationGracePeriodSeconds 60; DYN_DISCOVERY_BACKEND=kubernetes unless
# the operator is configured for etcd). The probes are those of ai-dynamo/dynamo#3968
# (2025-10-29), which replaced the Aug 2025 ones (frontend liveness /health every 60 s x10,
# readiness an exec of curl | jq; worker readiness failureThreshold 60, timeout 30).
OPERATOR_PROBES: dict[str, dict[str, dict[str, Any]]] = {
    "frontend": {
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": "http"},
            "initialDelaySeconds": 15, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3,
        },
    },
    "worker": {
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": "system"}, "periodSeconds": 5, "timeoutSeconds": 4,
            "failureThreshold": 1,
        },
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "system"}, "periodSeconds": 10, "timeoutSeconds": 4,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/live", "port": "system"}, "periodSeconds": 10, "timeoutSeconds": 5,
            "failureThreshold": 720,
        },
    },
}  # fmt: skip
OPERATOR_ENV = {
    "frontend": {"DYNAMO_PORT": "8000", "DYN_HTTP_PORT": "8000", "DYN_DISCOVERY_BACKEND": "kubernetes"},
    "worker": {
        "DYN_SYSTEM_ENABLED": "true",
        "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
        "DYN_SYSTEM_PORT": "9090",
        # Off on purpose since ai-dynamo/dynamo#5038 (2025-12-19): see worker_health_check_disabled.
        "DYN_HEALTH_CHECK_ENABLED": "false",
        "DYN_DISCOVERY_BACKEND": "kubernetes",
    },
}


class ManifestError(ValueError):
    """A document that cannot be audited: one line, naming where."""


class UnknownKind(ManifestError):
    """A kind audit does not read: noted and skipped beside kinds it reads, an error alone."""


@dataclass
class Located:
    value: Any
    path: str  # manifest path, or "operator default"


@dataclass
class PodUnit:
    """One kind of pod in the manifest: a DGD service, a workload's template, a Pod."""

    where: str  # "DynamoGraphDeployment llm / service VllmWorker"
    role: str  # frontend | worker
    spec_path: str
    spec: dict[str, Any]
    main: dict[str, Any]
    main_path: str
    dgd: bool
    env: dict[str, Located] = field(default_factory=dict)  # main's env (value None: valueFrom)
    probes: dict[str, Located] = field(default_factory=dict)
    grace: Located = field(default_factory=lambda: Located(30, "Kubernetes default"))
    resources: Located = field(default_factory=lambda: Located({}, ""))
    args: list[str] = field(default_factory=list)  # main's command + args, for flags
    sidecar: dict[str, Any] | None = None
    sidecar_path: str = ""
    env_path: str = ""  # where main's env is set: a DGD service's `envs`, else main's `env`
    nodes: int = 1  # a multinode component's nodeCount: leader and non-leader pods
    # DGD only: how many worker pods (worker/decode, not prefill) the whole graph runs, for
    # what a frontend can migrate a request to; None outside a DGD (not known).
    graph_workers: int | None = None

    def env_value(self, name: str) -> str | None:
        found = self.env.get(name)
        return None if found is None or found.value is None else str(found.value)

    def sidecar_env(self) -> dict[str, str | None]:
        if self.sidecar is None:
            return {}
        out: dict[str, str | None] = {}
        for entry in self.sidecar.get("env") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                out[entry["name"]] = None if "valueFrom" in entry else str(entry.get("value", ""))
        return out


def _env_from(entries: Any, path: str, into: dict[str, Located]) -> None:
    for index, entry in enumerate(entries or []):
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            value = None if "valueFrom" in entry else entry.get("value", "")
            into[entry["name"]] = Located(value, f"{path}[{index}]")


def _find_sidecar(spec: dict[str, Any], spec_path: str) -> tuple[dict[str, Any] | None, str]:
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            if isinstance(container, dict) and container.get("name") == SIDECAR:
                return container, f"{spec_path}.{key}[{index}]"
    return None, ""


def _main(spec: dict[str, Any], spec_path: str) -> tuple[dict[str, Any], str]:
    containers = spec.get("containers") or []
    for index, container in enumerate(containers):
        if isinstance(container, dict) and container.get("name") == "main":
            return container, f"{spec_path}.containers[{index}]"
    for index, container in enumerate(containers):
        if isinstance(container, dict) and container.get("name") != SIDECAR:
            return container, f"{spec_path}.containers[{index}]"
    raise ManifestError(f"{spec_path}: no container to audit")


def _guess_role(metadata: dict[str, Any], main: dict[str, Any]) -> str | None:
    role = role_of((metadata.get("labels") or {}).get(COMPONENT_LABEL))
    if role:
        return role
    words = " ".join(str(part) for part in [*(main.get("command") or []), *(main.get("args") or [])])
    if "dynamo.frontend" in words:
        return "frontend"
    if any(f"dynamo.{engine}" in words for engine in ("vllm", "sglang", "trtllm", "mocker")):
        return "worker"
    return None


def _template_unit(template: Any, path: str, where: str, notes: list[str]) -> PodUnit | None:
    spec_path = f"{path}.spec" if path else "spec"  # a Pod is its own template
    if not isinstance(template, dict):
        raise ManifestError(f"{path or 'the object'}: not a mapping")
    metadata = template.get("metadata") or {}
    spec = template.get("spec")
    if not isinstance(spec, dict):
        raise ManifestError(f"{spec_path}: not a mapping")
    main, main_path = _main(spec, spec_path)
    role = _guess_role(metadata, main)
    if role is None:
        notes.append(
            f"{where}: not a Dynamo frontend or worker (no {COMPONENT_LABEL} label, no dynamo module in its command); skipped"
        )
        return None
    unit = PodUnit(where, role, spec_path, spec, main, main_path, dgd=False, env_path=f"{main_path}.env")
    _env_from(main.get("env"), f"{main_path}.env", unit.env)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(main.get(probe), dict):
            unit.probes[probe] = Located(main[probe], f"{main_path}.{probe}")
    if "terminationGracePeriodSeconds" in spec:
        unit.grace = Located(
            spec["terminationGracePeriodSeconds"], f"{spec_path}.terminationGracePeriodSeconds"
        )
    unit.resources = Located(main.get("resources") or {}, f"{main_path}.resources")
    unit.args = [str(a) for a in [*(main.get("command") or []), *(main.get("args") or [])]]
    unit.sidecar, unit.sidecar_path = _find_sidecar(spec, spec_path)
    return unit


def _replicas(raw: Any) -> int:
    return int(raw) if str(raw).isdigit() else 1


def _node_count(multinode: Any) -> int:
    count = multinode.get("nodeCount", 1) if isinstance(multinode, dict) else 1
    return int(count) if str(count).isdigit() else 1


def _dgd_unit(
    where: str,
    role: str,
    spec_path: str,
    pod_spec: dict[str, Any],
    main: dict[str, Any],
    main_path: str,
    env_layers: list[tuple[Any, str]],
    env_path: str,
) -> PodUnit:
    """One DGD service or component with the operator's defaults under what it sets."""
    unit = PodUnit(where, role, spec_path, pod_spec, main, main_path, dgd=True, env_path=env_path)
    for key, value in OPERATOR_ENV[role].items():
        unit.env[key] = Located(value, OPERATOR)
    for entries, path in env_layers:  # lowest first: the operator merges the DGD's env under main's
        _env_from(entries, path, unit.env)
    if "terminationGracePeriodSeconds" in pod_spec:
        unit.grace = Located(
            pod_spec["terminationGracePeriodSeconds"], f"{spec_path}.terminationGracePeriodSeconds"
        )
    else:
        unit.grace = Located(OPERATOR_GRACE, OPERATOR)
    unit.args = [str(a) for a in [*(main.get("command") or []), *(main.get("args") or [])]]
    unit.sidecar, unit.sidecar_path = _find_sidecar(pod_spec, spec_path)
    return unit


def _dgd_units(obj: dict[str, Any], notes: list[str]) -> list[PodUnit]:
    name = (obj.get("metadata") or {}).get("name", "?")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise ManifestError(f"DynamoGraphDeployment {name}: spec is not a mapping")
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    if version == "v1beta1" or (version != "v1alpha1" and "components" in spec):
        units = _component_units(name, spec, notes)
    elif version == "v1alpha1" or "services" in spec:
        units = _service_units(name, spec, notes)
    else:
        raise ManifestError(
            f"DynamoGraphDeployment {name}: neither spec.components (v1beta1) nor spec.services (v1alpha1)"
        )
    return units


def _service_units(name: str, spec: dict[str, Any], notes: list[str]) -> list[PodUnit]:
    """v1alpha1: `spec.services{}` with `extraPodSpec.mainContainer`, `envs`, `spec.envs`."""
    services = spec.get("services")
    if not isinstance(services, dict):
        raise ManifestError(f"DynamoGraphDeployment {name}: spec.services is not a mapping")
    units = []
    workers = 0
    for service_name, service in services.items():
        where = f"DynamoGraphDeployment {name} / service {service_name}"
        if not isinstance(service, dict):
            raise ManifestError(f"{where}: not a mapping")
        role = role_of(service.get("subComponentType")) or role_of(service.get("componentType"))
        if role is None:
            notes.append(
                f"{where}: componentType {service.get('componentType')!r} is not a frontend or worker; skipped"
            )
            continue
        if role == "worker" and str(service.get("subComponentType", "")).lower() != "prefill":
            workers += _replicas(service.get("replicas", 1))
        base = f"spec.services.{service_name}"
        extra = service.get("extraPodSpec") or {}
        if not isinstance(extra, dict):
            raise ManifestError(f"{where}: extraPodSpec is not a mapping")
        main = extra.get("mainContainer") or {}
        main_path = f"{base}.extraPodSpec.mainContainer"
        unit = _dgd_unit(
            where,
            role,
            f"{base}.extraPodSpec",
            extra,
            main,
            main_path,
            [
                (spec.get("envs"), "spec.envs"),
                (service.get("envs"), f"{base}.envs"),
                (main.get("env"), f"{main_path}.env"),
            ],
            f"{base}.envs",
        )
        for probe, default in OPERATOR_PROBES[role].items():
            if isinstance(main.get(probe), dict):
                unit.probes[probe] = Located(main[probe], f"{main_path}.{probe}")
            elif isinstance(service.get(probe), dict):
                unit.probes[probe] = Located(service[probe], f"{base}.{probe}")
            else:
                unit.probes[probe] = Located(default, OPERATOR)
        if service.get("resources"):
            unit.resources = Located(service["resources"], f"{base}.resources")
        else:
            unit.resources = Located(main.get("resources") or {}, f"{main_path}.resources")
        unit.nodes = _node_count(service.get("multinode"))
        units.append(unit)
    for unit in units:
        unit.graph_workers = workers
    return units


def _component_units(name: str, spec: dict[str, Any], notes: list[str]) -> list[PodUnit]:
    """v1beta1: `spec.components[]` with `type`, `podTemplate` (main is the container named
    `main`), `multinode`; the DGD's `spec.env` goes to every main."""
    components = spec.get("components")
    if not isinstance(components, list):
        raise ManifestError(f"DynamoGraphDeployment {name}: spec.components is not a list")
    units = []
    workers = 0
    for index, component in enumerate(components):
        base = f"spec.components[{index}]"
        if not isinstance(component, dict):
            raise ManifestError(f"DynamoGraphDeployment {name} / {base}: not a mapping")
        where = f"DynamoGraphDeployment {name} / component {component.get('name', index)}"
        role = role_of(component.get("type"))
        if role is None:
            notes.append(f"{where}: type {component.get('type')!r} is not a frontend or worker; skipped")
            continue
        if role == "worker" and str(component.get("type", "")).lower() != "prefill":
            workers += _replicas(component.get("replicas", 1))
        template = component.get("podTemplate") or {}
        pod_spec = template.get("spec") if isinstance(template, dict) else None
        if pod_spec is None:
            pod_spec = {}
        if not isinstance(pod_spec, dict):
            raise ManifestError(f"{where}: {base}.podTemplate.spec is not a mapping")
        spec_path = f"{base}.podTemplate.spec"
        containers = pod_spec.get("containers") or []
        main_index = next(
            (i for i, c in enumerate(containers) if isinstance(c, dict) and c.get("name") == "main"),
            next(
                (i for i, c in enumerate(containers) if isinstance(c, dict) and c.get("name") != SIDECAR),
                None,
            ),
        )
        main = containers[main_index] if main_index is not None else {}
        main_path = f"{spec_path}.containers[{main_index if main_index is not None else 0}]"
        unit = _dgd_unit(
            where,
            role,
            spec_path,
            pod_spec,
            main,
            main_path,
            [(spec.get("env"), "spec.env"), (main.get("env"), f"{main_path}.env")],
            f"{main_path}.env",
        )
        for probe, default in OPERATOR_PROBES[role].items():
            if isinstance(main.get(probe), dict):
                unit.probes[probe] = Located(main[probe], f"{main_path}.{probe}")
            else:
                unit.probes[probe] = Located(default, OPERATOR)
        unit.resources = Located(main.get("resources") or {}, f"{main_path}.resources")
        unit.nodes = _node_count(component.get("multinode"))
        units.append(unit)
    for unit in units:
        unit.graph_workers = workers
    return units


def pod_units(obj: Any, notes: list[str]) -> list[PodUnit]:
    """The Dynamo pods one document describes; kinds with no pods are noted and skipped."""
    if obj is None:
        return []
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise ManifestError("a document is not a Kubernetes object (no kind)")
    kind = obj["kind"]
    name = (obj.get("metadata") or {}).get("name", "?")
    if kind == "List":
        return [unit for item in obj.get("items") or [] for unit in pod_units(item, notes)]
    if kind == "DynamoGraphDeployment":
        return _dgd_units(obj, notes)
    if kind == "Pod":
        unit = _template_unit(obj, "", f"Pod {name}", notes)
        return [unit] if unit else []
    if kind in TEMPLATE_KINDS:
        return [
            u
            for u in [
                _template_unit(
                    (obj.get("spec") or {}).get("template"), "spec.template", f"{kind} {name}", notes
                )
            ]
            if u
        ]
    if kind == "CronJob":
        template = (((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template")
        path = "spec.jobTemplate.spec.template"
        return [u for u in [_template_unit(template, path, f"CronJob {name}", notes)] if u]
    if kind in KNOWN_PODLESS:
        return []
    if kind in OPERATOR_RENDERED:
        notes.append(
            f"{kind} {name}: rendered by the Dynamo operator from a DynamoGraphDeployment; audit that instead"
        )
        return []
    raise UnknownKind(
        f"{kind} {name}: not a kind audit knows (DynamoGraphDeployment, Pod, Deployment, StatefulSet, "
        "DaemonSet, ReplicaSet, Job, CronJob, List, or a kind with no pods such as Service)"
    )


# Rendered Helm output is full of these: nothing to audit, nothing wrong.
KNOWN_PODLESS = {
    "Service", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
    "ClusterRoleBinding", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy",
    "PodMonitor", "ServiceMonitor", "PrometheusRule", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "Certificate", "Issuer", "Namespace", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ResourceClaimTemplate", "ResourceClaim", "DynamoModel", "HTTPRoute",
    "Gateway", "InferencePool", "InferenceModel", "StorageClass", "PersistentVolume", "LimitRange",
    "ResourceQuota", "PriorityClass",
}  # fmt: skip
OPERATOR_RENDERED = {"DynamoComponentDeployment", "LeaderWorkerSet", "PodCliqueSet", "PodClique"}
