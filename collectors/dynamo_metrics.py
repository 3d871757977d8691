"""Dynamo's own Prometheus metrics: the frontend's /metrics and each worker's system /metrics.

Series are returned unchanged as passthrough families (the exporter applies the allow/deny
lists); the state keeps history for the ones derived signals need. A garbage or truncated
body loses only the families it breaks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agent.facts import MetricsFacts, ScrapeFact
from agent.samples import CollectResult, Family, Sample, labels_from_dict
from agent.signals import DynamoNames
from agent.textsafe import clean
from collectors.base import Collector, CollectorSpec, Hooks, register
from collectors.dynamo_health import Target, targets_from
from collectors.exposition import LineCache, RawFamily, Splitter, base_name, parse_family
from collectors.http import fetch, new_session

if TYPE_CHECKING:
    from agent.config import Config

PREFIX = "dynamo_sidecar_"


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


WORKER_HANDLER_FAMILY = "dynamo_component_inflight_requests"
MAX_WORKER_IDS = 16


def _worker_ids(families: list[Family]) -> list[str]:
    """The worker's instance ids: the `worker_id` labels of its request handler gauge (one
    per served Dynamo endpoint; the runtime's own uptime series carries other ids)."""
    ids: set[str] = set()
    for family in families:
        if family.name != WORKER_HANDLER_FAMILY:
            continue
        for item in family.samples:
            worker_id = dict(item.labels).get("worker_id", "")
            if worker_id and len(ids) < MAX_WORKER_IDS:
                ids.add(worker_id)
    return sorted(ids)


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


class DynamoMetricsCollector(Collector):
    name = "dynamo_metrics"

    def __init__(
        self,
        targets: list[Target],
        metrics_path: str,
        interval: float,
        timeout: float,
        http_timeout: float,
        max_bytes: int,
        wanted: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(interval, timeout)
        self.targets = targets
        # Families signals and rules read are parsed into samples; the rest pass through as
        # checked text. None parses everything.
        self.wanted = wanted
        self._splitters: dict[str, Splitter] = {t.endpoint: Splitter() for t in targets}
        # endpoint -> sample line -> its parse
        self._lines: dict[str, LineCache[Sample]] = {t.endpoint: LineCache() for t in targets}
        self._parsed: dict[str, dict[str, list[Family]]] = {}  # endpoint -> family text -> parse
        # endpoint -> (body, its split): an idle frontend's 80 KB exposition is the same bytes
        # scrape after scrape; an unchanged body skips the split, check and parse.
        self._last: dict[str, tuple[str, tuple[list[RawFamily], list[Family], int]]] = {}
        self.metrics_path = metrics_path
        self.http_timeout = http_timeout
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None
        self._errors: dict[tuple[str, str], int] = {}
        # endpoint -> when its current run of failed scrapes was first seen (wall clock, at the
        # failure): the rule judges it only once the health probe has looked after that.
        self._failing_since: dict[str, float] = {}

    async def collect(self) -> CollectResult:
        if self._session is None:
            self._session = new_session()
        responses = await asyncio.gather(
            *(
                fetch(
                    self._session,
                    target.base_url + self.metrics_path,
                    self.http_timeout,
                    self.max_bytes,
                    headers={"Accept": "text/plain;version=0.0.4"},
                )
                for target in self.targets
            )
        )
        result = CollectResult()
        facts: dict[str, ScrapeFact] = {}
        for target, response in zip(self.targets, responses, strict=True):
            labels = {"endpoint": target.endpoint}
            fact = ScrapeFact(response.url, response.status, round(response.elapsed, 6))
            facts[target.endpoint] = fact
            result.add(PREFIX + "scrape_duration_seconds", response.elapsed, **labels)
            reason = response.failure
            if not reason and response.status != 200:
                reason = "http_error"
            families: list[Family] = []
            raw: list[RawFamily] = []
            skipped = 0
            if not reason:
                text = response.body.decode("utf-8", "replace")
                # Off the event loop. The budget ends the thread's work before the
                # collector's timeout, so a hostile body cannot leave it running after the
                # collection gave up on it.
                budget = Budget(max(0.05, self.timeout * 0.6 - response.elapsed))
                if self.wanted is None:
                    families, skipped = await asyncio.to_thread(parse_exposition, text, budget)
                    raw = []
                else:
                    raw, families, skipped = await asyncio.to_thread(
                        self._split, target.endpoint, text, budget
                    )
                if not families and not raw:
                    reason = "malformed" if not budget.exhausted else f"too_many_{budget.exhausted}"
                elif skipped:
                    self._count_error(target.endpoint, "partial")
                if budget.exhausted and families:
                    self._count_error(target.endpoint, f"cut_{budget.exhausted}")
            if reason:
                self._count_error(target.endpoint, reason)
                fact.reason, fact.error = reason, response.error or f"HTTP {response.status}"
                fact.body_excerpt = response.excerpt(200)
                fact.failing_since = self._failing_since.setdefault(target.endpoint, time.time())
            else:
                self._failing_since.pop(target.endpoint, None)
                fact.up, fact.series, fact.skipped_lines = (
                    True,
                    sum(len(f.samples) for f in families),
                    skipped,
                )
            series = sum(f.lines for f in raw) if raw else sum(len(f.samples) for f in families)
            if not reason:
                fact.series = series
            if target.kind == "worker" and families:
                fact.worker_ids = _worker_ids(families)
            result.add(PREFIX + "scrape_up", 0 if reason else 1, **labels)
            result.add(PREFIX + "scrape_bytes", len(response.body), **labels)
            result.add(PREFIX + "scrape_series", series, **labels)
            result.families.extend(families)
            result.raw.append(raw)
        for (endpoint, reason), count in self._errors.items():
            result.add(PREFIX + "scrape_errors_total", count, endpoint=endpoint, reason=reason)
        result.facts = MetricsFacts(facts, time.time())
        return result

    def _split(self, endpoint: str, text: str, budget: Budget) -> tuple[list[RawFamily], list[Family], int]:
        """(checked families, the wanted ones parsed, lines dropped). A body unchanged since
        the last scrape is that scrape's split; a wanted family whose text is unchanged is not
        parsed again."""
        last = self._last.get(endpoint)
        if last is not None and last[0] == text:
            return last[1]
        raw, stray = self._splitters[endpoint].split(text)
        budget.spend(sum(f.lines for f in raw))
        known = self._parsed.get(endpoint, {})
        lines = self._lines[endpoint]
        parsed: dict[str, list[Family]] = {}
        families: list[Family] = []
        assert self.wanted is not None
        for family in raw:
            if not self.wanted(family.name):
                continue
            text_of = family.text
            found = known.get(text_of)
            if found is None:
                budget.spend(family.lines)
                found = parse_family(family, lines)
            parsed[text_of] = found
            families.extend(found)
        self._parsed[endpoint] = parsed
        lines.trim(sum(f.lines for f in raw))
        out = (raw, _merge(families), stray + sum(f.dropped for f in raw))
        self._last[endpoint] = (text, out)
        return out

    def _count_error(self, endpoint: str, reason: str) -> None:
        self._errors[(endpoint, reason)] = self._errors.get((endpoint, reason), 0) + 1

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def wanted_families(names: DynamoNames) -> Callable[[str], bool]:
    """The scraped families signals and rules read (parsed into samples); the rest of
    Dynamo's surface passes through as checked text."""
    bases = {base_name(name) for name in names.history_names()}
    return lambda family: base_name(family) in bases


def _build(config: Config, hooks: Hooks) -> DynamoMetricsCollector:
    return DynamoMetricsCollector(
        targets_from(config),
        config.metrics_path,
        config.dynamo_interval,
        config.collector_timeout,
        config.http_timeout,
        config.max_response_bytes,
        wanted=wanted_families(DynamoNames(frontend_prefix=config.frontend_metrics_prefix)),
    )


register(
    CollectorSpec(
        "dynamo_metrics",
        order=40,
        enabled=lambda config: bool(targets_from(config)),
        interval=lambda config: config.dynamo_interval,
        factory=_build,
    )
)
