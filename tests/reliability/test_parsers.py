"""Property tests: every parser of outside input, fed arbitrary input, returns its documented
result or its documented error and nothing else (hypothesis; a few thousand examples each)."""

from __future__ import annotations

import contextlib
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load_config, load_yaml
from agent.core.exposition import Budget, parse_exposition
from agent.core.textsafe import clean, clean_json, parse_json
from agent.runtime.server import parse_window
from collectors.cgroup import _kv, parse_pressure
from collectors.dynamo_health import classify, parse_models
from collectors.dynamo_logs import DynamoLogCollector
from collectors.http import HttpResult

FAST = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON-ish text: the characters JSON is made of, plus escapes that decode to lone surrogates.
JSONISH = st.lists(
    st.sampled_from([*'{}[]":,0123456789.-eE tfnrul\\abu', "\\ud800", "\\udfff", '"\\ud800"']), max_size=200
).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def _encodes(value: object) -> None:
    """What the exposition and the HTML report do with text: it must encode as UTF-8."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _encodes(k)
            _encodes(v)
    elif isinstance(value, list):
        for v in value:
            _encodes(v)


@FAST
@given(st.binary(max_size=2000) | JSONISH.map(str.encode))
def test_parse_json_returns_a_clean_value_or_a_reason(body: bytes) -> None:
    value, error = parse_json(body)
    assert not (error and value is not None)
    _encodes(value)
    _encodes(error)


@FAST
@given(JSON_VALUES)
def test_clean_json_always_encodes(value: object) -> None:
    _encodes(clean_json(value))


@FAST
@given(st.text(), st.integers(min_value=1, max_value=500))
def test_clean_is_bounded_and_encodes(text: str, limit: int) -> None:
    out = clean(text, limit)
    assert len(out) <= limit
    out.encode("utf-8")


def _response(body: bytes, status: int = 200) -> HttpResult:
    return HttpResult(url="http://x/health", status=status, body=body, elapsed=0.001)


@FAST
@given(st.binary(max_size=2000) | JSONISH.map(str.encode), st.sampled_from([200, 404, 500, 503]))
def test_health_classification_never_raises(body: bytes, status: int) -> None:
    outcome, state, parsed, error = classify(_response(body, status))
    assert outcome in {"ok", "unhealthy", "http_error", "malformed"}
    _encodes(state)
    _encodes(parsed)
    _encodes(error)


@FAST
@given(st.binary(max_size=2000) | JSONISH.map(lambda t: ('{"data":[{"id":' + t + "}]}").encode()))
def test_models_listing_never_raises(body: bytes) -> None:
    models = parse_models(_response(body))
    assert models is None or (isinstance(models, list) and len(models) <= 64)
    _encodes(models)


@FAST
@given(st.text(max_size=3000))
def test_exposition_parser_never_raises(text: str) -> None:
    families, skipped = parse_exposition(text, Budget(2.0))
    # Skipped counts sample lines, each at most once: never more than the body has.
    sample_lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert 0 <= skipped <= len(sample_lines)
    for family in families:
        for item in family.samples:
            for _, value in item.labels:
                value.encode("utf-8")


@FAST
@given(st.text(max_size=2000) | JSONISH)
def test_log_lines_never_raise(line: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        collector = DynamoLogCollector([str(Path(folder) / "x.log")], 1, 1)
        tail = type("T", (), {"path": "x.log", "cri_partial": ""})()
        collector._line(tail, line, 0.0)  # type: ignore[arg-type]
        for level, target in collector.stats.lines:
            level.encode("utf-8")
            target.encode("utf-8")


@FAST
@given(st.text(max_size=2000))
def test_proc_file_parsers_never_raise(text: str) -> None:
    assert isinstance(_kv_text(text), dict)
    assert isinstance(parse_pressure(text), dict)


def _kv_text(text: str) -> dict[str, int]:
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", errors="surrogatepass", delete=False) as handle:
        handle.write(text.encode("utf-8", "replace").decode("utf-8"))
    return _kv(handle.name)


@FAST
@given(st.text(max_size=60))
def test_window_parser_returns_seconds_or_value_error(text: str) -> None:
    try:
        seconds = parse_window(text)
    except ValueError:
        return
    assert 1 <= seconds <= 7 * 86400


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500) | st.text(max_size=1500).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_config_yaml_is_a_mapping_or_a_config_error(content: bytes) -> None:
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as handle:
        handle.write(content)
    try:
        data = load_yaml(handle.name)
    except ConfigError:
        return
    assert isinstance(data, dict)
    with contextlib.suppress(ConfigError):
        load_config(handle.name, environ={}, warn=lambda message: None)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "DYN_SIDECAR_LISTEN_PORT",
                "DYN_SIDECAR_DYNAMO_INTERVAL",
                "DYN_SIDECAR_THRESHOLDS",
                "DYN_SIDECAR_WORKER_SYSTEM_URLS",
                "DYN_SIDECAR_SLO_ERROR_RATE",
                "DYN_SIDECAR_PROCESS_PATTERNS",
                "DYN_SIDECAR_NOPE",
                "DYN_SYSTEM_PORT",
            ]
        ),
        st.text(alphabet=string.printable, max_size=40),
        max_size=4,
    )
)
def test_config_env_is_a_config_or_a_config_error(environ: dict[str, str]) -> None:
    try:
        load_config(environ=environ, warn=lambda message: None)
    except ConfigError as exc:
        assert len(str(exc)) < 600
    except Exception as exc:  # pragma: no cover - the failure this test exists to catch
        pytest.fail(f"{type(exc).__name__} escaped: {exc}")


# Exposition text made of the pieces that matter to a parser: names sharing a base, every
# type, label values with escapes, braces and commas, special values, timestamps.
_NAMES = ["req_total", "req", "lat_bucket", "lat_sum", "lat_count", "lat", "up", "q", "q_created"]
_VALUES = ["1", "-2.5", "3e-4", "+Inf", "-Inf", "NaN", "0", "12345678901234"]
_LABEL_VALUES = ["a", "", 'quo\\"te', "back\\\\slash", "new\\nline", "br{ace}", "com,ma", "tab\\t", "é"]
_LINE = st.one_of(
    st.builds(
        lambda name, labels, value, stamp: name
        + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")
        + " "
        + value
        + stamp,
        st.sampled_from(_NAMES),
        st.lists(st.tuples(st.sampled_from(["le", "model", "quantile", "x"]), st.sampled_from(_LABEL_VALUES)), max_size=3, unique_by=lambda kv: kv[0]),
        st.sampled_from(_VALUES),
        st.sampled_from(["", " 1700000000000"]),
    ),
    st.builds(lambda name, kind: f"# TYPE {name} {kind}", st.sampled_from(_NAMES), st.sampled_from(["counter", "gauge", "histogram", "summary", "untyped"])),
    st.builds(lambda name, text: f"# HELP {name} {text}", st.sampled_from(_NAMES), st.sampled_from(["help", "with \\\\ and \\n", ""])),
)  # fmt: skip


def _sample_set(families) -> list[tuple[str, tuple, str]]:
    return sorted((s.name, s.labels, repr(s.value)) for f in families for s in f.samples)


@FAST
@given(st.lists(_LINE, max_size=40).map("\n".join))
@example("# TYPE lat_bucket counter\nlat_sum 1\nlat_bucket 1")  # after a stray name, no renaming
def test_fast_family_parse_gives_what_prometheus_client_gives(text: str) -> None:
    """The purpose-built parser of checked families and prometheus_client's parser agree on
    every sample (name, labels, value) of the checked text."""
    from agent.core.exposition import parse_family, split_families

    families, _ = split_families(text + "\n")
    for family in families:
        reference, _ = parse_exposition(family.text, Budget(2.0))
        assert _sample_set(parse_family(family)) == _sample_set(reference), family.text


def test_fast_family_parse_agrees_on_recorded_dynamo() -> None:
    from agent.core.exposition import parse_family, split_families

    recorded = Path(__file__).resolve().parents[2] / "agent" / "dynamo_sim" / "recorded"
    for path in sorted(recorded.glob("*.prom")):
        families, stray = split_families(path.read_text())
        assert families and stray == 0
        for family in families:
            reference, _ = parse_exposition(family.text, Budget(2.0))
            assert _sample_set(parse_family(family)) == _sample_set(reference), (path.name, family.name)


@FAST
@given(st.lists(_LINE, min_size=1, max_size=30), st.data())
def test_what_is_remembered_between_scrapes_changes_nothing(pool: list[str], data: st.DataObject) -> None:
    """A Splitter and a parse cache that remember earlier scrapes (blocks, checked lines,
    parsed lines) give what a fresh split and parse of each scrape gives. The scrapes are
    drawn from one pool of lines, so they share lines and blocks as real scrapes do."""
    from agent.core.exposition import LineCache, Splitter, parse_family, split_families

    splitter = Splitter()
    parsed: LineCache = LineCache()
    for _ in range(3):
        text = "\n".join(data.draw(st.lists(st.sampled_from(pool), max_size=40))) + "\n"
        remembered, stray = splitter.split(text)
        fresh, fresh_stray = split_families(text)
        assert (remembered, stray) == (fresh, fresh_stray)
        for family in remembered:
            assert _sample_set(parse_family(family, parsed)) == _sample_set(parse_family(family))


@FAST
@given(st.lists(_LINE, min_size=1, max_size=30), st.data())
def test_an_unchanged_body_gives_what_a_fresh_split_gives(pool: list[str], data: st.DataObject) -> None:
    """The collector hands an unchanged body its last split (no split, check or parse): over
    scrapes that repeat earlier bodies and bodies that differ, each scrape's result equals a
    fresh collector's split of the same body."""
    from collectors.dynamo_health import Target
    from collectors.dynamo_metrics import DynamoMetricsCollector

    def collector() -> DynamoMetricsCollector:
        target = Target("frontend", "frontend", "http://127.0.0.1:1", "/health", "/live")
        return DynamoMetricsCollector([target], "/metrics", 5, 4, 1, 1 << 20, wanted=lambda n: "lat" in n)

    remembering = collector()
    bodies: list[str] = []
    for _ in range(5):
        reuse: bool = data.draw(st.booleans())
        if bodies and reuse:
            text = data.draw(st.sampled_from(bodies))  # a body seen before, maybe the last one
        else:
            text = "\n".join(data.draw(st.lists(st.sampled_from(pool), max_size=40))) + "\n"
        bodies.append(text)
        raw, families, dropped = remembering._split("frontend", text, Budget(5.0))
        fresh_raw, fresh_families, fresh_dropped = collector()._split("frontend", text, Budget(5.0))
        assert (raw, dropped) == (fresh_raw, fresh_dropped)
        assert _sample_set(families) == _sample_set(fresh_families)
        assert [f.name for f in families] == [f.name for f in fresh_families]
