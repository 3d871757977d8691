"""Adds the sidecar to a Dynamo pod: one pure function behind `dynamo-sidecar inject`, the
admission webhook and the Helm chart's webhook deployment.

Input: a Pod, a pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) or
a Dynamo `DynamoGraphDeployment` (each frontend or worker service's `extraPodSpec`). Output: the
same object with the sidecar added: a native sidecar (an init container with
`restartPolicy: Always`, Kubernetes >= 1.29) by default, `shareProcessNamespace`, the `main`
container's `DYN_*` / `ETCD_ENDPOINTS` / `NATS_SERVER` / `OTEL_*` env copied (environment is
per container), downward-API identity, probes, resources, a locked-down securityContext, and a
`preStop` on `main` that drains through the sidecar. Injecting twice changes nothing; the pod
annotation `dynamo-sidecar.io/inject: "false"` opts out.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from agent import __version__

SIDECAR = "dynamo-sidecar"
PREFIX = "dynamo-sidecar.io/"
INJECT = PREFIX + "inject"
INJECTED = PREFIX + "injected"
COMPONENT_LABEL = "nvidia.com/dynamo-component-type"
PORT = 9469
# Roles the sidecar watches; the Dynamo operator labels pods with these component types.
ROLES = {"frontend": "frontend", "worker": "worker", "prefill": "worker", "decode": "worker"}
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


def sidecar_container(
    role: str, main_env: list[dict[str, Any]], grace: int, gpu: bool, options: Options
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        copy.deepcopy(entry)
        for entry in main_env
        if isinstance(entry, dict) and COPIED_ENV.search(str(entry.get("name", "")))
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
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": PORT}, "periodSeconds": 5},
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


def _pre_stop(grace: int) -> dict[str, Any]:
    # kubelet runs an httpGet hook from the node, which /drain refuses (only the pod's own
    # loopback may drain without a token): exec inside `main`, whose Dynamo image has python3.
    timeout = max(1, grace - 5)
    script = (
        "import urllib.request as u\n"
        "try:\n"
        f"    u.urlopen(u.Request('http://127.0.0.1:{PORT}/drain', method='POST'), timeout={timeout})\n"
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
) -> bool:
    """Adds the sidecar to `spec` in place; False when it was already there."""
    if _has_sidecar(spec):
        return False
    main = main if main is not None else _main_container(spec)
    if main is None:
        raise InjectError("the pod has no container to watch")
    grace_raw = spec.get("terminationGracePeriodSeconds", default_grace)
    grace = int(grace_raw) if str(grace_raw).isdigit() else default_grace
    main_env = [*(extra_env or []), *(main.get("env") or [])]
    container = sidecar_container(role, main_env, grace, gpu or _wants_gpu(main), options)
    container["securityContext"].update(_run_as(main, spec))
    spec.setdefault("initContainers" if options.native else "containers", []).append(container)
    spec["shareProcessNamespace"] = True
    lifecycle = main.setdefault("lifecycle", {})
    if not lifecycle.get("preStop"):
        lifecycle["preStop"] = _pre_stop(grace)
    return True


def _pod_role(metadata: dict[str, Any]) -> str | None:
    return role_of((metadata.get("labels") or {}).get(COMPONENT_LABEL))


def _opted_out(metadata: dict[str, Any]) -> bool:
    value = (metadata.get("annotations") or {}).get(INJECT)
    return value is not None and str(value).strip().lower() in {"false", "0", "no", "disabled"}


def _mark(metadata: dict[str, Any]) -> None:
    metadata.setdefault("annotations", {})[INJECTED] = __version__
    metadata.setdefault("labels", {})[INJECTED] = "true"


def _inject_template(template: dict[str, Any], options: Options, notes: list[str], where: str) -> bool:
    metadata = template.setdefault("metadata", {})
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
    changed = inject_pod_spec(spec, role, options)
    if changed:
        _mark(metadata)
    return changed


def _inject_dgd(obj: dict[str, Any], options: Options, notes: list[str]) -> bool:
    services = (obj.get("spec") or {}).get("services")
    if not isinstance(services, dict):
        raise InjectError("DynamoGraphDeployment has no spec.services mapping")
    changed = False
    for name, service in services.items():
        if not isinstance(service, dict):
            continue
        role = role_of(service.get("subComponentType")) or role_of(service.get("componentType"))
        if role is None:
            notes.append(
                f"service {name}: componentType {service.get('componentType')!r} is not served; left alone"
            )
            continue
        pod_metadata = service.setdefault("extraPodMetadata", {})
        if _opted_out(pod_metadata) or _opted_out({"annotations": service.get("annotations") or {}}):
            notes.append(f"service {name}: opted out ({INJECT}: false)")
            continue
        extra = service.setdefault("extraPodSpec", {})
        main = extra.setdefault("mainContainer", {})
        annotations = pod_metadata.get("annotations") or {}
        service_options = _checked(_options_for(annotations, options), f"service {name}", annotations)
        # The operator puts `envs` on `main`; the sidecar needs the same.
        # The operator turns the service's `resources` (gpu: "1") into main's GPU request.
        gpu = _wants_gpu({"resources": service.get("resources") or {}})
        if inject_pod_spec(
            extra,
            role,
            service_options,
            service.get("envs") or [],
            default_grace=OPERATOR_GRACE,
            main=main,
            gpu=gpu,
        ):
            _mark(pod_metadata)
            changed = True
    return changed


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
    else:
        return obj, notes
    return out, notes
