"""The data collectors hand to the state: samples, passthrough families and events.

Collectors speak only these types; they never see Prometheus or HTTP objects.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from agent.core.textsafe import clean

Labels = tuple[tuple[str, str], ...]


MAX_LABEL_VALUE = 256


# Label sets seen before, by their keyword items: collectors add the same series every cycle.
# Only sets of short strings are remembered: 1, 1.0 and True are equal keys but different
# text, so a hit is always exact, and a long value from outside is never held. Bounded:
# cleared when full (at most ~8,000 x a few 256-character values; the sidecar's own series
# are ~600-1,500).
_LABELS_SEEN: dict[tuple[tuple[str, object], ...], Labels] = {}
MAX_LABELS_SEEN = 8192


def labels_of(**labels: object) -> Labels:
    """Canonical (sorted, stringified) label tuple, hashable and cheap to compare. Values are
    cleaned (valid UTF-8, at most 256 characters): a label from outside cannot break the
    exposition or hold megabytes."""
    key = tuple(labels.items())
    try:
        found = _LABELS_SEEN.get(key)
    except TypeError:  # an unhashable value: stringified below, not remembered
        found = None
    if found is None:
        found = tuple(sorted((k, clean(v, MAX_LABEL_VALUE)) for k, v in key))
        if all(value.__class__ is str and len(value) <= MAX_LABEL_VALUE for _, value in key):
            if len(_LABELS_SEEN) >= MAX_LABELS_SEEN:
                _LABELS_SEEN.clear()
            _LABELS_SEEN[key] = found
    return found


def labels_from_dict(labels: dict[str, str]) -> Labels:
    """Labels parsed from a scraped source: kept as they are unless absurdly long."""
    return tuple(
        sorted((k, v if len(v) <= MAX_LABEL_VALUE else clean(v, MAX_LABEL_VALUE)) for k, v in labels.items())
    )


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one series. `name` is the full series name (with `_total`, `_bucket`...)."""

    name: str
    labels: Labels
    value: float

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


def sample(name: str, value: float, /, **labels: object) -> Sample:
    return Sample(name, labels_of(**labels), float(value))


@dataclass(slots=True)
class Family:
    """A metric family passed through unchanged from a scraped source (Dynamo's /metrics)."""

    name: str
    type: str
    help: str
    samples: list[Sample] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened at a point in time: a health transition, an XID, a restart."""

    kind: str
    source: str
    message: str
    timestamp: float = field(default_factory=time.time)
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "message": self.message,
            "timestamp": self.timestamp,
            "attributes": self.attributes,
        }


@dataclass(slots=True)
class CollectResult:
    """What one `collect()` call returns."""

    samples: list[Sample] = field(default_factory=list)
    families: list[Family] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Source-level facts that are not numbers (parsed health bodies, process states): one
    # typed dataclass per source, from agent/core/facts.py.
    facts: Any = None
    # Scraped families re-exported as their checked text lines (agent/core/exposition.py),
    # without being parsed; `families` holds only the ones signals and rules read.
    raw: list[Any] = field(default_factory=list)
    # What of this run the rules judge, timings and clocks left out, for a collector that can
    # vouch for it (health, logs): two runs with equal digests tell the findings nothing new,
    # and a quiet pod's evaluation skips a cycle that brought only that (agent/runtime/quiet.py).
    # None: every run may change something.
    digest: Hashable | None = None

    def add(self, item: Sample) -> None:
        """One sample, made by a metric handle: `result.add(m.X.sample(value, label=...))`."""
        self.samples.append(item)
