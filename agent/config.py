"""One typed configuration object: defaults < YAML file < DYN_SIDECAR_* env < CLI flags.

Dynamo's own environment variables (DYN_HTTP_PORT, DYN_SYSTEM_PORT, ...) feed the defaults,
so a sidecar that the Helm chart hands the `main` container's env needs no configuration.
Every bad value is a `ConfigError` naming the key, where the value came from, the value and
the expected form; the CLI turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
import sys
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "DYN_SIDECAR_"


def _short(value: object, limit: int = 120) -> str:
    """A value as the error line shows it: repr, cut, so a huge value never floods stderr."""
    text = (
        repr(value)
        if not isinstance(value, str | int | float | bool) or isinstance(value, str)
        else str(value)
    )
    if isinstance(value, int) and not isinstance(value, bool) and len(text) > limit:
        return f"<an integer of {len(text)} digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(Exception):
    def __init__(self, key: str, value: object, expected: str, origin: str = "") -> None:
        self.key = key
        self.value = value
        self.expected = expected
        self.origin = origin
        where = f" (from {origin})" if origin else ""
        super().__init__(f"config key '{key}'{where} has value {_short(value)}; expected {expected}")


# ---------------------------------------------------------------------------------------
# value parsers: each takes the raw value (str from env/CLI, any from YAML) and returns the
# typed value or raises ValueError with the expected form.


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("a boolean (true/false)")


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"an integer from {low} to {high}")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError(f"an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    """Seconds as a number, or with a unit suffix: 500ms, 5s, 2m, 1h."""
    expected = f"a duration from {low:g}s to {high:g}s (number of seconds, or 500ms/5s/2m/1h)"

    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(expected)
        text = str(raw).strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text)
        if not match:
            raise ValueError(expected)
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]
        value = float(match.group(1)) * scale
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in options:
            raise ValueError("one of " + ", ".join(options))
        return text

    return parse


def _http_url(raw: Any) -> str:
    text = str(raw).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("an http(s) URL such as http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("an http(s) URL with a valid port") from None
    return text


def _optional_url(raw: Any) -> str:
    if raw is None or str(raw).strip() in {"", "none", "off"}:
        return ""
    return _http_url(raw)


def _str_list(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(raw, list) and all(isinstance(item, str | int | float) for item in raw):
        return [str(item).strip() for item in raw if str(item).strip()]
    raise ValueError("a list of strings (YAML list, or comma-separated in env/CLI)")


def _url_list(raw: Any) -> list[str]:
    try:
        items = _str_list(raw)
    except ValueError:
        raise ValueError("a list of http(s) URLs") from None
    return [_http_url(item) for item in items]


def _regex_list(raw: Any) -> list[str]:
    items = _str_list(raw)
    for item in items:
        try:
            re.compile(item)
        except re.error as exc:
            raise ValueError(f"a list of regular expressions ({item!r}: {exc})") from None
    return items


def _path(raw: Any) -> str:
    text = str(raw).strip()
    if not text.startswith("/"):
        raise ValueError("a URL path starting with /")
    return text


def _optional_file(raw: Any) -> str:
    return "" if raw is None else str(raw).strip()


def _optional_pid(raw: Any) -> int:
    if raw is None or str(raw).strip() == "":
        return 0
    return _int_range(0, 2**22)(raw)


def _metric_prefix(raw: Any) -> str:
    text = str(raw).strip()
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        raise ValueError("a Prometheus metric name prefix such as dynamo_frontend")
    return text


def _role_list(raw: Any) -> list[str]:
    from collectors.tcp import parse_role_map

    items = _str_list(raw)
    parse_role_map(items)
    return items


def _probe_list(raw: Any) -> list[str]:
    from collectors.tcp import parse_probe_target

    items = _str_list(raw)
    for item in items:
        parse_probe_target(item)
    return items


def _default_probe_targets() -> list[str]:
    """Dynamo's own dependency settings: ETCD_ENDPOINTS (comma-separated URLs), NATS_SERVER."""
    targets = []
    for url in os.environ.get("ETCD_ENDPOINTS", "").split(","):
        if url.strip():
            targets.append("etcd=" + url.strip())
    nats = os.environ.get("NATS_SERVER", "").strip()
    if nats:
        targets.append("nats=" + nats.split(",")[0].strip())
    return targets


def _log_level(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text == "warn":
        text = "warning"
    if text not in {"debug", "info", "warning", "error"}:
        raise ValueError("one of debug, info, warning, error")
    return text


def _thresholds(raw: Any) -> dict[str, float]:
    """rule.threshold -> number: a YAML mapping, or `rule.name=value,...` in env/CLI."""
    from agent.diagnose.engine import RULES

    known = {f"{rule.id}.{t.name}" for rule in RULES for t in rule.thresholds}
    expected = "a mapping of rule.threshold to a number, e.g. cpu_throttled.ratio=0.3 (see docs/rules.md)"
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        pairs: list[tuple[Any, Any]] = []
        for item in raw.split(","):
            if item.strip():
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(expected)
                pairs.append((key.strip(), value.strip()))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise ValueError(expected)
    out: dict[str, float] = {}
    for key, value in pairs:
        if str(key) not in known:
            raise ValueError(f"{expected}; {str(key)[:80]!r} is not a known threshold")
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(expected) from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(expected)
        out[str(key)] = number
    return out


def _optional_seconds(high: float) -> Callable[[Any], float]:
    parse = _seconds(0, high)

    def optional(raw: Any) -> float:
        if raw is None or str(raw).strip().lower() in {"", "off", "none"}:
            return 0.0
        return parse(raw)

    return optional


def _optional_fraction(raw: Any) -> float:
    if raw is None or str(raw).strip().lower() in {"", "off", "none"}:
        return 0.0
    try:
        value = float(str(raw).strip().rstrip("%")) / (100 if str(raw).strip().endswith("%") else 1)
    except ValueError:
        raise ValueError("a fraction from 0 to 1 (0.01) or a percentage (1%); empty for none") from None
    if not 0 <= value <= 1:
        raise ValueError("a fraction from 0 to 1 (0.01) or a percentage (1%); empty for none")
    return value


# ---------------------------------------------------------------------------------------


def _dyn_env(name: str, fallback: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or fallback


def _dyn_env_raw(name: str, fallback: str) -> Any:
    """Dynamo's variable as a raw default for a typed key: the key's parser validates it and
    reports errors by the variable's name, so a bad DYN_* value is one clear line."""
    return _dyn_env(name, fallback)


def _default_frontend_url() -> str:
    return f"http://127.0.0.1:{_dyn_env('DYN_HTTP_PORT', '8000')}"


def _default_worker_urls() -> list[str]:
    host = _dyn_env("DYN_SYSTEM_HOST", "127.0.0.1")
    if host in {"0.0.0.0", "::"}:
        host = "127.0.0.1"
    return [f"http://{host}:{_dyn_env('DYN_SYSTEM_PORT', '9090')}"]


DEFAULT_PROCESS_PATTERNS = [
    r"-m\s+dynamo\.(frontend|mocker|vllm|sglang|trtllm|common\.backend)",
    r"\bdynamo[-_.](frontend|worker|run)\b",
]


def _spec(parser: Callable[[Any], Any], doc: str, secret: bool = False, dyn_env: str = "") -> dict[str, Any]:
    return {"parser": parser, "doc": doc, "secret": secret, "dyn_env": dyn_env}


@dataclass
class Config:
    # HTTP server
    listen_host: str = field(
        default="0.0.0.0", metadata=_spec(str, "Address the sidecar's HTTP server binds.")
    )
    listen_port: int = field(
        default=9469,
        metadata=_spec(_int_range(0, 65535), "Port of /metrics, /diagnose, ... (0 picks a free port)."),
    )
    max_connections: int = field(
        default=256,
        metadata=_spec(
            _int_range(1, 65535),
            "Most open connections to the HTTP server (one peer address may hold three quarters); "
            "past it the oldest idle connection is closed to admit a new one, or, when none is idle, the new one is refused.",
        ),
    )
    http_idle_timeout: float = field(
        default=10.0,
        metadata=_spec(
            _seconds(0.5, 600),
            "An HTTP connection idle this long, or not completing its request headers within it, is closed.",
        ),
    )
    # What this pod runs
    role: str = field(
        default="all",
        metadata=_spec(
            _choice("all", "frontend", "worker"), "Which Dynamo parts to watch: frontend, worker, or all."
        ),
    )
    frontend_url: str = field(
        default_factory=_default_frontend_url,
        metadata=_spec(
            _optional_url,
            "Base URL of the Dynamo frontend (DYN_HTTP_PORT). Empty disables.",
            dyn_env="DYN_HTTP_PORT",
        ),
    )
    frontend_health_path: str = field(
        default_factory=lambda: _dyn_env("DYN_HTTP_SVC_HEALTH_PATH", "/health"),
        metadata=_spec(
            _path, "Frontend health path (DYN_HTTP_SVC_HEALTH_PATH).", dyn_env="DYN_HTTP_SVC_HEALTH_PATH"
        ),
    )
    frontend_live_path: str = field(
        default_factory=lambda: _dyn_env("DYN_HTTP_SVC_LIVE_PATH", "/live"),
        metadata=_spec(
            _path, "Frontend liveness path (DYN_HTTP_SVC_LIVE_PATH).", dyn_env="DYN_HTTP_SVC_LIVE_PATH"
        ),
    )
    worker_system_urls: list[str] = field(
        default_factory=_default_worker_urls,
        metadata=_spec(
            _url_list,
            "Base URLs of worker system status servers (DYN_SYSTEM_HOST/PORT). Comma-separated.",
            dyn_env="DYN_SYSTEM_HOST/DYN_SYSTEM_PORT",
        ),
    )
    worker_health_path: str = field(
        default_factory=lambda: _dyn_env("DYN_SYSTEM_HEALTH_PATH", "/health"),
        metadata=_spec(
            _path, "Worker health path (DYN_SYSTEM_HEALTH_PATH).", dyn_env="DYN_SYSTEM_HEALTH_PATH"
        ),
    )
    worker_live_path: str = field(
        default_factory=lambda: _dyn_env("DYN_SYSTEM_LIVE_PATH", "/live"),
        metadata=_spec(_path, "Worker liveness path (DYN_SYSTEM_LIVE_PATH).", dyn_env="DYN_SYSTEM_LIVE_PATH"),
    )
    metrics_path: str = field(
        default="/metrics",
        metadata=_spec(_path, "Path of Dynamo's Prometheus metrics on both frontend and worker."),
    )
    frontend_metrics_prefix: str = field(
        default_factory=lambda: _dyn_env("DYN_METRICS_PREFIX", "dynamo_frontend"),
        metadata=_spec(
            _metric_prefix,
            "Name prefix of the frontend's metrics (DYN_METRICS_PREFIX).",
            dyn_env="DYN_METRICS_PREFIX",
        ),
    )
    http_timeout: float = field(
        default=2.0,
        metadata=_spec(
            _seconds(0.05, 60), "Timeout of each request to Dynamo's health and metrics endpoints."
        ),
    )
    max_response_bytes: int = field(
        default=8 * 1024 * 1024,
        metadata=_spec(
            _int_range(4096, 256 * 1024 * 1024),
            "Largest Dynamo response body read; larger bodies are a recorded error.",
        ),
    )
    # Processes and cgroups
    process_patterns: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROCESS_PATTERNS),
        metadata=_spec(
            _regex_list, "Regexes matched against process command lines to find Dynamo processes."
        ),
    )
    process_pid: int = field(
        default=0, metadata=_spec(_optional_pid, "Watch exactly this PID (0: discover by pattern).")
    )
    process_pid_file: str = field(
        default="", metadata=_spec(_optional_file, "File holding the PID to watch.")
    )
    proc_root: str = field(default="/proc", metadata=_spec(str, "Mount point of procfs."))
    cgroup_root: str = field(
        default="/sys/fs/cgroup", metadata=_spec(str, "Mount point of the cgroup filesystem.")
    )
    # Logs
    log_files: list[str] = field(
        default_factory=list,
        metadata=_spec(
            _str_list,
            "Dynamo JSONL log files to tail (globs allowed): a shared volume, or /var/log/pods/<ns>_<pod>_<uid>/main/*.log.",
        ),
    )
    log_max_bytes_per_cycle: int = field(
        default=4 << 20,
        metadata=_spec(_int_range(4096, 1 << 30), "Most log bytes read per collection cycle, across files."),
    )
    # GPU
    gpu_enabled: bool = field(
        default=True,
        metadata=_spec(
            _bool,
            "Collect GPU metrics and XID events over NVML (absent library or driver is reported, not an error).",
        ),
    )
    gpu_interval: float = field(
        default=10.0,
        metadata=_spec(
            _seconds(0.1, 3600),
            "Interval of the GPU collector (XID errors are events, seen at once whatever the interval).",
        ),
    )
    # TCP
    tcp_enabled: bool = field(
        default=True, metadata=_spec(_bool, "Collect the pod's TCP socket table and probe dependencies.")
    )
    tcp_interval: float = field(
        default=10.0, metadata=_spec(_seconds(0.1, 3600), "Interval of the TCP collector.")
    )
    tcp_peer_roles: list[str] = field(
        default_factory=list,
        metadata=_spec(
            _role_list, "Extra peer roles: PORT=role or CIDR=role (etcd 2379 and nats 4222 are built in)."
        ),
    )
    tcp_probe_targets: list[str] = field(
        default_factory=_default_probe_targets,
        metadata=_spec(
            _probe_list,
            "Dependencies to probe: role=host:port or role=http://host:port/path (default from ETCD_ENDPOINTS, NATS_SERVER).",
            dyn_env="ETCD_ENDPOINTS/NATS_SERVER",
        ),
    )
    tcp_probe_timeout: float = field(
        default=2.0,
        metadata=_spec(_seconds(0.05, 60), "Timeout of each dependency probe (DNS and connect each)."),
    )
    # Scheduling
    process_interval: float = field(
        default=5.0, metadata=_spec(_seconds(0.1, 3600), "Interval of the process and cgroup collectors.")
    )
    dynamo_interval: float = field(
        default=5.0,
        metadata=_spec(_seconds(0.1, 3600), "Interval of the Dynamo health and metrics collectors."),
    )
    collector_timeout: float = field(
        default=4.0,
        metadata=_spec(
            _seconds(0.05, 600), "A collector run longer than this is cancelled and marked failed."
        ),
    )
    interval_jitter: float = field(
        default=0.1,
        metadata=_spec(lambda raw: _fraction(raw), "Random spread of each interval, as a fraction (0-0.5)."),
    )
    # State
    history_window: float = field(
        default=900.0,
        metadata=_spec(
            _seconds(60, 86400), "How much history the state keeps for rates, quantiles and diagnose."
        ),
    )
    max_series_per_metric: int = field(
        default=2000,
        metadata=_spec(
            _int_range(10, 1_000_000),
            "Cardinality cap per metric name; extra series are dropped and counted.",
        ),
    )
    max_series: int = field(
        default=50_000,
        metadata=_spec(
            _int_range(100, 10_000_000),
            "Cap on all series held, every name together; new series past it are dropped and counted.",
        ),
    )
    max_metric_names: int = field(
        default=2_000,
        metadata=_spec(
            _int_range(10, 1_000_000),
            "Cap on distinct metric names held; a source inventing names cannot grow memory.",
        ),
    )
    max_events: int = field(default=1000, metadata=_spec(_int_range(10, 1_000_000), "Events kept in memory."))
    signal_window: float = field(
        default=300.0, metadata=_spec(_seconds(10, 3600), "Window of derived rates and quantiles.")
    )
    # Dynamo passthrough
    passthrough: bool = field(
        default=True, metadata=_spec(_bool, "Re-export Dynamo's own series unchanged on /metrics.")
    )
    passthrough_allow: list[str] = field(
        default_factory=list,
        metadata=_spec(
            _regex_list, "If set, only Dynamo series whose name matches one of these regexes pass."
        ),
    )
    passthrough_deny: list[str] = field(
        default_factory=list,
        metadata=_spec(
            _regex_list, "Dynamo series whose name matches one of these regexes are not re-exported."
        ),
    )
    # Canary (read now so the env contract is in one place)
    canary_wait: float = field(
        default_factory=lambda: _dyn_env_raw("DYN_CANARY_WAIT_TIME", "10"),
        metadata=_spec(
            _seconds(0.1, 86400),
            "Idle time before a canary (DYN_CANARY_WAIT_TIME).",
            dyn_env="DYN_CANARY_WAIT_TIME",
        ),
    )
    canary_timeout: float = field(
        default_factory=lambda: _dyn_env_raw("DYN_HEALTH_CHECK_REQUEST_TIMEOUT", "3"),
        metadata=_spec(
            _seconds(0.1, 600),
            "Canary request timeout (DYN_HEALTH_CHECK_REQUEST_TIMEOUT).",
            dyn_env="DYN_HEALTH_CHECK_REQUEST_TIMEOUT",
        ),
    )
    # Drain
    termination_grace_period: float = field(
        default=60.0,
        metadata=_spec(
            _seconds(1, 86400), "The pod's terminationGracePeriodSeconds (the Dynamo operator sets 60)."
        ),
    )
    drain_timeout: float = field(
        default=0.0,
        metadata=_spec(
            _seconds(0, 86400), "Longest drain; 0 means termination_grace_period minus a 5 s margin."
        ),
    )
    drain_interval: float = field(
        default=1.0, metadata=_spec(_seconds(0.05, 60), "Dynamo collectors' interval while draining.")
    )
    drain_settle: float = field(
        default=2.0,
        metadata=_spec(_seconds(0, 600), "In-flight must stay zero this long before the drain ends."),
    )
    flush_timeout: float = field(
        default=3.0, metadata=_spec(_seconds(0, 60), "Longest wait for the final telemetry flush at exit.")
    )
    # Canary
    canary_enabled: bool = field(
        default=True, metadata=_spec(_bool, "Send one-token canary requests through the frontend while idle.")
    )
    canary_failures: int = field(
        default=3,
        metadata=_spec(_int_range(1, 100), "Consecutive canary failures before a model is marked failing."),
    )
    canary_endpoint: str = field(
        default="completions",
        metadata=_spec(
            _choice("completions", "chat"), "Canary API: /v1/completions or /v1/chat/completions."
        ),
    )
    canary_max_models: int = field(
        default=8,
        metadata=_spec(
            _int_range(1, 256),
            "Most models one canary round probes (the rest wait for later rounds); bounds canary load under model churn.",
        ),
    )
    canary_stream: bool = field(
        default=False, metadata=_spec(_bool, "Stream canary responses (measures time to first token).")
    )
    # Diagnose
    startup_grace: float = field(
        default=60.0,
        metadata=_spec(
            _seconds(0, 3600),
            "Before this many seconds of sidecar uptime, not-yet-ready Dynamo is 'starting', not a fault.",
        ),
    )
    slo_ttft_p99: float = field(
        default=0.0,
        metadata=_spec(
            _optional_seconds(3600),
            "SLO target for time to first token, p99 (500ms, 2s); 0 or empty: no target.",
        ),
    )
    slo_itl_p99: float = field(
        default=0.0,
        metadata=_spec(
            _optional_seconds(3600), "SLO target for inter-token latency, p99 (50ms); 0 or empty: no target."
        ),
    )
    slo_error_rate: float = field(
        default=0.0,
        metadata=_spec(
            _optional_fraction, "SLO target for the share of failed requests (0.01 or 1%); 0: no target."
        ),
    )
    hung_engine_after: float = field(
        default=0.0,
        metadata=_spec(
            _seconds(0, 3600),
            "Work in flight with no token produced for this long is a hung engine; 0 means two dynamo_interval.",
        ),
    )
    thresholds: dict[str, float] = field(
        default_factory=dict,
        metadata=_spec(
            _thresholds,
            "Rule threshold overrides, rule.name: value (YAML mapping, or rule.name=value,... in env/CLI); see docs/rules.md.",
        ),
    )
    # Logging
    log_level: str = field(default="info", metadata=_spec(_log_level, "Log level (DYN_SIDECAR_LOG_LEVEL)."))
    log_format: str = field(
        default="auto",
        metadata=_spec(
            _choice("auto", "json", "console"), "json lines, console, or auto (console on a TTY)."
        ),
    )
    # Access control for mutating endpoints
    auth_token_file: str = field(
        default="",
        metadata=_spec(
            _optional_file, "File with a bearer token that non-loopback callers of POST endpoints must send."
        ),
    )
    auth_require_token: bool = field(
        default=False,
        metadata=_spec(_bool, "Require the bearer token for POST endpoints even from 127.0.0.1 / ::1."),
    )
    auth_token: str = field(
        default="",
        metadata=_spec(
            _optional_file, "The bearer token itself (prefer auth_token_file, a mounted Secret).", secret=True
        ),
    )

    @property
    def watch_frontend(self) -> bool:
        return self.role in {"all", "frontend"} and bool(self.frontend_url)

    @property
    def watch_workers(self) -> bool:
        return self.role in {"all", "worker"} and bool(self.worker_system_urls)

    def redacted(self) -> dict[str, Any]:
        """The config as /status and check-config show it: secrets and any credentials in a
        URL (http://user:password@host, nats://token@host) replaced."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                out[f.name] = "<redacted>"
            elif isinstance(value, str):
                out[f.name] = redact_url(value)
            elif isinstance(value, list):
                out[f.name] = [redact_url(v) if isinstance(v, str) else v for v in value]
            else:
                out[f.name] = value
        return out


def _fraction(raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError("a number from 0 to 0.5") from None
    if not 0 <= value <= 0.5:
        raise ValueError("a number from 0 to 0.5")
    return value


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}


def _parse_field(key: str, raw: Any, origin: str) -> Any:
    parser = FIELDS[key].metadata["parser"]
    try:
        return parser(raw)
    except ValueError as exc:
        raise ConfigError(key, raw, str(exc), origin) from None


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; anything near this is a mistake


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases (a 443-byte alias bomb expands to gigabytes) and with
    duplicate keys refused (the last one silently winning hides a mistake)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in the config", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key)}", key_node.start_mark
                )
            seen.add(key) if isinstance(key, Hashable) else None
        return super().construct_mapping(node, deep)


def load_yaml(path: str) -> dict[str, Any]:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("--config", path, "a regular YAML file (this is not a regular file)")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError("--config", path, f"a YAML file of at most {MAX_CONFIG_BYTES} bytes")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("--config", path, f"a readable YAML file ({exc.strerror})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError("--config", path, "a UTF-8 YAML file (this one is UTF-16)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "--config", path, f"a UTF-8 YAML file (invalid byte at offset {exc.start})"
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "parse error"
        raise ConfigError("--config", path, f"valid YAML ({problem}{where})") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit integer, absurd nesting
        raise ConfigError(
            "--config", path, f"valid YAML ({type(exc).__name__}: {_short(str(exc), 80)})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", path, "a YAML mapping of config keys to values")
    return data


def closest_key(name: str, spell: Callable[[str], str] = str) -> str:
    """' (did you mean X?)' for the config key nearest to a misspelt one, or ''."""
    found = difflib.get_close_matches(name, list(FIELDS), n=1, cutoff=0.5)
    return f" (did you mean {spell(found[0])}?)" if found else ""


URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """Credentials in every URL inside `text` replaced: scheme://<redacted>@host."""
    return URL_CREDENTIALS.sub(lambda m: m.group("scheme") + "<redacted>@", text)


def _warn(message: str) -> None:
    print(f"dynamo-sidecar: warning: {message}", file=sys.stderr)


def load_config(
    yaml_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] = _warn,
) -> Config:
    """Build the effective config. `overrides` are CLI flags already keyed by field name."""
    environ = os.environ if environ is None else environ
    values: dict[str, tuple[Any, str]] = {}
    if yaml_path:
        for key, raw in load_yaml(yaml_path).items():
            key_name = str(key).replace("-", "_")
            if key_name not in FIELDS:
                raise ConfigError(
                    str(key)[:60],
                    raw,
                    "a known key" + closest_key(key_name) + " (see `dynamo-sidecar check-config --help`)",
                    yaml_path,
                )
            values[key_name] = (raw, yaml_path)
    for name in sorted(environ):
        key = name[len(ENV_PREFIX) :].lower()
        if name.startswith(ENV_PREFIX) and key not in FIELDS:
            warn(f"{name[:80]} is not a config variable{closest_key(key, env_name)}; ignored")
    for key in FIELDS:
        name = env_name(key)
        if name in environ:
            values[key] = (environ[name], f"env {name}")
    for key, raw in (overrides or {}).items():
        if raw is not None:
            values[key] = (raw, f"flag --{key.replace('_', '-')}")
    config = Config()
    for f in dataclasses.fields(Config):
        if f.name in values:
            raw, origin = values[f.name]
        else:
            # Defaults go through the same parser: those built from Dynamo's env (a bad
            # DYN_SYSTEM_PORT, say) are reported by the variable's real name.
            raw = getattr(config, f.name)
            origin = f"env {f.metadata['dyn_env']}" if f.metadata["dyn_env"] else "default"
        setattr(config, f.name, _parse_field(f.name, raw, origin))
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    if config.hung_engine_after == 0:
        config.hung_engine_after = 2 * config.dynamo_interval
    if config.drain_timeout == 0:
        config.drain_timeout = max(1.0, config.termination_grace_period - 5.0)
    if config.drain_timeout + config.flush_timeout > config.termination_grace_period:
        raise ConfigError(
            "drain_timeout",
            config.drain_timeout,
            f"at most termination_grace_period ({config.termination_grace_period:g}s) minus flush_timeout "
            f"({config.flush_timeout:g}s), or Kubernetes kills the sidecar before it records the drain",
        )
    for interval_key in ("process_interval", "dynamo_interval"):
        if config.collector_timeout > getattr(config, interval_key) * 2 + 60:
            raise ConfigError(
                "collector_timeout", config.collector_timeout, f"at most twice {interval_key} plus 60s"
            )
    if config.role == "frontend" and not config.frontend_url:
        raise ConfigError("frontend_url", config.frontend_url, "a URL when role is 'frontend'")
    if config.role == "worker" and not config.worker_system_urls:
        raise ConfigError(
            "worker_system_urls", config.worker_system_urls, "at least one URL when role is 'worker'"
        )


def _plain(value: Any) -> str:
    """A default as a user writes it in YAML or env: true, 5, a,b - not a Python repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def default_text(f: dataclasses.Field[Any]) -> str:
    """The default as docs and --help show it."""
    if f.metadata["dyn_env"]:
        return f"from {f.metadata['dyn_env']}"
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
    text = _plain(value)
    if text and value_form(f) == "DURATION":
        text += "s"
    return text if text != "" else "none"


def value_form(f: dataclasses.Field[Any]) -> str:
    """The METAVAR of a key's flag: what kind of value it takes."""
    parser = f.metadata["parser"]
    name = getattr(parser, "__qualname__", "")
    for marker, form in (
        ("_seconds", "DURATION"),
        ("_bool", "BOOL"),
        ("_int_range", "INT"),
        ("_optional_pid", "PID"),
        ("url_list", "URL[,URL]"),
        ("_optional_url", "URL"),
        ("_http_url", "URL"),
        ("_regex_list", "REGEX[,REGEX]"),
        ("_thresholds", "RULE.NAME=N[,...]"),
        ("_optional_fraction", "RATIO"),
        ("_fraction", "RATIO"),
        ("_choice", "CHOICE"),
        ("_path", "PATH"),
        ("list", "LIST"),
        ("_optional_file", "FILE"),
        ("_log_level", "LEVEL"),
        ("_metric_prefix", "PREFIX"),
    ):
        if marker in name:
            return form
    return "VALUE"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The configuration table in docs/configuration.md, generated from the declarations."""
    rows = ["| key | env | form | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(Config):
        default = default_text(f)
        shown = default if default.startswith("from ") or default == "none" else f"`{_cell(default)}`"
        rows.append(
            f"| `{f.name}` | `{env_name(f.name)}` | {value_form(f)} | {shown} | {_cell(f.metadata['doc'])} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_markdown())
