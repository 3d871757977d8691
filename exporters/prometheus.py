"""Renders the state into one Prometheus exposition per collection cycle and serves the
cached bytes, so a scrape costs a dictionary lookup and never waits on a collector.

Formats: the Prometheus text format 0.0.4 and OpenMetrics 1.0 (content negotiation on
Accept), each optionally gzip-compressed; every variant is rendered at most once per
generation of the state.
"""

from __future__ import annotations

import gzip
import math
import platform
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from agent import __version__
from agent.core import handles
from agent.core import metrics as m
from agent.core.catalogue import PREFIX, spec_for_sample
from agent.core.exposition import RawFamily, capped, merge, parse_exposition
from agent.core.samples import CollectResult, Family, Sample
from agent.core.state import State

OPENMETRICS = "openmetrics"
TEXT = "text"
# Prometheus asks for gzip, so every render's body is compressed once. Level 3 costs 40 % of
# level 5's time on Dynamo's exposition (1.7 against 4.3 ms for 210 KB) for a body 14 %
# larger (19.6 against 17.1 KB): the sidecar's largest per-cycle cost under a scraper.
GZIP_LEVEL = 3
# Renders run ahead of scrapes only while a scraper is around: a sidecar nobody scrapes (its
# users read /diagnose, or Prometheus is down) does not format 1,600 series every cycle for
# no one. The first scrape after such a pause renders on its own path.
SCRAPER_GONE_AFTER = 120.0


class _Snapshot:
    """The registry-shaped object prometheus_client's encoders iterate."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def negotiate(accept_header: str) -> str:
    """Text 0.0.4 whenever the client accepts it, as client_golang serves by default:
    Prometheus lists OpenMetrics first but takes text, and text is the cached body written
    once per cycle. OpenMetrics (every passthrough family parsed and re-encoded) only for a
    client that asks for nothing else."""
    medias = {part.split(";")[0].strip().lower() for part in accept_header.split(",")}
    if "application/openmetrics-text" in medias and not medias & {"text/plain", "text/*", "*/*"}:
        return OPENMETRICS
    return TEXT


def self_samples(state: State, render_seconds: float, longest_step: float = 0.0) -> list[Sample]:
    """The sidecar's own metrics about itself, from the state's bookkeeping."""
    out = [
        m.BUILD_INFO.sample(1, version=__version__, python=platform.python_version()),
        m.START_TIME_SECONDS.sample(state.started),
        m.HISTORY_SERIES.sample(state.history_series),
        m.HISTORY_WINDOW_SECONDS.sample(state.history_window),
        m.HISTORY_BYTES.sample(state.history_bytes),
        m.HISTORY_REFUSED_TOTAL.sample(state.history_refused),
        m.MEMORY_BUDGET_USED_BYTES.sample(state.budget_used()),
        m.MEMORY_BUDGET_BYTES.sample(state.memory_budget or 0),
        m.EXPOSITION_RENDER_SECONDS.sample(render_seconds),
        m.EXPOSITION_RENDER_LONGEST_STEP_SECONDS.sample(longest_step),
    ]
    for status in state.collectors.values():
        name = status.name
        if status.last_success is not None:
            out.append(m.COLLECTOR_SUCCESS.sample(1 if status.last_success else 0, collector=name))
            out.append(m.COLLECTOR_DURATION_SECONDS.sample(status.last_duration, collector=name))
        if status.last_success_time:
            out.append(
                m.COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS.sample(status.last_success_time, collector=name)
            )
        for outcome, count in status.runs.items():
            out.append(m.COLLECTOR_RUNS_TOTAL.sample(count, collector=name, outcome=outcome))
    for metric, count in sorted(state.dropped.items()):
        out.append(m.SERIES_DROPPED_TOTAL.sample(count, metric=metric))
    for cap, count in sorted(state.caps_hit.items()):
        out.append(m.SERIES_CAPS_HIT_TOTAL.sample(count, cap=cap))
    for kind, count in sorted(state.event_counts.items()):
        out.append(m.EVENTS_TOTAL.sample(count, kind=kind))
    # Only once something was miscounted: the exposition of a correct sidecar is unchanged.
    for metric, count in sorted(handles.UNDECLARED.items()):
        out.append(m.UNDECLARED_EMISSIONS_TOTAL.sample(count, metric=metric))
    return out


def _undeclared(name: str, seen: set[str]) -> None:
    """A sample under the sidecar's prefix that the catalogue does not declare: raised in
    strict mode (tests), else counted (once per name: `seen` is the exporter's) and skipped."""
    if name not in seen:
        seen.add(name)
        handles.undeclared(name, "not declared; not exported")


def _own_metrics(samples: Iterable[Sample], undeclared: set[str]) -> list[Metric]:
    metrics: dict[str, Metric] = {}
    for item in samples:
        spec = spec_for_sample(item.name)
        if spec is None:
            # A programming error: raised in tests, counted and skipped in production.
            _undeclared(item.name, undeclared)
            continue
        metric = metrics.get(spec.family)
        if metric is None:
            metric = metrics[spec.family] = Metric(spec.family, spec.help, spec.type)
        metric.add_sample(item.name, dict(item.labels), item.value)
    return list(metrics.values())


def _value_text(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class OwnText:
    """The sidecar's own families as text 0.0.4, written directly: names and label names come
    from the catalogue (valid by construction), so only label values need escaping. Each
    series' `name{labels}` prefix and its last line are kept from the last render: a series
    whose value did not move (most, in an idle pod) costs a dictionary lookup. Several times
    cheaper than prometheus_client's general encoder, which validates and escapes every name
    each time."""

    def __init__(self) -> None:
        # (name, labels) -> [spec, "name{labels} ", last value, last line]
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}

    def render(self, samples: Iterable[Sample], undeclared: set[str]) -> str:
        return self.join([self.lines(samples, undeclared)])

    def lines(self, samples: Iterable[Sample], undeclared: set[str]) -> dict[str, tuple[Any, list[str]]]:
        """Each family's sample lines, in the order first seen."""
        families: dict[str, tuple[Any, list[str]]] = {}
        known = self._series
        for item in samples:
            key = (item.name, item.labels)
            series = known.get(key)
            if series is None:
                spec = spec_for_sample(item.name)
                if spec is None:
                    _undeclared(item.name, undeclared)  # a programming error (see _undeclared)
                    continue
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in item.labels)
                prefix = f"{item.name}{{{labels}}} " if labels else f"{item.name} "
                series = known[key] = [spec, prefix, None, ""]
            value = item.value
            if value != series[2]:  # NaN never equals itself: rewritten each time, rightly
                series[2] = value
                series[3] = series[1] + _value_text(value) + "\n"
            spec = series[0]
            entry = families.get(spec.family)
            if entry is None:
                entry = families[spec.family] = (spec, [])
            entry[1].append(series[3])
        return families

    def join(self, groups: list[dict[str, tuple[Any, list[str]]]]) -> str:
        """One exposition from several groups' lines: a family's lines from every group under
        one HELP/TYPE header."""
        merged: dict[str, tuple[Any, list[list[str]]]] = {}
        for group in groups:
            for family, (spec, lines) in group.items():
                entry = merged.get(family)
                if entry is None:
                    merged[family] = (spec, [lines])
                else:
                    entry[1].append(lines)
        out: list[str] = []
        for spec, parts in merged.values():
            name = spec.name if spec.type != "histogram" else spec.family
            out.append(f"# HELP {name} {_escape(spec.help)}\n# TYPE {name} {spec.type}\n")
            for lines in parts:
                out.extend(lines)
        return "".join(out)

    def forget_unused(self, keep: int) -> None:
        """Bound the memo: past `keep` entries (series come and go), start over."""
        if len(self._series) > keep:
            self._series = {}


def _to_metric(family: Family) -> Metric:
    metric = Metric(family.name, family.help, family.type)
    for item in family.samples:
        metric.add_sample(item.name, dict(item.labels), item.value)
    return metric


class PrometheusExporter:
    def __init__(
        self,
        state: State,
        extra_samples: Callable[[], list[Sample]] | None = None,
        passthrough: bool = True,
        allow: list[str] | None = None,
        deny: list[str] | None = None,
    ) -> None:
        self.state = state
        self.extra_samples = extra_samples or (lambda: [])
        self.passthrough = passthrough
        self._allow = [re.compile(p) for p in allow or []]
        self._deny = [re.compile(p) for p in deny or []]
        self._metrics: list[Metric] = []
        self._own: list[Metric] = []
        self._own_samples: list[Sample] = []
        self._legacy: list[Metric] = []  # scraped families from sources without raw text
        self._own_text = OwnText()
        self._gzip_wanted = False
        self.precompressed = 0  # bodies gzipped right after their render, before a scrape asked
        self._by_source: dict[str, tuple[CollectResult, dict[str, tuple[Any, list[str]]], list[Sample]]] = {}
        self._raw: list[RawFamily] = []  # passthrough as checked text, this generation
        self._raw_parsed: dict[str, list[Metric]] = {}  # family text -> parse, for OpenMetrics
        self._rendered_generation = -1
        self._cache: dict[tuple[str, bool], bytes] = {}
        self.render_seconds = 0.0  # the last render's time on the event loop, its steps summed
        self.render_longest_step = 0.0
        self._render_started = 0  # renders begun, and the number of the one installed last
        self._render_installed = 0
        self.conflicts: dict[str, int] = {}
        self.undeclared: set[str] = set()
        # When /metrics was last asked for (monotonic; written by the HTTP thread, one float)
        # and the gap before that: the render loop renders ahead only for a scraper.
        self.last_scrape = 0.0
        self.scrape_gap = 0.0
        self.renders_skipped = 0  # cycles not rendered because nobody scraped
        self._accounted: list[CollectResult] = []  # the results _raw_merged was merged from
        self._raw_merged: list[RawFamily] = []

    def _passes(self, family_name: str) -> bool:
        if family_name.startswith(PREFIX):
            return False  # never let a scraped source impersonate the sidecar's own metrics
        if self._allow and not any(p.search(family_name) for p in self._allow):
            return False
        return not any(p.search(family_name) for p in self._deny)

    def _passthrough_metrics(self) -> list[Metric]:
        merged: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        # Sources that handed their text over (result.raw) go out as text; the parsed
        # families they also hand over are for signals and rules only.
        families: list[Family] = [
            family
            for result in list(self.state.latest.values())
            if not result.raw
            for family in result.families
        ]
        for family in families:
            if not self._passes(family.name):
                continue
            metric = merged.get(family.name)
            if metric is None:
                metric = merged[family.name] = Metric(family.name, family.help, family.type)
            elif metric.type != family.type:
                self.conflicts[family.name] = self.conflicts.get(family.name, 0) + len(family.samples)
                continue
            for item in family.samples:
                key = (item.name, item.labels)
                if key in seen:
                    self.conflicts[family.name] = self.conflicts.get(family.name, 0) + 1
                    continue
                seen.add(key)
                metric.add_sample(item.name, dict(item.labels), item.value)
        return [m for m in merged.values() if m.samples]

    def _raw_results(self) -> list[CollectResult]:
        return [result for result in list(self.state.latest.values()) if result.raw]

    def _unaccounted(self, results: list[CollectResult]) -> bool:
        """Whether these results are not the ones whose cut series were counted last."""
        accounted = self._accounted
        return len(results) != len(accounted) or any(
            a is not b for a, b in zip(results, accounted, strict=True)
        )

    def _raw_passthrough(self) -> list[RawFamily]:
        """Scraped families as their checked text: allow/deny by name, one family per name
        across sources, within the state's caps. Merged once per scrape of the sources (a
        quiet pod's Dynamo is scraped every other render), so what the caps cut and the type
        conflicts are counted once per scrape, however many renders show it."""
        results = self._raw_results()
        if not self._unaccounted(results):
            return self._raw_merged
        self._accounted = results
        sources = [
            [f for f in per_target if self._passes(f.name)] for result in results for per_target in result.raw
        ]
        merged = merge(sources, self.conflicts)
        state = self.state
        self._raw_merged = capped(
            merged,
            state.max_metric_names,
            state.max_series,
            state.max_series_per_metric,
            lambda name, cap, count: state.count_drop(name, cap, count),
        )
        return self._raw_merged

    def account_passthrough(self) -> None:
        """Count what the caps cut from sources scraped since the last count, without a render
        (a cycle nobody scrapes): a cardinality bomb is a finding whether or not anyone reads
        /metrics."""
        if self.passthrough:
            self._raw_passthrough()

    def render(self) -> None:
        """Build the exposition from the current state and drop stale encodings, in one go
        (the first scrape, the final render at exit)."""
        for _ in self.render_steps():
            pass

    def render_steps(self) -> Iterator[None]:
        """The render as steps, each a millisecond or two at most: the render loop yields to
        the event loop between them, so a scrape arriving mid-render waits for one step, not
        the whole render. Each step is timed here: the sum and the longest step of the render
        that was installed are exported with the next one."""
        steps = self._render()
        busy = longest = 0.0
        while True:
            started = time.perf_counter()
            try:
                next(steps)
            except StopIteration as done:
                installed = bool(done.value)
                finished = True
            else:
                finished = False
            took = time.perf_counter() - started
            busy += took
            longest = max(longest, took)
            if finished:
                break
            yield
        if installed:
            self.render_seconds = busy
            self.render_longest_step = longest

    def _render(self) -> Generator[None, None, bool]:
        """The render's work, yielding between steps; True when its result was installed.
        Works on a snapshot of the collectors' results; a render that a newer one overtook
        (the first scrape's, at exit) discards its result. Scraped families go out as their
        checked text; only the sidecar's own are rendered."""
        self._render_started += 1
        number = self._render_started
        generation = self.state.generation

        # A collector's own lines are rendered once per result it hands over, not per cycle:
        # the GPU collector's 400 series every 10 s are not re-formatted every 5 s.
        groups = []
        by_source: dict[str, tuple[CollectResult, dict[str, tuple[Any, list[str]]], list[Sample]]] = {}
        own: list[Sample] = []
        for source, result in list(self.state.latest.items()):
            cached = self._by_source.get(source)
            if cached is None or cached[0] is not result:
                mine = [s for s in State._all_samples(result) if s.name.startswith(PREFIX)]
                cached = (result, self._own_text.lines(mine, self.undeclared), mine)
                yield
            by_source[source] = cached
            groups.append(cached[1])
            own.extend(cached[2])
        fresh: list[Sample] = list(self.extra_samples())  # the derived signals: one step
        yield
        fresh.extend(self_samples(self.state, self.render_seconds, self.render_longest_step))
        for metric, count in sorted(self.conflicts.items()):
            fresh.append(m.PASSTHROUGH_CONFLICTS_TOTAL.sample(count, metric=metric))
        groups.append(self._own_text.lines(fresh, self.undeclared))
        own.extend(fresh)
        self._own_text.forget_unused(4 * max(1, len(own)))
        yield
        raw = self._raw_passthrough() if self.passthrough else []
        passthrough = self._passthrough_metrics() if self.passthrough else []  # sources without raw text
        yield
        text = self._own_text.join(groups) + "".join(f.text for f in raw)
        if passthrough:
            text += generate_text(_Snapshot(passthrough)).decode()
        body = text.encode()
        if number < self._render_installed:
            return False  # a newer render finished while this one waited between steps
        self._render_installed = number
        self._by_source = by_source
        self._raw = raw
        self._own_samples = own
        self._own = []  # prometheus_client objects, built only for an OpenMetrics scrape
        self._legacy = passthrough
        self._metrics = []
        self._cache = {(TEXT, False): body}
        self._rendered_generation = generation
        return True

    def _openmetrics_list(self) -> list[Metric]:
        """OpenMetrics needs every family parsed: done for the families whose text changed
        since the last time, on the first OpenMetrics scrape of a generation."""
        if not self._metrics:
            generation = self._rendered_generation
            parsed: dict[str, list[Metric]] = {}
            metrics: list[Metric] = _own_metrics(self._own_samples, self.undeclared) + self._legacy
            for family in self._raw:
                found = self._raw_parsed.get(family.text)
                if found is None:
                    found = [_to_metric(f) for f in parse_exposition(family.text)[0]]
                parsed[family.text] = found
                metrics.extend(found)
            self._raw_parsed = parsed
            if generation != self._rendered_generation:
                return metrics  # a render replaced this generation meanwhile: do not keep it
            self._metrics = metrics
        return self._metrics

    def precompress_job(self) -> Callable[[], None] | None:
        """A job compressing this generation's text body with gzip, to run off the event
        loop; None when no scrape asked for gzip since the last render."""
        if not self._gzip_wanted:
            return None
        self._gzip_wanted = False
        cache = self._cache
        plain = cache.get((TEXT, False))
        if plain is None:
            return None

        def job() -> None:
            compressed = gzip.compress(plain, compresslevel=GZIP_LEVEL)
            if self._cache is cache:  # still this generation's
                cache.setdefault((TEXT, True), compressed)
                self.precompressed += 1

        return job

    @property
    def rendered(self) -> bool:
        """Whether a body is cached (the first scrape renders one otherwise)."""
        return self._rendered_generation >= 0

    def note_scrape(self, now: float) -> None:
        """A scrape arrived (HTTP thread): remember when, and the gap since the last one."""
        if self.last_scrape:
            self.scrape_gap = now - self.last_scrape
        self.last_scrape = now

    def scraped_within(self, now: float) -> bool:
        """Whether a scraper is around: one asked within SCRAPER_GONE_AFTER, or within
        three of its own gaps (a Prometheus scraping every 5 minutes is still a scraper)."""
        if not self.last_scrape:
            return False
        return now - self.last_scrape <= max(SCRAPER_GONE_AFTER, 3 * self.scrape_gap)

    @property
    def behind(self) -> bool:
        """Whether the state moved since the cached body was rendered."""
        return self._rendered_generation != self.state.generation

    def render_if_stale(self) -> None:
        if self.behind:
            self.render()

    def cached(self, fmt: str, use_gzip: bool) -> bool:
        """Whether body() is a lookup now (else it encodes or compresses: run it off the
        loop). Called on the event loop; renders there the very first time."""
        if self._rendered_generation < 0:
            self.render()
        return (fmt, use_gzip) in self._cache

    def body(self, fmt: str, use_gzip: bool) -> tuple[bytes, str]:
        """The body for a scrape; safe off the event loop: it works on this generation's
        cache and a render replacing it meanwhile only discards the result."""
        if self._rendered_generation < 0:
            self.render()
        cache = self._cache
        key = (fmt, use_gzip)
        if use_gzip and fmt == TEXT:
            self._gzip_wanted = True
        cached = cache.get(key)
        if cached is None:
            if use_gzip:
                plain = cache.get((fmt, False)) or self.body(fmt, False)[0]
                cached = gzip.compress(plain, compresslevel=GZIP_LEVEL)
            elif fmt == OPENMETRICS:
                cached = generate_openmetrics(_Snapshot(self._openmetrics_list()))
            else:
                cached = cache[(TEXT, False)]
            cached = cache.setdefault(key, cached)
        content_type = OPENMETRICS_CONTENT_TYPE if fmt == OPENMETRICS else CONTENT_TYPE_LATEST
        return cached, content_type
