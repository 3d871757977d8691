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

from agent.core import metrics as m
from agent.core.exposition import (
    Budget,
    LineCache,
    RawFamily,
    Splitter,
    _merge,
    base_name,
    parse_exposition,
    parse_family,
)
from agent.core.facts import MetricsFacts, ScrapeFact
from agent.core.samples import CollectResult, Family, Sample
from agent.core.signals import DynamoNames
from collectors.base import Collector, CollectorSpec, Hooks, register
from collectors.dynamo_health import Target, targets_from
from collectors.http import fetch, new_session

if TYPE_CHECKING:
    from agent.config import Config


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
            self._session = new_session([t.base_url for t in self.targets])
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
            result.add(m.SCRAPE_DURATION_SECONDS.sample(response.elapsed, **labels))
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
                last = self._last.get(target.endpoint)
                if self.wanted is None:
                    families, skipped = await asyncio.to_thread(parse_exposition, text, budget)
                    raw = []
                elif last is not None and last[0] == text:
                    # The last scrape's bytes (an idle frontend's): its split, without the
                    # thread hand-off (two wake-ups, dearer here than comparing the text).
                    raw, families, skipped = last[1]
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
            result.add(m.SCRAPE_UP.sample(0 if reason else 1, **labels))
            result.add(m.SCRAPE_BYTES.sample(len(response.body), **labels))
            result.add(m.SCRAPE_SERIES.sample(series, **labels))
            result.families.extend(families)
            result.raw.append(raw)
        for (endpoint, reason), count in self._errors.items():
            result.add(m.SCRAPE_ERRORS_TOTAL.sample(count, endpoint=endpoint, reason=reason))
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
