"""`audit -f` and `inject -f` with hostile input (issue 26 item 7), through the CLI as a
subprocess: each case is one line on stderr, exit 64 (docs/cli.md), nothing on stdout, no
traceback, and it returns (the subprocess timeout is the bound: /dev/zero used to be read
until out of memory, a FIFO blocked forever)."""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core import exitcodes
from agent.tools.audit import ManifestError, audit_documents
from agent.tools.inject import InjectError, Options, inject
from agent.tools.manifest_input import MAX_BYTES, ManifestInputError, check_shape
from tests.procs import ENV, PYTHON

ROOT = Path(__file__).resolve().parents[2]  # the checkout (no helper import: works on any layout)
LABEL = "labels: {nvidia.com/dynamo-component-type: worker}"
BIG = "9" * 5000
LONG = "9" * 4000

CASES = [
    # (name, manifest, what the one line says)
    ("int_over_4300_digits", f"kind: Pod\nmetadata: {{name: x}}\nspec: {{terminationGracePeriodSeconds: {BIG}}}\n", "a number of 5000 characters at line 3"),
    ("int_of_4000_digits", f"kind: Deployment\nmetadata: {{name: x}}\nspec: {{replicas: {LONG}}}\n", "a number of 4000 characters at line 3"),
    ("nested_900", "a: " + "[" * 900 + "]" * 900 + "\n", "nested deeper than 64 levels"),
    ("nested_5000", "[" * 5000 + "]" * 5000 + "\n", "YAML"),
    ("alias", "a: &x [1]\nb: *x\n", "aliases (*name) are not allowed"),
    ("metadata_int", "kind: Pod\nmetadata: 5\nspec: {containers: []}\n", "document 1 (Pod): metadata: expected a mapping, got an integer"),
    ("spec_list", "kind: Pod\nmetadata: {name: x}\nspec: [1, 2]\n", "document 1 (Pod x): spec: expected a mapping, got a list"),
    ("containers_int", "kind: Pod\nmetadata: {name: x}\nspec: {containers: 5}\n", "spec.containers: expected a list, got an integer"),
    ("container_int", f"kind: Pod\nmetadata: {{name: x, {LABEL}}}\nspec: {{containers: [5]}}\n", "spec.containers[0]: expected a mapping, got an integer"),
    ("env_int", f"kind: Pod\nmetadata: {{name: x, {LABEL}}}\nspec: {{containers: [{{name: main, env: 3}}]}}\n", "spec.containers[0].env: expected a list, got an integer"),
    ("env_name_int", "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: main, env: [{name: 3}]}]}\n", "env[0].name: expected a string, got an integer"),
    ("resources_list", "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: main, resources: [1]}]}\n", "resources: expected a mapping, got a list"),
    ("probe_int", "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: main, livenessProbe: 5}]}\n", "livenessProbe: expected a mapping, got an integer"),
    ("grace_text", "kind: Pod\nmetadata: {name: x}\nspec: {terminationGracePeriodSeconds: abc, containers: [{name: main}]}\n", "terminationGracePeriodSeconds: expected an integer, got a string"),
    ("labels_int", "kind: Pod\nmetadata: {name: x, labels: 5}\nspec: {containers: [{name: main}]}\n", "metadata.labels: expected a mapping, got an integer"),
    ("template_list", "kind: Deployment\nmetadata: {name: x}\nspec: {template: [1]}\n", "spec.template: expected a mapping, got a list"),
    ("dgd_services_list", "kind: DynamoGraphDeployment\nmetadata: {name: g}\nspec: {services: [1]}\n", "spec.services: expected a mapping, got a list"),
    ("dgd_envs_int", "kind: DynamoGraphDeployment\nmetadata: {name: g}\nspec: {envs: 5, services: {}}\n", "spec.envs: expected a list, got an integer"),
    ("dgd_main_int", "kind: DynamoGraphDeployment\nmetadata: {name: g}\nspec: {services: {W: {componentType: worker, extraPodSpec: {mainContainer: 5}}}}\n", "spec.services.W.extraPodSpec.mainContainer: expected a mapping, got an integer"),
    ("dgd_components_map", "apiVersion: nvidia.com/v1beta1\nkind: DynamoGraphDeployment\nmetadata: {name: g}\nspec: {components: {a: 1}}\n", "spec.components: expected a list, got a mapping"),
    ("list_items", "kind: List\nitems: [1]\n", "items[0]: expected a mapping, got an integer"),
    ("list_item_shape", "kind: List\nitems: [{kind: Pod, metadata: {name: p}, spec: {containers: 3}}]\n", "document 1 items[0] (Pod p): spec.containers: expected a list"),
    ("document_list", "- 1\n- 2\n", "document 1 is a list, not a Kubernetes object"),
    ("kind_int", "kind: 5\n", "document 1: kind is an integer, not a string"),
    ("replicas_huge", "kind: Deployment\nmetadata: {name: x}\nspec: {replicas: 99999999999999999999}\n", "spec.replicas: 99999999999999999999 is out of range"),
    ("duplicate_key", "kind: Pod\nkind: Pod\n", "duplicate key 'kind' at line 2"),
    ("utf16", "\ufeffkind: Pod\n", "UTF-16"),
]  # fmt: skip


def _run(
    command: str, *args: str, stdin: bytes | None = None, stdin_file: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    extra = ["--image", "registry/dynamo-sidecar:0"] if command == "inject" else []
    handle = open(stdin_file, "rb") if stdin_file else None  # noqa: SIM115
    try:
        return subprocess.run(
            [PYTHON, "-m", "agent.cli", command, *args, *extra],
            input=stdin,
            stdin=handle,
            capture_output=True,
            env=ENV,
            timeout=60,
        )
    finally:
        if handle:
            handle.close()


def _one_line(result: subprocess.CompletedProcess[bytes], expected: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == exitcodes.USAGE, err
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert result.stdout == b""


@pytest.mark.parametrize("command", ["audit", "inject"])
@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_a_hostile_manifest_is_one_line_and_exit_64(
    command: str, name: str, text: str, expected: str, tmp_path: Path
) -> None:
    data = text.encode("utf-16") if name == "utf16" else text.encode()
    manifest = tmp_path / "m.yaml"
    manifest.write_bytes(data)
    _one_line(_run(command, "-f", str(manifest)), expected)


@pytest.mark.parametrize("command", ["audit", "inject"])
def test_special_files_are_refused_not_read(command: str, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes to it: reading would block forever
    _one_line(_run(command, "-f", str(fifo)), "a FIFO, not a regular file (pipe it to -f - instead)")
    _one_line(_run(command, "-f", "/dev/zero"), "a device, not a regular file")
    _one_line(_run(command, "-f", str(tmp_path)), "a directory, not a regular file")


@pytest.mark.parametrize("command", ["audit", "inject"])
def test_input_over_the_size_limit_is_refused(command: str, tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:  # 50 MB of list items: took more than 300 s to parse
        handle.write(b"items:\n" + b"- 1\n" * (50_000_000 // 4))
    _one_line(_run(command, "-f", str(big)), f"at most {MAX_BYTES} (8 MiB) are read")
    # stdin has no size to look at: it is read up to the limit, then refused.
    _one_line(_run(command, "-f", "-", stdin_file="/dev/zero"), "more than 8388608 bytes (8 MiB)")


def test_a_list_of_valid_pods_near_a_mebibyte_is_read(tmp_path: Path) -> None:
    item = (
        "- apiVersion: v1\n  kind: Pod\n  metadata: {name: w%d, labels: {nvidia.com/dynamo-component-type: worker}}\n"
        "  spec:\n    containers:\n    - name: main\n      image: x\n      command: [python3, -m, dynamo.vllm]\n"
    )
    text = "apiVersion: v1\nkind: List\nitems:\n" + "".join(item % i for i in range(5000))
    manifest = tmp_path / "list.yaml"
    manifest.write_text(text)
    assert 0.8e6 < len(text) < MAX_BYTES
    audit = _run("audit", "-f", str(manifest), "--format", "json")
    assert audit.returncode in {exitcodes.WARNING, exitcodes.CRITICAL}, audit.stderr[-300:]
    inject = _run("inject", "-f", str(manifest))
    assert inject.returncode == exitcodes.OK, inject.stderr[-300:]
    assert inject.stdout.count(b"name: dynamo-sidecar\n") == 5000


def test_a_4000_digit_integer_in_the_config_is_one_line(tmp_path: Path) -> None:
    for key in ("listen_host", "listen_port", "frontend_url", "process_interval"):
        config = tmp_path / "c.yaml"
        config.write_text(f"{key}: {LONG}\n")
        result = subprocess.run(
            [PYTHON, "-m", "agent.cli", "run", "--config", str(config)],
            capture_output=True,
            env=ENV,
            timeout=60,
        )
        err = result.stderr.decode()
        assert result.returncode == exitcodes.USAGE, err
        assert len(err.strip().splitlines()) == 1 and f"config key '{key}'" in err, err
        assert "digits>" in err and LONG[:50] not in err


REPLACEMENTS: list[Any] = [5, "x", [1], {"a": 1}, None, 10**30, [None]]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _paths(item, (*path, index))


def test_every_field_of_the_fixtures_replaced_by_a_wrong_type_is_refused_or_handled() -> None:
    """Each field of the example manifests (Pods, a v1alpha1 DGD, the audit DGDs) replaced by
    values of other types, one at a time: the shape check refuses it, or audit and inject
    handle it with their own errors. Before, `resources.limits: 5`, `metadata: null`,
    `containers: null` and `experimental: 5` got past into an AttributeError or TypeError."""
    fixtures = sorted((ROOT / "tests" / "fixtures").glob("k8s/*.yaml")) + sorted(
        (ROOT / "tests" / "fixtures").glob("audit/*.yaml")
    )
    documents = [d for path in fixtures for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(documents) >= 5
    options = Options(image="registry/dynamo-sidecar:0")
    crashes: list[str] = []
    tried = refused = 0
    for document in documents:
        for path in list(_paths(document))[1:]:
            for replacement in REPLACEMENTS:
                mutated = copy.deepcopy(document)
                target = mutated
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = copy.deepcopy(replacement)
                tried += 1
                try:
                    check_shape(mutated, 1)
                except ManifestInputError:
                    refused += 1
                    continue
                for name, run in (
                    ("audit", lambda m=mutated: audit_documents([m])),
                    ("inject", lambda m=mutated: inject(copy.deepcopy(m), options)),
                ):
                    try:
                        run()
                    except (ManifestError, InjectError):
                        pass
                    except Exception as exc:  # what this test is for
                        crashes.append(f"{name}: {'.'.join(map(str, path))} = {replacement!r}: {exc!r}"[:200])
    assert tried > 1000 and refused > 100
    assert crashes == []
