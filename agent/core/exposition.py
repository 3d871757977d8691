"""Dynamo's Prometheus text, handled as bytes: split by family, each sample line checked
against the text format's grammar, and only the families the sidecar's signals and rules read
parsed into samples. Passthrough re-exports the checked lines unchanged, so ~1,300 series a
scrape cost a split and a regular expression, not a parse and a re-render; a family whose
bytes did not change since the last scrape is not looked at again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from agent.core.samples import Family, Sample, labels_from_dict
from agent.core.textsafe import clean

# One sample line of the text format 0.0.4: name, optional labels, value, optional timestamp.
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
SAMPLE_LINE = re.compile(
    rf"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    rf"(?:\{{\s*(?:{_LABEL}\s*(?:,\s*{_LABEL}\s*)*,?\s*)?\}})?"
    r"[ \t]+(?:[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|inf|NaN|nan))"
    r"(?:[ \t]+-?[0-9]+)?[ \t]*"
)
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
MAX_LINE = 2048  # a longer line (a 200 KB label value) is dropped, not re-exported
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created", "_info", "_gsum", "_gcount")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


@dataclass(slots=True)
class RawFamily:
    """One family's checked lines, ready to re-export as they are."""

    name: str
    type: str
    header: str  # its HELP and TYPE lines, "" when the source gave none
    body: str  # its sample lines, each ending in a newline
    lines: int
    dropped: int = 0  # lines that failed the grammar or the length cap

    @property
    def text(self) -> str:
        return self.header + self.body


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _belongs(sample: str, family: str) -> bool:
    return (
        sample == family
        or (sample.startswith(family) and sample[len(family) :] in SUFFIXES)
        or (base_name(sample) == base_name(family))
    )


class _Builder:
    def __init__(self) -> None:
        self.out: list[RawFamily] = []
        self.name = ""
        self.type = "untyped"
        self.header: list[str] = []
        self.body: list[str] = []
        self.dropped = 0

    def flush(self) -> None:
        if self.body:  # a header with no samples says nothing: leave it out
            self.out.append(
                RawFamily(
                    self.name,
                    self.type,
                    "".join(self.header),
                    "".join(self.body),
                    len(self.body),
                    self.dropped,
                )
            )
        self.name, self.type, self.header, self.body, self.dropped = "", "untyped", [], [], 0


def _blocks(text: str) -> list[str]:
    """The text cut before each HELP/TYPE line that names a new family: no per-line parsing."""
    blocks: list[str] = []
    start = 0
    current = ""
    position = 0
    for line in text.split("\n"):
        if line.startswith(("# HELP ", "# TYPE ")):
            parts = line.split(None, 3)
            name = parts[2] if len(parts) > 2 else ""
            if name != current:
                if position > start:
                    blocks.append(text[start:position])
                start, current = position, name
        position += len(line) + 1
    if start < len(text):
        blocks.append(text[start:])
    return blocks


def _check(block: str, lines_seen: LineCache[str] | None = None) -> tuple[list[RawFamily], int]:
    """A block's lines against the grammar: (families, lines dropped outside any family). A
    line that passed in an earlier scrape (`lines_seen`) is not matched again."""
    build = _Builder()
    known = lines_seen.get if lines_seen is not None else None
    stray = 0
    for line in block.split("\n"):
        if not line or line.isspace():
            continue
        if line[0] == "#":
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if name != build.name:
                    build.flush()
                    build.name = name
                if parts[1] == "TYPE":
                    kind = parts[3].strip() if len(parts) > 3 else "untyped"
                    if kind not in TYPES:
                        build.dropped += 1
                        continue
                    build.type = kind
                if len(line) <= MAX_LINE and METRIC_NAME.fullmatch(name):
                    build.header.append(line + "\n")
            continue
        if len(line) > MAX_LINE:
            build.dropped += 1
            continue
        sample = known(line) if known is not None else None
        if sample is None:
            match = SAMPLE_LINE.fullmatch(line)
            if match is None:
                if build.name:
                    build.dropped += 1
                else:
                    stray += 1
                continue
            sample = match.group("name")
            if lines_seen is not None:
                lines_seen.put(line, sample)
        if not build.name or not _belongs(sample, build.name):
            build.flush()
            build.name = sample
        build.body.append(line + "\n")
    build.flush()
    return build.out, stray


# A checked sample line's parts: the grammar above has been matched, so these need not check.
_PARTS = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')
# Escapes as prometheus_client reads them: anything else after a backslash stays as written.
_VALUE_ESCAPES = re.compile(r'\\[\\n"]')
_HELP_ESCAPES = re.compile(r"\\[\\n]")
_UNESCAPE = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
# The sample names a family of each type owns, as prometheus_client's text parser has it; any
# other name in the family's lines is a family of its own ("unknown").
_OWNED = {"summary": ("_count", "_sum", ""), "histogram": ("_count", "_sum", "_bucket")}


def _unescape(pattern: re.Pattern[str], text: str) -> str:
    return pattern.sub(lambda match: _UNESCAPE[match.group(0)], text) if "\\" in text else text


V = TypeVar("V")


class LineCache(Generic[V]):
    """What was worked out for a sample line (its name, its parse), kept across scrapes: a
    family that moved changes a few of its lines (the buckets an observation fell under),
    and the rest are a dictionary lookup. Bounded: emptied once it holds more than twice
    the lines the source exposes (old values pile up as counters move)."""

    def __init__(self) -> None:
        self._known: dict[str, V] = {}
        self.get = self._known.get

    def put(self, line: str, value: V) -> None:
        self._known[line] = value

    def trim(self, lines_now: int) -> None:
        if len(self._known) > 2 * lines_now + 1024:
            self._known.clear()


def _parse_line(line: str) -> Sample | None:
    match = _PARTS.match(line)
    if match is None:  # cannot happen for a checked line; skipped rather than trusted
        return None
    sample_name, label_text, value_text = match.groups()
    if not label_text:
        return Sample(sample_name, (), float(value_text))
    pairs = _PAIR.findall(label_text)
    if "\\" in label_text:
        pairs = [(key, _unescape(_VALUE_ESCAPES, value)) for key, value in pairs]
    return Sample(sample_name, labels_from_dict(dict(pairs)), float(value_text))


def parse_family(family: RawFamily, memo: LineCache[Sample] | None = None) -> list[Family]:
    """A checked family parsed into samples: the same sample names, labels and values
    prometheus_client's text parser gives (a counter's samples end in `_total`; from a name
    the family's type does not own on, each line is a family of its own), without its character-by-character
    parse: the lines already passed the grammar, so one regular expression per line takes
    them apart (several times faster), and a line parsed in an earlier scrape (`memo`) is not
    parsed again."""
    help_text = ""
    kind = "untyped"
    for line in family.header.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[1] == "HELP":
            help_text = _unescape(_HELP_ESCAPES, parts[3])
        elif len(parts) == 4 and parts[1] == "TYPE":
            kind = parts[3].strip()
    name = family.name if family.header else ""
    owned = {name + suffix for suffix in _OWNED.get(kind, ("",))} if name else set()
    main = Family(clean(name, 200), "unknown" if kind == "untyped" else kind, clean(help_text, 400))
    rename = ""
    if kind == "counter":
        if name.endswith("_total"):
            main.name = clean(name[:-6], 200)
        else:
            rename = name  # samples named as the family become name_total
    out = [main]
    samples = main.samples
    for line in family.body.splitlines():
        item = memo.get(line) if memo is not None else None
        if item is None:
            item = _parse_line(line)
            if item is None:
                continue
            if memo is not None:
                memo.put(line, item)
        if item.name in owned:
            if rename:
                item = Sample(item.name + "_total", item.labels, item.value)
            samples.append(item)
        else:
            out.append(Family(clean(item.name, 200), "unknown", "", [item]))
            # As prometheus_client does: after a name the type does not own, the family has
            # ended, and every later line is a family of its own, none renamed.
            owned, rename = set(), ""
    return [f for f in out if f.samples] if len(out) > 1 else out


class Splitter:
    """split_families with memory: a block whose bytes equal last scrape's is not checked
    again (only what changed since is), and in a changed block only the lines not seen
    before are matched. It remembers the last scrape's blocks and a bounded set of lines."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[list[RawFamily], int]] = {}
        self._lines: LineCache[str] = LineCache()  # line -> its sample name
        self.checked = 0  # blocks checked in the last split (the rest were reused)

    def split(self, text: str) -> tuple[list[RawFamily], int]:
        families: list[RawFamily] = []
        stray = 0
        seen: dict[str, tuple[list[RawFamily], int]] = {}
        self.checked = 0
        lines = self._lines
        for block in _blocks(text):
            known = self._last.get(block)
            if known is None:
                known = _check(block, lines)
                self.checked += 1
            seen[block] = known
            families.extend(known[0])
            stray += known[1]
        self._last = seen
        lines.trim(sum(f.lines for f in families) + stray)
        return families, stray


def split_families(text: str) -> tuple[list[RawFamily], int]:
    """(families in order, lines dropped outside any family). Every kept sample line matches
    the text format's grammar and belongs to its family's name."""
    return Splitter().split(text)


def merge(sources: Iterable[list[RawFamily]], conflicts: dict[str, int] | None = None) -> list[RawFamily]:
    """Families of several sources (frontend, workers) as one exposition: a family seen twice
    keeps its first header and type (one of another type is left out and counted in
    `conflicts`); a series seen twice keeps its first line."""
    merged: dict[str, RawFamily] = {}
    repeated: set[str] = set()
    for families in sources:
        for family in families:
            known = merged.get(family.name)
            if known is None:
                merged[family.name] = RawFamily(
                    family.name, family.type, family.header, family.body, family.lines, family.dropped
                )
            elif known.type == family.type:
                known.body += family.body
                known.lines += family.lines
                repeated.add(family.name)
            elif conflicts is not None:
                conflicts[family.name] = conflicts.get(family.name, 0) + family.lines
    for name in repeated:  # rare: only when two sources expose the same family
        family = merged[name]
        seen: set[str] = set()
        kept = []
        for line in family.body.splitlines(keepends=True):
            key = line.rsplit(" ", 1)[0]
            if key not in seen:
                seen.add(key)
                kept.append(line)
        family.body, family.lines = "".join(kept), len(kept)
    return list(merged.values())


def capped(
    families: list[RawFamily],
    max_names: int,
    max_series: int,
    max_per_family: int,
    drop: Callable[[str, str, int], None],
) -> list[RawFamily]:
    """The families within the caps; what is cut is reported to `drop(name, cap, count)`."""
    out: list[RawFamily] = []
    total = 0
    for family in families:
        if len(out) >= max_names:
            drop(family.name, "metric_names", family.lines)
            continue
        if family.lines > max_per_family:
            lines = family.body.splitlines(keepends=True)
            drop(family.name, "series_per_metric", len(lines) - max_per_family)
            family = RawFamily(
                family.name, family.type, family.header, "".join(lines[:max_per_family]), max_per_family
            )
        if total + family.lines > max_series:
            room = max(0, max_series - total)
            drop(family.name, "series", family.lines - room)
            if not room:
                continue
            lines = family.body.splitlines(keepends=True)[:room]
            family = RawFamily(family.name, family.type, family.header, "".join(lines), room)
        total += family.lines
        out.append(family)
    return out


MAX_SCRAPE_SERIES = 100_000  # one scrape; Dynamo's real surface is ~1,300


class ParseBudget(Exception):
    """The parse ran out of time or series: stop the work itself, not only the waiting."""


class Budget:
    def __init__(self, seconds: float, max_series: int = MAX_SCRAPE_SERIES) -> None:
        self.deadline = time.monotonic() + seconds
        self.max_series = max_series
        self.series = 0
        self.exhausted = ""  # "time" or "series" once it ran out

    def spend(self, series: int) -> None:
        self.series += series
        if self.series > self.max_series:
            self.exhausted = "series"
            raise ParseBudget(self.exhausted)
        if time.monotonic() > self.deadline:
            self.exhausted = "time"
            raise ParseBudget(self.exhausted)


def _families_from(text: str, budget: Budget, out: list[Family] | None = None) -> list[Family]:
    """Families parsed from `text`, appended to `out` as they complete, so a parse cut by
    the budget keeps what it had."""
    out = [] if out is None else out
    for metric in text_string_to_metric_families(text):
        budget.spend(len(metric.samples))
        family = Family(clean(metric.name, 200), metric.type, clean(metric.documentation, 400))
        for item in metric.samples:
            family.samples.append(Sample(item.name, labels_from_dict(item.labels), float(item.value)))
        out.append(family)
    return out


def parse_exposition(text: str, budget: Budget | None = None) -> tuple[list[Family], int]:
    """Parse a Prometheus text body; on a parse error, salvage block by block. Stops when
    the budget (time, series) runs out, keeping the families parsed so far.

    Returns the families and the number of lines that had to be skipped.
    """
    budget = budget or Budget(10.0)
    parsed: list[Family] = []
    try:
        if text.count("\n") > CHUNK_LINES:
            return _chunked(text, budget, parsed), 0
        return _families_from(text, budget, parsed), 0
    except ParseBudget:
        return _merge(parsed), 0
    except Exception:  # prometheus_client raises ValueError, IndexError, ... on garbage
        parsed.clear()
    families: list[Family] = []
    skipped = 0
    block: list[str] = []

    def flush() -> None:
        nonlocal skipped
        if not block:
            return
        chunk = "\n".join(block) + "\n"
        try:
            families.extend(_families_from(chunk, budget))
        except ParseBudget:
            raise
        except Exception:
            # Fall back to line by line within the block, keeping its TYPE/HELP header.
            header = [line for line in block if line.startswith("#")]
            for line in block:
                if line.startswith("#"):
                    continue
                try:
                    families.extend(_families_from("\n".join([*header, line]) + "\n", budget))
                except ParseBudget:
                    raise
                except Exception:
                    skipped += 1
        block.clear()

    try:
        for line in text.splitlines():
            if line.startswith("# HELP") or (
                line.startswith("# TYPE") and not any(b.startswith("# HELP") for b in block[-1:])
            ):
                flush()
            if line.strip():
                block.append(line)
        flush()
    except ParseBudget:
        pass  # keep what was salvaged before the budget ran out
    return _merge(families), skipped


CHUNK_LINES = 10_000  # a big body is parsed this many lines at a time, the budget checked between


def _chunked(text: str, budget: Budget, out: list[Family]) -> list[Family]:
    """A large body in slices of CHUNK_LINES sample lines, each with its family's HELP/TYPE
    header, so the budget can stop the work inside one huge family too."""
    header: list[str] = []
    lines: list[str] = []

    def flush() -> None:
        if lines:
            _families_from("\n".join([*header, *lines]) + "\n", budget, out)
            lines.clear()

    def name_of(line: str) -> str:
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 else ""

    for line in text.splitlines():
        if line.startswith(("# HELP", "# TYPE")):
            if header and name_of(header[0]) != name_of(line):
                flush()  # a new family begins
                header = []
            elif not header:
                flush()
            header.append(line)
            continue
        if line.startswith("#"):
            continue
        if line.strip():
            lines.append(line)
            if len(lines) >= CHUNK_LINES:
                flush()
    flush()
    return _merge(out)


def _merge(families: list[Family]) -> list[Family]:
    """One family per name. The families given are never changed: they may be a parse the
    collector remembers for the next scrape (a name split in two blocks is merged into a copy)."""
    merged: dict[str, Family] = {}
    copied: set[str] = set()
    for family in families:
        existing = merged.get(family.name)
        if existing is None:
            merged[family.name] = family
        elif existing.type == family.type:
            if family.name not in copied:
                copied.add(family.name)
                existing = merged[family.name] = Family(
                    existing.name, existing.type, existing.help, list(existing.samples)
                )
            existing.samples.extend(family.samples)
    return list(merged.values())
