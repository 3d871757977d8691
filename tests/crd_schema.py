"""Validate an object against a CustomResourceDefinition's openAPIV3Schema, as strictly as
`kubectl apply` (server-side field validation "Strict", kubectl's default) would: an unknown
field is an error, not silently pruned; a `x-kubernetes-list-type: map` list may not repeat a
key. The structural-schema subset a CRD uses is JSON Schema, so `jsonschema` (a dependency of
kubernetes-validate, kept up by the python-jsonschema project) does the walking; this module
only turns Kubernetes' extensions into JSON Schema. Not checked: `format` and the CEL rules
(`x-kubernetes-validations`); a test asserts the few CEL rules that touch what it changes."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PRESERVE = "x-kubernetes-preserve-unknown-fields"


def _strict(schema: Any, root_metadata: bool = False) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict(sub, root_metadata=False) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _strict(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_strict(sub) for sub in value]
        elif key == "default":
            continue  # the API server fills defaults; they say nothing about validity
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and "additionalProperties" not in out and not schema.get(PRESERVE) and not root_metadata:
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator: Any, list_type: Any, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    if list_type != "map" or not isinstance(instance, list):
        return
    keys = schema.get("x-kubernetes-list-map-keys") or []
    seen: set[tuple[Any, ...]] = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate entry for key {dict(zip(keys, key, strict=True))}")
        seen.add(key)


Validator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_map_keys}
)


@functools.lru_cache(maxsize=4)
def validators(crd_path: Path) -> dict[str, Any]:
    """{version: validator} for every version the CRD serves."""
    crd = yaml.load(crd_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out = {}
    for version in crd["spec"]["versions"]:
        if not version.get("served"):
            continue
        schema = _strict(version["schema"]["openAPIV3Schema"])
        # The API server validates the root ObjectMeta itself; the CRD lists it as a bare object.
        schema["properties"]["metadata"] = {"type": "object"}
        out[version["name"]] = Validator(schema)
    return out


def errors(crd_path: Path, obj: dict[str, Any]) -> list[str]:
    """Every schema violation of `obj` for its apiVersion, as "path: message" lines."""
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    validator = validators(crd_path).get(version)
    if validator is None:
        return [f"apiVersion {obj.get('apiVersion')!r} is not served by the CRD"]
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message[:300]}"
        for error in validator.iter_errors(obj)
    ]
