"""Manifests read by `audit -f` and `inject -f`, within bounds: a regular file or stdin, at
most MAX_BYTES, read within READ_TIMEOUT, parsed by libyaml (when present) without aliases,
numbers of at most MAX_DIGITS digits, nesting of at most MAX_DEPTH levels, and the fields
audit and inject read checked for their shape first. Any of these is one ManifestInputError
naming the document and the field, never a traceback, never memory or time without end.

Why each bound: `/dev/zero` or an endless pipe was read until the kernel killed the process;
a FIFO with no writer blocked forever; a 50 MB list took over 300 s in the pure-Python
parser; a 5,000-digit integer stopped int(); 900-deep nesting exhausted the recursion limit;
a list where a mapping belongs (`env: 3`, `labels: 5`) failed deep inside with an
AttributeError.
"""

from __future__ import annotations

import os
import re
import select
import stat
import sys
import time
from typing import Any

import yaml

MAX_BYTES = 8 << 20  # 8 MiB: a rendered Helm chart of a large graph is well under 1 MiB
READ_TIMEOUT = 60.0  # seconds for stdin to reach its end
MAX_DEPTH = 64  # a Kubernetes object nests ~15 levels
MAX_DIGITS = 40
MAX_INT = 2**31 - 1  # Kubernetes' int32 fields (replicas, seconds, ports)

_LOADER_BASE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_NUMBER = re.compile(r"[-+]?[0-9][0-9_,:.eE+-]*")


class ManifestInputError(ValueError):
    """One line: what is wrong with the input and where."""


class _Loader(_LOADER_BASE):  # type: ignore[misc,valid-type]
    """libyaml's safe loader (50x the pure-Python one) refusing duplicate keys."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # Keys compared as written (tag and text), not constructed twice: a third of the
        # load time on a large list otherwise.
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    mark = key_node.start_mark
                    raise ManifestInputError(f"duplicate key {key[1][:60]!r} at line {mark.line + 1}")
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_input(path: str) -> bytes:
    """The bytes of `path` (or stdin for `-`), refusing what is not a regular file or pipe,
    more than MAX_BYTES, or stdin not ending within READ_TIMEOUT."""
    if path == "-":
        return _read_bounded(sys.stdin.buffer.fileno(), "stdin")
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ManifestInputError(f"cannot read it: {(exc.strerror or str(exc)).lower()}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a directory"
            if stat.S_ISDIR(info.st_mode)
            else "not a regular file"
        )
        raise ManifestInputError(f"{kind}, not a regular file (pipe it to -f - instead)")
    if info.st_size > MAX_BYTES:
        raise ManifestInputError(f"{info.st_size} bytes; at most {MAX_BYTES} (8 MiB) are read")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ManifestInputError(f"cannot read it: {(exc.strerror or str(exc)).lower()}") from None
    if len(data) > MAX_BYTES:  # grew while read
        raise ManifestInputError(f"more than {MAX_BYTES} bytes (8 MiB), the most read")
    return data


def _read_bounded(fd: int, name: str) -> bytes:
    deadline = time.monotonic() + READ_TIMEOUT
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ManifestInputError(f"{name} did not end within {READ_TIMEOUT:g}s")
        try:
            ready, _, _ = select.select([fd], [], [], left)
        except (OSError, ValueError):
            ready = [fd]  # not selectable (a regular file on some systems): just read
        if not ready:
            continue
        try:
            chunk = os.read(fd, min(1 << 20, MAX_BYTES + 1 - size))
        except OSError as exc:
            raise ManifestInputError(f"cannot read it: {(exc.strerror or str(exc)).lower()}") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BYTES:
            raise ManifestInputError(f"more than {MAX_BYTES} bytes (8 MiB), the most read")


def _line(event: Any) -> int:
    mark = getattr(event, "start_mark", None)
    return int(mark.line) + 1 if mark is not None else 0


def _check_events(text: str) -> None:
    """One pass over libyaml's events: no alias (an alias bomb expands to gigabytes), nesting
    within MAX_DEPTH, no number longer than MAX_DIGITS."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER_BASE):
        if isinstance(event, yaml.AliasEvent):
            raise ManifestInputError(f"aliases (*name) are not allowed, at line {_line(event)}")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ManifestInputError(f"nested deeper than {MAX_DEPTH} levels at line {_line(event)}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif (
            isinstance(event, yaml.ScalarEvent)
            and event.implicit[0]
            and len(event.value) > MAX_DIGITS
            and _PLAIN_NUMBER.fullmatch(event.value)
        ):
            raise ManifestInputError(
                f"a number of {len(event.value)} characters at line {_line(event)}; "
                f"at most {MAX_DIGITS} (quote it if it is text)"
            )


def parse(data: bytes) -> list[Any]:
    """Every document of a YAML stream, within the bounds above."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestInputError("UTF-16 input; give UTF-8 YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestInputError(f"not UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        _check_events(text)
        documents = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestInputError(
            f"not valid YAML ({getattr(exc, 'problem', None) or 'parse error'}{where})"
        ) from None
    except (ValueError, RecursionError, OverflowError) as exc:
        if isinstance(exc, ManifestInputError):
            raise
        raise ManifestInputError(f"not usable YAML ({type(exc).__name__}: {str(exc)[:80]})") from None
    for index, document in enumerate(documents, start=1):
        check_shape(document, index)
    return documents


# --- shapes ----------------------------------------------------------------------------------
# Only the fields audit and inject read: each is checked to be what they expect, so a wrong
# type is named here in one line instead of failing deep inside. Unknown fields pass.

SCALAR = "scalar"
INT = "int"
STR = "str"
DICT = "dict"  # a mapping, its content not checked
Shape = Any  # str | dict[str, Shape] | list[Shape] (one item shape) | tuple ("map", value shape)

_METADATA: Shape = {
    "name": SCALAR,
    "namespace": SCALAR,
    "labels": ("map", SCALAR),
    "annotations": ("map", SCALAR),
}
_ENV: Shape = [{"name": STR, "value": SCALAR, "valueFrom": DICT}]
_PROBE: Shape = {
    "httpGet": {"path": SCALAR, "port": SCALAR},
    "exec": {"command": [SCALAR]},
    "tcpSocket": DICT,
    "initialDelaySeconds": INT,
    "periodSeconds": INT,
    "timeoutSeconds": INT,
    "failureThreshold": INT,
    "successThreshold": INT,
}
_RESOURCES: Shape = {"limits": ("map", SCALAR), "requests": ("map", SCALAR), "claims": [DICT]}
_CONTAINER: Shape = {
    "name": SCALAR,
    "image": SCALAR,
    "command": [SCALAR],
    "args": [SCALAR],
    "env": _ENV,
    "envFrom": [DICT],
    "ports": [{"containerPort": INT, "name": SCALAR}],
    "resources": _RESOURCES,
    "livenessProbe": _PROBE,
    "readinessProbe": _PROBE,
    "startupProbe": _PROBE,
    "lifecycle": DICT,
    "securityContext": DICT,
    "volumeMounts": [DICT],
}
_POD_SPEC: Shape = {
    "containers": [_CONTAINER],
    "initContainers": [_CONTAINER],
    "volumes": [DICT],
    "terminationGracePeriodSeconds": INT,
    "securityContext": DICT,
}
_TEMPLATE: Shape = {"metadata": _METADATA, "spec": _POD_SPEC}
_MULTINODE: Shape = {"nodeCount": INT}
_SERVICE: Shape = {
    "componentType": SCALAR,
    "subComponentType": SCALAR,
    "replicas": INT,
    "envs": _ENV,
    "extraPodSpec": {**_POD_SPEC, "mainContainer": _CONTAINER},
    "resources": _RESOURCES,
    "multinode": _MULTINODE,
    "livenessProbe": _PROBE,
    "readinessProbe": _PROBE,
    "startupProbe": _PROBE,
}
_COMPONENT: Shape = {
    "name": SCALAR,
    "type": SCALAR,
    "replicas": INT,
    "podTemplate": _TEMPLATE,
    "multinode": _MULTINODE,
    "gpuMemoryService": DICT,
    "experimental": {"gpuMemoryService": DICT},
}
_BY_KIND: dict[str, Shape] = {
    "Pod": {"metadata": _METADATA, "spec": _POD_SPEC},
    "CronJob": {"metadata": _METADATA, "spec": {"jobTemplate": {"spec": {"template": _TEMPLATE}}}},
    "DynamoGraphDeployment": {
        "metadata": _METADATA,
        "spec": {"envs": _ENV, "env": _ENV, "services": ("map", _SERVICE), "components": [_COMPONENT]},
    },
    "List": {"metadata": DICT, "items": [DICT]},
}
for _kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
    _BY_KIND[_kind] = {"metadata": _METADATA, "spec": {"replicas": INT, "template": _TEMPLATE}}

_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _check(value: Any, shape: Shape, path: str) -> str:
    """What is wrong with `value` for `shape`, or "" (null always fits: the field is absent)."""
    if value is None:
        return ""
    if shape == SCALAR:
        ok = isinstance(value, str | int | float | bool)
        return "" if ok else f"{path}: expected a single value, got {_type_name(value)}"
    if shape == STR:
        return "" if isinstance(value, str) else f"{path}: expected a string, got {_type_name(value)}"
    if shape == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{path}: expected an integer, got {_type_name(value)}"
        return "" if -MAX_INT <= value <= MAX_INT else f"{path}: {value} is out of range (at most {MAX_INT})"
    if shape == DICT:
        return "" if isinstance(value, dict) else f"{path}: expected a mapping, got {_type_name(value)}"
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{path}: expected a list, got {_type_name(value)}"
        for index, item in enumerate(value):
            if item is None:
                return f"{path}[{index}]: an empty item"
            problem = _check(item, shape[0], f"{path}[{index}]")
            if problem:
                return problem
        return ""
    if isinstance(shape, tuple):  # ("map", shape of each value)
        if not isinstance(value, dict):
            return f"{path}: expected a mapping, got {_type_name(value)}"
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}: key {str(key)[:40]!r} is not a string"
            problem = _check(item, shape[1], f"{path}.{key}")
            if problem:
                return problem
        return ""
    if not isinstance(value, dict):
        return f"{path}: expected a mapping, got {_type_name(value)}"
    for key, sub in shape.items():
        if key in value:
            problem = _check(value[key], sub, f"{path}.{key}" if path else key)
            if problem:
                return problem
    return ""


def check_shape(document: Any, index: int) -> None:
    """A document audit or inject can read: a mapping with a string `kind`, its known fields
    of the right types; List items one by one."""
    if document is None:
        return
    where = f"document {index}"
    if not isinstance(document, dict):
        raise ManifestInputError(f"{where} is {_type_name(document)}, not a Kubernetes object")
    kind = document.get("kind")
    if not isinstance(kind, str):
        raise ManifestInputError(f"{where}: kind is {_type_name(kind)}, not a string")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    label = f"{where} ({kind} {str(name)[:60]})" if isinstance(name, str | int) else f"{where} ({kind})"
    problem = _check(document, _BY_KIND.get(kind, {"metadata": _METADATA}), "")
    if problem:
        raise ManifestInputError(f"{label}: {problem}")
    if kind == "List":
        for position, item in enumerate(document.get("items") or []):
            try:
                check_shape(item, index)
            except ManifestInputError as exc:
                raise ManifestInputError(str(exc).replace(where, f"{where} items[{position}]", 1)) from None
