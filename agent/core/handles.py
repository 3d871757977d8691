"""Metric handles: the one way the sidecar emits its own metrics.

agent/core/metrics.py (generated from the catalogue by `python -m agent.tools.docs`, the way
the OTel Collector's mdatagen gives each scraper typed recorders) holds one handle per
declared metric. Its `sample(value, *, label=...)` takes the declared labels as keyword-only
parameters, so mypy checks label names at every call site; at runtime the same check runs
here, for callers that pass `**labels` built on the fly. An emission with the wrong label
names (or, checked only in strict mode, a value outside a closed set) is a bug: strict mode
(tests: DYNAMO_SIDECAR_STRICT_METRICS=1, set by tests/conftest.py) raises; production keeps
the sample, counts it in dynamo_sidecar_undeclared_emissions_total{metric} and logs once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agent.core import log
from agent.core.catalogue import BY_NAME, MetricSpec
from agent.core.samples import Sample, labels_of

STRICT_ENV = "DYNAMO_SIDECAR_STRICT_METRICS"
# Read once at import; tests may also flip it directly.
STRICT = os.environ.get(STRICT_ENV, "") not in ("", "0")

# Emissions the catalogue does not allow, by metric name: exported by the exporter.
UNDECLARED: dict[str, int] = {}
_LOGGED: set[str] = set()
# Bounded like the state's dropped-by-metric counter: past this, counted under "_other".
MAX_UNDECLARED_NAMES = 100

# A label value is stringified (labels_of): pids and GPU indexes are passed as ints.
LabelValue = object


class UndeclaredMetricError(ValueError):
    """An emission the catalogue does not declare (raised in strict mode only)."""


def undeclared(name: str, detail: str) -> None:
    """Report an emission the catalogue does not allow: raise in strict mode, else count it
    and log the first one per metric."""
    if STRICT:
        raise UndeclaredMetricError(f"{name}: {detail} (see agent/core/catalogue.py)")
    key = name if name in UNDECLARED or len(UNDECLARED) < MAX_UNDECLARED_NAMES else "_other"
    UNDECLARED[key] = UNDECLARED.get(key, 0) + 1
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.get("dynamo_sidecar.metrics").error("undeclared metric emission", metric=name, detail=detail)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Handle:
    """One declared metric. The generated subclasses only narrow the signatures for mypy."""

    __slots__ = ("_bucket_labels", "_labels", "name", "spec")

    def __init__(self, name: str) -> None:
        spec = BY_NAME.get(name)
        if spec is None:  # at import of agent/core/metrics.py: a stale generated module
            raise KeyError(f"{name} is not declared in agent/core/catalogue.py")
        self.name = name
        self.spec: MetricSpec = spec
        self._labels = frozenset(spec.labels)
        self._bucket_labels = self._labels | {"le"}

    def __repr__(self) -> str:
        return f"Handle({self.name!r})"

    def _check(self, name: str, labels: Mapping[str, object], expected: frozenset[str]) -> None:
        if labels.keys() != expected:
            undeclared(name, f"labels {sorted(labels)} where the catalogue declares {sorted(expected)}")
        elif STRICT and self.spec.values:
            for label, allowed in self.spec.values:
                if str(labels[label]) not in allowed:
                    undeclared(name, f"{label}={labels[label]!r} is not one of {allowed}")

    def sample_of(self, value: float, labels: Mapping[str, object]) -> Sample:
        """A sample with labels built at runtime (a table-driven emitter): checked here only."""
        self._check(self.name, labels, self._labels)
        return Sample(self.name, labels_of(**labels), float(value))

    def _selector(self, labels: Mapping[str, object]) -> str:
        unknown = labels.keys() - self._labels
        if unknown:
            undeclared(self.name, f"selector labels {sorted(unknown)} are not declared")
        if not labels:
            return self.name
        inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        return f"{self.name}{{{inner}}}"

    def _part(
        self, suffix: str, value: float, labels: Mapping[str, object], expected: frozenset[str]
    ) -> Sample:
        self._check(self.name + suffix, labels, expected)
        return Sample(self.name + suffix, labels_of(**labels), float(value))

    # The typed signatures are the generated subclasses' (agent/core/metrics.py); these are the
    # runtime bodies, hidden from mypy so the narrower signatures are not "incompatible
    # overrides" of them.
    if not TYPE_CHECKING:

        def sample(self, value, /, **labels):
            return self.sample_of(value, labels)

        def selector(self, **labels):
            """An evidence selector, `name{label="value",...}` in the order given, quoted
            uniformly (values escaped as the text format escapes them). A subset of the
            declared labels is allowed: a selector may match several series."""
            return self._selector(labels)

        def bucket(self, value, /, **labels):
            """A histogram's `_bucket` series: the declared labels and `le`."""
            return self._part("_bucket", value, labels, self._bucket_labels)

        def sum(self, value, /, **labels):
            return self._part("_sum", value, labels, self._labels)

        def count(self, value, /, **labels):
            return self._part("_count", value, labels, self._labels)


def _const(name: str, prefix: str) -> str:
    return name[len(prefix) :].upper()


def _class(name: str, prefix: str) -> str:
    return "_" + "".join(part.capitalize() for part in name[len(prefix) :].split("_"))


def generate_module() -> str:
    """The text of agent/core/metrics.py: one handle class and constant per catalogue entry."""
    from agent.core.catalogue import CATALOGUE, PREFIX

    out = [
        '"""One handle per metric the sidecar emits. GENERATED from agent/core/catalogue.py by',
        "`python -m agent.tools.docs`: do not edit (tests/test_lint_and_docs.py checks it is current).",
        "",
        "`X.sample(value, label=...)` takes exactly the declared labels (mypy checks the names;",
        "agent/core/handles.py checks them at runtime); `X.selector(label=...)` formats an evidence",
        'selector; `X.name` is the full name."""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import TYPE_CHECKING",
        "",
        "from agent.core.handles import Handle",
        "",
        "if TYPE_CHECKING:",
        "    from agent.core.handles import LabelValue",
        "    from agent.core.samples import Sample",
        "",
    ]
    for spec in CATALOGUE:
        cls = _class(spec.name, PREFIX)
        params = "".join(f", {label}: LabelValue" for label in spec.labels)
        kw = f", *{params}" if spec.labels else ""
        optional = (
            ", *" + "".join(f", {label}: LabelValue = ..." for label in spec.labels) if spec.labels else ""
        )
        out += [
            "",
            f"class {cls}(Handle):",
            f'    """{spec.type}{", " + spec.unit if spec.unit else ""}: {spec.help}"""',
            "",
        ]
        out += ["    __slots__ = ()", "", "    if TYPE_CHECKING:", ""]
        out.append(f"        def sample(self, value: float, /{kw}) -> Sample: ...")
        out.append(f"        def selector(self{optional.replace(', *, ', ', *, ', 1)}) -> str: ...")
        if spec.type == "histogram":
            bucket = f", *, le: LabelValue{params}"
            out.append(f"        def bucket(self, value: float, /{bucket}) -> Sample: ...")
            out.append(f"        def sum(self, value: float, /{kw}) -> Sample: ...")
            out.append(f"        def count(self, value: float, /{kw}) -> Sample: ...")
        out += ["", "", f'{_const(spec.name, PREFIX)} = {cls}("{spec.name}")', ""]
    text = "\n".join(out)
    # Formatted as the tree is, so that `ruff format --check` passes on the written file.
    formatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(MODULE), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return formatted.stdout


MODULE = Path(__file__).with_name("metrics.py")
