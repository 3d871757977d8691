"""A mutable copy of a recorded Dynamo /metrics body.

The simulated Dynamo starts from the exact bytes a real Dynamo 1.6.1 served and changes
only the values of the series its traffic touches, so family names, HELP/TYPE lines, label
sets, bucket bounds and ordering stay those of the real thing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_labels(text: str) -> dict[str, str]:
    return dict(_LABEL_RE.findall(text))


def format_value(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class _Series:
    name: str
    labels_text: str  # exactly as recorded, e.g. '{model="tiny",le="0.5"}' or ''
    labels: dict[str, str]
    value: float
    recorded_text: str | None = None  # the value as recorded, until the sim changes it

    def text(self) -> str:
        if self.recorded_text is not None and float(self.recorded_text) == self.value:
            return self.recorded_text
        return format_value(self.value)


@dataclass
class _Block:
    family: str
    header: list[str] = field(default_factory=list)
    series: list[_Series] = field(default_factory=list)


class PromTemplate:
    def __init__(self, text: str) -> None:
        self.blocks: list[_Block] = []
        self._by_family: dict[str, _Block] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                family = parts[2] if len(parts) > 2 else ""
                block = self._block(family)
                block.header.append(line)
                continue
            head, _, value_text = line.rpartition(" ")
            name, brace, rest = head.partition("{")
            labels_text = brace + rest
            family = self._family_of(name)
            self._block(family).series.append(
                _Series(name, labels_text, parse_labels(labels_text), float(value_text), value_text)
            )

    def _block(self, family: str) -> _Block:
        block = self._by_family.get(family)
        if block is None:
            block = self._by_family[family] = _Block(family)
            self.blocks.append(block)
        return block

    def _family_of(self, name: str) -> str:
        if name in self._by_family:
            return name
        for suffix in ("_bucket", "_sum", "_count", "_total"):
            if name.endswith(suffix) and name[: -len(suffix)] in self._by_family:
                return name[: -len(suffix)]
        return name

    def families(self) -> list[str]:
        return [block.family for block in self.blocks]

    def _matching(self, name: str, labels: dict[str, str]) -> list[_Series]:
        block = self._by_family.get(self._family_of(name))
        if block is None:
            return []
        wanted = labels.items()
        return [s for s in block.series if s.name == name and wanted <= s.labels.items()]

    def get(self, name: str, **labels: str) -> float | None:
        found = self._matching(name, labels)
        return found[0].value if found else None

    def set(self, name: str, value: float, **labels: str) -> None:
        found = self._matching(name, labels)
        if not found:
            self._add(name, labels, value)
            return
        for series in found:
            series.value = value

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        found = self._matching(name, labels)
        if not found:
            self._add(name, labels, amount)
            return
        found[0].value += amount

    def observe(self, histogram: str, value: float, **labels: str) -> None:
        for series in self._matching(histogram + "_bucket", labels):
            bound = series.labels.get("le", "+Inf")
            if value <= float(bound):
                series.value += 1
        for series in self._matching(histogram + "_sum", labels):
            series.value += value
        for series in self._matching(histogram + "_count", labels):
            series.value += 1

    def _add(self, name: str, labels: dict[str, str], value: float) -> None:
        """A series the recording did not have yet, as Dynamo creates them lazily."""
        block = self._block(self._family_of(name))
        labels_text = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        block.series.append(_Series(name, labels_text, dict(labels), value))

    def render(self) -> str:
        lines: list[str] = []
        for block in self.blocks:
            lines.extend(block.header)
            lines.extend(f"{s.name}{s.labels_text} {s.text()}" for s in block.series)
        return "\n".join(lines) + "\n"
