"""Adds the sidecar to a Dynamo pod: one pure function behind `dynamo-sidecar inject`, the
admission webhook and the Helm chart's webhook deployment.

Input: a Pod, a pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) or
a Dynamo `DynamoGraphDeployment` of either API version: v1alpha1 (`spec.services{}`, each
frontend or worker service's `extraPodSpec`, `spec.envs`) or v1beta1 (`spec.components[]` with
`type` and `podTemplate`, `spec.env`). Output: the same object with the sidecar added: a native
sidecar (an init container with `restartPolicy: Always`, Kubernetes >= 1.29) by default,
`shareProcessNamespace`, the `DYN_*` / `ETCD_ENDPOINTS` / `NATS_SERVER` / `OTEL_*` env that
`main` gets (the DGD's own env, the service's, main's: environment is per container),
downward-API identity, a liveness probe, resources, a locked-down securityContext, and a `preStop`
on `main` (a frontend's holds SIGTERM until its in-flight requests finish; a worker's only marks
the drain's start, since Dynamo's own worker shutdown needs the grace period). The sidecar's role
is explicit in its env: `frontend`, `worker`, or `non-leader` for a multinode pod that is not
its group's leader (LeaderWorkerSet or Grove; it serves no Dynamo endpoint). Injecting twice
changes nothing; the annotation `dynamo-sidecar.io/inject: "false"` opts out (on the pod, the
service or component pod template, or the whole DynamoGraphDeployment).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from agent import __version__
from agent.config import multinode_position

SIDECAR = "dynamo-sidecar"
PREFIX = "dynamo-sidecar.io/"
INJECT = PREFIX + "inject"
INJECTED = PREFIX + "injected"
COMPONENT_LABEL = "nvidia.com/dynamo-component-type"
PORT = 9469
# Roles the sidecar watches; the Dynamo operator labels pods with these component types (a
# v1beta1 component's `type`; planner and epp are not served).
ROLES = {"frontend": "frontend", "worker": "worker", "prefill": "worker", "decode": "worker"}
NON_LEADER = "non-leader"
# How a multinode pod shows its place in the group (read from the operator and its workload
# controllers, ai-dynamo/dynamo 2a6da14c):
# - LeaderWorkerSet: the operator labels the leader template `role: leader` and the worker
#   template `role: worker` (deploy/operator/internal/controller/dynamocomponentdeployment_renderer.go);
#   LWS labels every pod `leaderworkerset.sigs.k8s.io/name` and `.../worker-index` (0: leader),
#   sets LWS_WORKER_INDEX, and annotates workers `.../leader-name`.
# - Grove: the operator names the cliques `<component>-ldr` and `<component>-wkr`
#   (internal/consts GroveRoleSuffixLeader/Worker); Grove labels each pod `grove.io/podclique`
#   with the PodClique's name and sets GROVE_PCLQ_NAME in every container.
OPERATOR_ROLE_LABEL = "role"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
LWS_LEADER_NAME_ANNOTATION = "leaderworkerset.sigs.k8s.io/leader-name"
GROVE_PODCLIQUE_LABEL = "grove.io/podclique"
COPIED_ENV = re.compile(r"^(DYN_|OTEL_)|^(ETCD_ENDPOINTS|NATS_SERVER)$")
TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
DEFAULT_GRACE = 30  # Kubernetes' default terminationGracePeriodSeconds
OPERATOR_GRACE = 60  # what the Dynamo operator sets on the pods it renders
IMAGE_ENV = "DYN_SIDECAR_IMAGE"  # `inject` and `webhook` read the image here when --image is not given
# Dynamo's images run as uid 1000, gid 0. Linux lets a process read another's fd limit, fd
# links (/proc/<pid>/fd/N: its sockets) and environ only when its uid AND gid match the
# target's, so the sidecar runs with main's uid and gid (these when main's are not stated):
# with gid 1000 it sees no fd limit and no sockets of Dynamo (tests/test_proc_access.py).
# gid 0 is a group, not root: runAsNonRoot still holds.
SIDECAR_UID = 1000
SIDECAR_GID = 0

# A Kubernetes resource quantity (k8s.io/apimachinery resource.Quantity), unsigned: requests
# and limits are never negative.
QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[mkMGTPE]|[eE][+-]?[0-9]+)?$"
)
SUFFIX_SCALE = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
}
# An image reference as the container runtime parses it: [registry[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
)
IMAGE_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


@dataclass
class Options:
    """What the sidecar container gets; each can be overridden per pod by annotation
    (`dynamo-sidecar.io/image`, `.../cpu-request`, `.../memory-request`, `.../memory-limit`,
    `.../native`, and `.../config.<key>` for any config key)."""

    # No default: no image is published, and a native sidecar whose image cannot be pulled
    # keeps the whole Dynamo pod from starting. The caller names the image it built and pushed.
    image: str
    pull_policy: str = "IfNotPresent"
    native: bool = True
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "160Mi"
    config: dict[str, str] = field(default_factory=dict)  # config key -> value, for every pod


class InjectError(ValueError):
    """The object cannot be injected (its shape is not a Kubernetes object)."""


def parse_quantity(text: str) -> Decimal | None:
    """A resource quantity ("64Mi", "50m", "0.5", "1e3") as a number; None when it is not one."""
    match = QUANTITY.match(text.strip()) if len(text) <= 64 else None
    if match is None:
        return None
    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        return None
    suffix = match["suffix"] or ""
    if suffix[:1] in {"e", "E"}:
        return number.scaleb(int(suffix[1:])) if abs(int(suffix[1:])) <= 30 else None
    return number * SUFFIX_SCALE.get(suffix, Decimal(1))


def option_problems(options: Options) -> list[tuple[str, str, str]]:
    """(option, value, what was expected) for each value the API server would refuse or that
    would give a pod that cannot start; [] when the sidecar container can be written."""
    problems: list[tuple[str, str, str]] = []
    if not IMAGE_REFERENCE.match(options.image):
        problems.append(
            ("image", options.image, "an image reference such as registry.example.com/dynamo-sidecar:0.1.0")
        )
    amounts: dict[str, Decimal] = {}
    for name, example in (
        ("cpu_request", "50m or 0.5"),
        ("memory_request", "64Mi"),
        ("memory_limit", "160Mi"),
    ):
        value = getattr(options, name)
        amount = parse_quantity(value)
        if amount is None or amount <= 0:
            problems.append((name, value, f"a positive Kubernetes quantity such as {example}"))
        else:
            amounts[name] = amount
    if amounts.get("memory_request", Decimal(0)) > amounts.get("memory_limit", Decimal("Infinity")):
        problems.append(
            ("memory_request", options.memory_request, f"at most the memory limit ({options.memory_limit})")
        )
    return problems


def _checked(options: Options, where: str, annotations: dict[str, Any]) -> Options:
    """The options, or InjectError naming the first value (a pod's annotation, usually) that
    would give a sidecar the API server refuses or a pod that cannot start."""
    for name, value, expected in option_problems(options)[:1]:
        annotation = PREFIX + name.replace("_", "-")
        source = f"annotation {annotation}" if annotation in annotations else "inject option"
        raise InjectError(
            f"{where}: {source}: the sidecar's {name.replace('_', ' ')} {value[:80]!r} is not {expected}"
        )
    return options


def _run_as(main: dict[str, Any], spec: dict[str, Any]) -> dict[str, int]:
    """runAsUser and runAsGroup for the sidecar: main's own (its container's, else the pod's),
    so the sidecar may read main's /proc/<pid>/fd, limits and environ; SIDECAR_UID and
    SIDECAR_GID where they are not stated. A root main keeps the sidecar at SIDECAR_UID: the
    sidecar never runs as root."""
    contexts = [c for c in (main.get("securityContext"), spec.get("securityContext")) if isinstance(c, dict)]

    def stated(key: str) -> int | None:
        for context in contexts:
            value = context.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    uid, gid = stated("runAsUser"), stated("runAsGroup")
    return {
        "runAsUser": uid if uid is not None and uid > 0 else SIDECAR_UID,
        "runAsGroup": gid if gid is not None and gid >= 0 else SIDECAR_GID,
    }


def role_of(component_type: object) -> str | None:
    return ROLES.get(str(component_type).lower()) if component_type else None


def _env_name(key: str) -> str:
    return "DYN_SIDECAR_" + key.strip().replace("-", "_").upper()


def _options_for(annotations: dict[str, Any], base: Options) -> Options:
    options = copy.deepcopy(base)
    for key, value in (annotations or {}).items():
        if not isinstance(key, str) or not key.startswith(PREFIX):
            continue
        name, text = key[len(PREFIX) :], str(value)
        if name == "image":
            options.image = text
        elif name == "cpu-request":
            options.cpu_request = text
        elif name == "memory-request":
            options.memory_request = text
        elif name == "memory-limit":
            options.memory_limit = text
        elif name == "native":
            options.native = text.strip().lower() not in {"false", "0", "no"}
        elif name.startswith("config."):
            options.config[name[len("config.") :]] = text
    return options


def _main_container(spec: dict[str, Any]) -> dict[str, Any] | None:
    containers = spec.get("containers") or []
    for container in containers:
        if isinstance(container, dict) and container.get("name") == "main":
            return container
    return containers[0] if containers and isinstance(containers[0], dict) else None


def _has_sidecar(spec: dict[str, Any]) -> bool:
    return any(
        isinstance(c, dict) and c.get("name") == SIDECAR
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    )


def _wants_gpu(container: dict[str, Any]) -> bool:
    resources = container.get("resources") or {}
    return any("gpu" in str(name) for part in ("limits", "requests") for name in (resources.get(part) or {}))


def merged_env(*layers: Any) -> list[dict[str, Any]]:
    """Env lists merged as the operator merges a DGD's env into main (a later layer wins a
    name, as MergeEnvs in deploy/operator/internal/dynamo/graph.go), in first-seen order."""
    by_name: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for entry in layer if isinstance(layer, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                by_name[entry["name"]] = entry  # an existing name keeps its place
    return list(by_name.values())


def _multinode_env() -> list[dict[str, Any]]:
    """For a DGD multinode component: the operator renders leader and non-leader pods from
    the same template, so the pod's own labels decide at start, through the downward API.
    Kubernetes expands $(VAR) from the variables above it; an absent label is empty, so an
    LWS pod yields `leader`/`worker` and a Grove pod `...-ldr`/`...-wkr`."""
    return [
        {
            "name": "MULTINODE_LWS_ROLE",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{OPERATOR_ROLE_LABEL}']"}},
        },
        {
            "name": "MULTINODE_GROVE_PODCLIQUE",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{GROVE_PODCLIQUE_LABEL}']"}},
        },
        {
            "name": "DYN_SIDECAR_MULTINODE_POSITION",
            "value": "$(MULTINODE_LWS_ROLE)$(MULTINODE_GROVE_PODCLIQUE)",
        },
    ]


def sidecar_container(
    role: str,
    main_env: list[dict[str, Any]],
    grace: int,
    gpu: bool,
    options: Options,
    extra_env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        copy.deepcopy(entry)
        for entry in merged_env(main_env)
        if COPIED_ENV.search(str(entry.get("name", "")))
    ]
    names = {entry["name"] for entry in env}

    def put(name: str, value: str | None = None, field_path: str | None = None) -> None:
        if name in names:
            return
        names.add(name)
        if field_path:
            env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}})
        else:
            env.append({"name": name, "value": value})

    put("POD_NAME", field_path="metadata.name")
    put("POD_NAMESPACE", field_path="metadata.namespace")
    put("NODE_NAME", field_path="spec.nodeName")
    put("CONTAINER_NAME", SIDECAR)
    put("DYN_SIDECAR_ROLE", role)
    put("DYN_SIDECAR_TERMINATION_GRACE_PERIOD", str(grace))
    put("DYN_SIDECAR_GPU_ENABLED", "true" if gpu else "false")
    if gpu:
        # NVML in this container sees the node's GPUs without claiming one; the GPU collector
        # attributes memory to the Dynamo processes it finds by pid.
        put("NVIDIA_VISIBLE_DEVICES", "all")
        put("NVIDIA_DRIVER_CAPABILITIES", "utility")
    for entry in extra_env or []:
        if entry["name"] not in names:
            names.add(entry["name"])
            env.append(copy.deepcopy(entry))
    for key, value in sorted(options.config.items()):
        put(_env_name(key), value)
    resources: dict[str, Any] = {
        "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
        "limits": {"memory": options.memory_limit},
    }
    container: dict[str, Any] = {
        "name": SIDECAR,
        "image": options.image,
        "imagePullPolicy": options.pull_policy,
        "args": ["run"],
        "env": env,
        "ports": [{"name": "sidecar-metrics", "containerPort": PORT, "protocol": "TCP"}],
        # Liveness only: a native sidecar's readiness counts in the pod's Ready condition, and
        # under the operator's Kubernetes discovery (EndpointSlice `ready`) a worker routes
        # only while its pod is Ready: the observer must never take the worker out of service.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_GID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if options.native:
        container["restartPolicy"] = "Always"
    return container


def _pre_stop(grace: int, role: str) -> dict[str, Any]:
    # kubelet runs an httpGet hook from the node, which /drain refuses (only the pod's own
    # loopback may drain without a token): exec inside `main`, whose Dynamo image has python3.
    if role == "frontend":
        # The frontend on SIGTERM closes its listener and drains for
        # DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS (5 s): hold SIGTERM until its in-flight
        # requests finish (the pod already left the Service's endpoints), up to grace - 5 s.
        url, timeout = f"http://127.0.0.1:{PORT}/drain", max(1, grace - 5)
    else:
        # A worker on SIGTERM unregisters from discovery, waits 5 s, then finishes its in-flight
        # work and engine clean-up: that needs the grace period, so the hook only marks the
        # drain's start (the sidecar then follows Dynamo's shutdown) and returns at once.
        url, timeout = f"http://127.0.0.1:{PORT}/drain?wait=false", 2
    script = (
        "import urllib.request as u\n"
        "try:\n"
        f"    u.urlopen(u.Request('{url}', method='POST'), timeout={timeout})\n"
        "except Exception:\n"
        "    pass\n"
    )
    return {"exec": {"command": ["python3", "-c", script]}}


def inject_pod_spec(
    spec: dict[str, Any],
    role: str,
    options: Options,
    extra_env: list[dict[str, Any]] | None = None,
    default_grace: int = DEFAULT_GRACE,
    main: dict[str, Any] | None = None,
    gpu: bool = False,
    sidecar_env: list[dict[str, Any]] | None = None,
) -> bool:
    """Adds the sidecar to `spec` in place; False when it was already there. `extra_env` is
    the env `main` gets from outside its own list (a DGD's and a service's), lowest first;
    `sidecar_env` is added to the sidecar only."""
    if _has_sidecar(spec):
        return False
    main = main if main is not None else _main_container(spec)
    if main is None:
        raise InjectError("the pod has no container to watch")
    grace_raw = spec.get("terminationGracePeriodSeconds", default_grace)
    grace = int(grace_raw) if str(grace_raw).isdigit() else default_grace
    main_env = merged_env(extra_env or [], main.get("env") or [])
    container = sidecar_container(role, main_env, grace, gpu or _wants_gpu(main), options, sidecar_env)
    container["securityContext"].update(_run_as(main, spec))
    spec.setdefault("initContainers" if options.native else "containers", []).append(container)
    spec["shareProcessNamespace"] = True
    lifecycle = main.setdefault("lifecycle", {})
    if not lifecycle.get("preStop"):
        lifecycle["preStop"] = _pre_stop(grace, role)
    return True


def _env_value(env: Any, name: str) -> str | None:
    for entry in env if isinstance(env, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name and "value" in entry:
            return str(entry["value"])
    return None


def pod_position(metadata: dict[str, Any], main: dict[str, Any] | None) -> str:
    """ "leader", "non-leader" or "" for a pod (or pod template) by the marks LeaderWorkerSet,
    Grove and the Dynamo operator put on it (see the constants above)."""
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    env = (main or {}).get("env")
    index = labels.get(LWS_WORKER_INDEX_LABEL, _env_value(env, "LWS_WORKER_INDEX"))
    if index is not None and str(index).strip().isdigit():
        return "leader" if int(str(index)) == 0 else NON_LEADER
    if LWS_LEADER_NAME_ANNOTATION in annotations:
        return NON_LEADER
    # `role` is a common label name: it counts only on a pod LWS made.
    if LWS_NAME_LABEL in labels and str(labels.get(OPERATOR_ROLE_LABEL, "")) in {"leader", "worker"}:
        return multinode_position(str(labels[OPERATOR_ROLE_LABEL]))
    clique = labels.get(GROVE_PODCLIQUE_LABEL, _env_value(env, "GROVE_PCLQ_NAME"))
    return multinode_position(str(clique)) if clique else ""


def _pod_role(metadata: dict[str, Any]) -> str | None:
    return role_of((metadata.get("labels") or {}).get(COMPONENT_LABEL))


def _opted_out(metadata: Any) -> bool:
    value = ((metadata or {}).get("annotations") or {}).get(INJECT) if isinstance(metadata, dict) else None
    return value is not None and str(value).strip().lower() in {"false", "0", "no", "disabled"}


def _mark(metadata: dict[str, Any]) -> None:
    metadata.setdefault("annotations", {})[INJECTED] = __version__
    metadata.setdefault("labels", {})[INJECTED] = "true"


def _inject_template(template: dict[str, Any], options: Options, notes: list[str], where: str) -> bool:
    if template.get("metadata") is None:  # `metadata: null`: setdefault would return the None
        template["metadata"] = {}
    metadata = template["metadata"]
    role = _pod_role(metadata)
    if role is None:
        notes.append(f"{where}: no {COMPONENT_LABEL} label of a frontend or worker; left alone")
        return False
    if _opted_out(metadata):
        notes.append(f"{where}: opted out ({INJECT}: false)")
        return False
    spec = template.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise InjectError(f"{where}: spec is not a mapping")
    annotations = metadata.get("annotations") or {}
    options = _checked(_options_for(annotations, options), where, annotations)
    position = pod_position(metadata, _main_container(spec)) if role == "worker" else ""
    sidecar_env = [{"name": "DYN_SIDECAR_MULTINODE_POSITION", "value": position}] if position else []
    changed = inject_pod_spec(
        spec, NON_LEADER if position == NON_LEADER else role, options, sidecar_env=sidecar_env
    )
    if changed:
        _mark(metadata)
    return changed


def _node_count(component: dict[str, Any]) -> int:
    multinode = component.get("multinode")
    count = multinode.get("nodeCount", 1) if isinstance(multinode, dict) else 1
    return int(count) if str(count).isdigit() else 1


def _pods_differ(component: dict[str, Any]) -> bool:
    """The operator renders pods of different kinds from this one template: a multinode
    group's leader and non-leaders, or (inter-pod GPU Memory Service) a weight-server pod
    beside the engines (graph.go expandSingleNodeGMSRoles: clique `<component>-gms-<rank>`)."""
    gms = component.get("gpuMemoryService") or (component.get("experimental") or {}).get("gpuMemoryService")
    inter_pod = isinstance(gms, dict) and str(gms.get("mode", "")).lower() == "interpod"
    return _node_count(component) > 1 or inter_pod


def _served(kind: str, name: str, component: dict[str, Any], notes: list[str]) -> str | None:
    """The sidecar role for a DGD service/component, or None (noted) when it is not served."""
    if kind == "service":
        role = role_of(component.get("subComponentType")) or role_of(component.get("componentType"))
        declared = component.get("componentType")
    else:
        role = role_of(component.get("type"))
        declared = component.get("type")
    if role is None:
        notes.append(f"{kind} {name}: type {declared!r} is not a frontend or worker; left alone")
    return role


def _inject_services(obj: dict[str, Any], options: Options, notes: list[str]) -> bool:
    """v1alpha1: `spec.services{}`, each with `extraPodSpec` (+ `mainContainer`) and `envs`."""
    spec = obj["spec"]
    services = spec.get("services")
    if not isinstance(services, dict):
        raise InjectError("nvidia.com/v1alpha1 DynamoGraphDeployment has no spec.services mapping")
    changed = False
    for name, service in services.items():
        if not isinstance(service, dict):
            raise InjectError(f"service {name}: not a mapping")
        role = _served("service", name, service, notes)
        if role is None:
            continue
        if _opted_out(service.get("extraPodMetadata")) or _opted_out(service):
            notes.append(f"service {name}: opted out ({INJECT}: false)")
            continue
        pod_metadata = service.setdefault("extraPodMetadata", {})
        extra = service.setdefault("extraPodSpec", {})
        if not isinstance(extra, dict) or not isinstance(pod_metadata, dict):
            raise InjectError(f"service {name}: extraPodSpec or extraPodMetadata is not a mapping")
        main = extra.setdefault("mainContainer", {})
        annotations = pod_metadata.get("annotations") or {}
        service_options = _checked(_options_for(annotations, options), f"service {name}", annotations)
        # The operator turns the service's `resources` (gpu: "1") into main's GPU request.
        gpu = _wants_gpu({"resources": service.get("resources") or {}})
        if inject_pod_spec(
            extra,
            role,
            service_options,
            merged_env(spec.get("envs"), service.get("envs")),
            default_grace=OPERATOR_GRACE,
            main=main,
            gpu=gpu,
            sidecar_env=_multinode_env() if role == "worker" and _pods_differ(service) else None,
        ):
            _mark(pod_metadata)
            changed = True
    return changed


def _inject_components(obj: dict[str, Any], options: Options, notes: list[str]) -> bool:
    """v1beta1: `spec.components[]`, each with `type`, `podTemplate` (main is the container
    named `main`) and `multinode`; the DGD's `spec.env` goes to every main."""
    spec = obj["spec"]
    components = spec.get("components")
    if not isinstance(components, list):
        raise InjectError("nvidia.com/v1beta1 DynamoGraphDeployment has no spec.components list")
    changed = False
    for index, component in enumerate(components):
        if not isinstance(component, dict):
            raise InjectError(f"spec.components[{index}]: not a mapping")
        name = str(component.get("name", f"#{index}"))
        role = _served("component", name, component, notes)
        if role is None:
            continue
        template = component.get("podTemplate")
        if template is None:
            template = component["podTemplate"] = {}
        if not isinstance(template, dict) or not isinstance(template.get("spec", {}), dict):
            raise InjectError(f"component {name}: podTemplate is not a pod template")
        if _opted_out(template.get("metadata")):
            notes.append(f"component {name}: opted out ({INJECT}: false)")
            continue
        for key in ("spec", "metadata"):  # `spec: null`: setdefault would return the None
            if template.get(key) is None:
                template[key] = {}
        pod_spec = template["spec"]
        main = _main_container(pod_spec)
        if main is None:
            # The operator merges its defaults into the container named main.
            main = {"name": "main"}
            if pod_spec.get("containers") is None:
                pod_spec["containers"] = []
            pod_spec["containers"].append(main)
        metadata = template["metadata"]
        annotations = metadata.get("annotations") or {}
        if inject_pod_spec(
            pod_spec,
            role,
            _checked(_options_for(annotations, options), f"component {name}", annotations),
            merged_env(spec.get("env")),
            default_grace=OPERATOR_GRACE,
            main=main,
            sidecar_env=_multinode_env() if role == "worker" and _pods_differ(component) else None,
        ):
            _mark(metadata)
            changed = True
    return changed


def _inject_dgd(obj: dict[str, Any], options: Options, notes: list[str]) -> bool:
    name = (obj.get("metadata") or {}).get("name", "?")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InjectError(f"DynamoGraphDeployment {name} has no spec mapping")
    if _opted_out(obj.get("metadata")):
        notes.append(f"DynamoGraphDeployment {name}: opted out ({INJECT}: false)")
        return False
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    if version == "v1beta1" or (version != "v1alpha1" and "components" in spec):
        return _inject_components(obj, options, notes)
    if version == "v1alpha1" or "services" in spec:
        return _inject_services(obj, options, notes)
    raise InjectError(
        f"DynamoGraphDeployment {name} ({obj.get('apiVersion')!r}) has neither spec.components (v1beta1) "
        "nor spec.services (v1alpha1)"
    )


def inject(obj: Any, options: Options) -> tuple[Any, list[str]]:
    """(the object with the sidecar added, notes on what was left alone). Kinds the sidecar
    has nothing to do with come back unchanged."""
    notes: list[str] = []
    if not isinstance(obj, dict) or "kind" not in obj:
        return obj, notes
    out = copy.deepcopy(obj)
    kind = out.get("kind")
    name = (out.get("metadata") or {}).get("name", "?")
    if kind == "Pod":
        _inject_template(out, options, notes, f"Pod {name}")  # a Pod is shaped like a template
    elif kind in TEMPLATE_KINDS:
        template = (out.get("spec") or {}).get("template")
        if not isinstance(template, dict):
            raise InjectError(f"{kind} {name} has no spec.template")
        _inject_template(template, options, notes, f"{kind} {name}")
    elif kind == "CronJob":
        template = ((out.get("spec") or {}).get("jobTemplate") or {}).get("spec", {}).get("template")
        if not isinstance(template, dict):
            raise InjectError(f"CronJob {name} has no spec.jobTemplate.spec.template")
        _inject_template(template, options, notes, f"CronJob {name}")
    elif kind == "DynamoGraphDeployment":
        _inject_dgd(out, options, notes)
        notes = [
            n if n.startswith("DynamoGraphDeployment") else f"DynamoGraphDeployment {name} / {n}"
            for n in notes
        ]
    else:
        return obj, notes
    return out, notes
