"""One typed configuration object: defaults < YAML file < DYN_SIDECAR_* env < CLI flags.

Dynamo's own environment variables (DYN_HTTP_PORT, DYN_SYSTEM_PORT, ...) feed the defaults,
so a sidecar that the Helm chart hands the `main` container's env needs no configuration.
Every bad value is a `ConfigError` naming the key, where the value came from, the value and
the expected form; the CLI turns it into one line on stderr and exit code 64 (EX_USAGE).
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
from urllib.parse import unquote, urlsplit

import yaml

from agent.core import redact

ENV_PREFIX = "DYN_SIDECAR_"


def _short(value: object, limit: int = 120) -> str:
    """A value as the error line shows it: repr, cut, so a huge value never floods stderr."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        # str() of a huge one is slow, or refused past 4,300 digits: its size is enough.
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    text = (
        repr(value)
        if not isinstance(value, str | int | float | bool) or isinstance(value, str)
        else str(value)
    )
    if isinstance(value, int) and not isinstance(value, bool) and len(text) > limit:
        return f"<an integer of {len(text)} digits>"
    text = redact.text(text)  # an error line is output too: a URL's password never in it
    return text if len(text) <= limit else text[: limit - 3] + "..."


# DYN_SIDECAR_ variables that are not config keys: read by `inject` and `webhook`, not warned about.
NOT_CONFIG_ENV = frozenset({"DYN_SIDECAR_IMAGE"})


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


_BYTE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def _bytes_or_auto(low: int, high: int) -> Callable[[Any], int | None]:
    """`auto` (None), or bytes as a number or a Kubernetes-style quantity: 64Mi, 512M, 1Gi."""
    expected = f"auto, or bytes from {low} to {high} (a number, or with Ki/Mi/Gi, k/M/G)"

    def parse(raw: Any) -> int | None:
        if isinstance(raw, bool):
            raise ValueError(expected)
        text = str(raw).strip().lower()[:40]
        if raw is None or text == "auto":
            return None
        match = re.fullmatch(r"(\d{1,15})\s*(ki|mi|gi|k|m|g)?b?", text)
        if not match:
            raise ValueError(expected)
        value = int(match.group(1)) * _BYTE_UNITS[match.group(2) or ""]
        if not low <= value <= high:
            raise ValueError(expected)
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


def _bind_address(raw: Any) -> str:
    """An IP address or a host name (the socket layer fails on anything else with an
    encoding error, not a reason: a number 4,000 digits long made the run exit 70)."""
    text = str(raw).strip() if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
    if not (0 < len(text) <= 253 and re.fullmatch(r"[A-Za-z0-9.:_%-]+", text)) or any(
        len(label) > 63 for label in text.split(".")
    ):
        raise ValueError("an IP address or host name such as 0.0.0.0, 127.0.0.1 or ::")
    return text


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
# OTLP traces. The sidecar reads OpenTelemetry's exporter variables the way Dynamo 1.6.1's
# runtime reads them, so the `main` container's OTEL_* env (copied by `inject`) sends the
# sidecar's spans where Dynamo sends its own. Dynamo's rules (ai-dynamo/dynamo
# lib/runtime/src/logging.rs: otlp_exporter_enabled, parse_otlp_protocol_for_env,
# resolve_signal_otlp_protocol, resolve_otlp_endpoint; docs/observability/tracing.md at
# 0b71cf8463a800f6dbe9789813b5445354ca25d5), checked against the installed 1.6.1 runtime's own
# "OpenTelemetry OTLP export enabled" log line:
#   - export is on only when OTEL_EXPORT_ENABLED is 1/true/on/yes (any other value is off);
#   - protocol: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else grpc;
#     grpc and http/protobuf only (Dynamo falls back to grpc on anything else);
#   - endpoint: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is; else OTEL_EXPORTER_OTLP_ENDPOINT (as
#     is for grpc, plus /v1/traces for http/protobuf); else http://localhost:4317 (grpc) or
#     http://localhost:4318/v1/traces (http/protobuf).
# Where the sidecar differs, on purpose: without OTEL_EXPORT_ENABLED an endpoint alone turns
# export on (as in every OpenTelemetry SDK: the sidecar also runs outside Dynamo), and
# http/json is refused with a config error instead of quietly sent as gRPC.

OTLP_PROTOCOLS = ("grpc", "http/protobuf")
OTLP_DEFAULT_BASE = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}
OTLP_PORTS = {"grpc": 4317, "http/protobuf": 4318}
OTLP_TRACES_PATH = "/v1/traces"
OTLP_DEFAULT_TIMEOUT = 10.0  # seconds: OpenTelemetry's default (10000 ms)
DYNAMO_TRUTHY = {"1", "true", "on", "yes"}  # Dynamo's env_is_truthy


def _env(environ: Mapping[str, str], *names: str) -> tuple[str, str]:
    """The first of `names` set to a non-blank value, and its name; OpenTelemetry treats an
    empty variable as unset."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value, name
    return "", ""


def otlp_protocol_from_env(environ: Mapping[str, str]) -> tuple[str, str]:
    """(protocol as written, the variable it came from or "" for the default grpc)."""
    value, name = _env(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    return (value, name) if value else ("grpc", "")


def otlp_traces_exporter_off(environ: Mapping[str, str]) -> str:
    """Why the standard switches turn traces off ("" when they do not): OTEL_SDK_DISABLED=true,
    or OTEL_TRACES_EXPORTER without otlp (none, console, ...). Dynamo reads neither."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "OTEL_SDK_DISABLED=true"
    exporters, _ = _env(environ, "OTEL_TRACES_EXPORTER")
    if exporters and "otlp" not in {item.strip().lower() for item in exporters.split(",")}:
        return f"OTEL_TRACES_EXPORTER={exporters[:40]}"
    return ""


def otlp_endpoint_from_env(environ: Mapping[str, str], protocol: str) -> tuple[str, str]:
    """(traces URL, where it came from) by Dynamo's rules; "" when traces are off."""
    switched_off = otlp_traces_exporter_off(environ)
    if switched_off:
        return "", "env " + switched_off.partition("=")[0]
    enabled, _ = _env(environ, "OTEL_EXPORT_ENABLED")
    if enabled and enabled.lower() not in DYNAMO_TRUTHY:
        return "", "env OTEL_EXPORT_ENABLED"
    traces, _ = _env(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces, "env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    base, _ = _env(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
    origin = "env OTEL_EXPORTER_OTLP_ENDPOINT"
    if not base:
        if not enabled:
            return "", "default"
        base, origin = OTLP_DEFAULT_BASE.get(protocol, OTLP_DEFAULT_BASE["grpc"]), "env OTEL_EXPORT_ENABLED"
    if protocol == "http/protobuf":
        return base.rstrip("/") + OTLP_TRACES_PATH, origin
    return base, origin


def otlp_timeout_from_env(environ: Mapping[str, str]) -> tuple[str, str]:
    """OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT is in milliseconds (the Python SDK reads it as
    seconds; Dynamo and the specification as milliseconds): as a duration the parser reads."""
    value, name = _env(environ, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    if not value:
        return f"{OTLP_DEFAULT_TIMEOUT:g}s", ""
    return (value + "ms" if re.fullmatch(r"\d+", value) else value), name


def _otlp_protocol(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text == "http/json":
        raise ValueError(
            "grpc or http/protobuf (http/json is not supported: the sidecar, like Dynamo, sends protobuf)"
        )
    if text not in OTLP_PROTOCOLS:
        raise ValueError("grpc or http/protobuf")
    return text


OTLP_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")


def _otlp_endpoint(raw: Any) -> str:
    """The URL spans are sent to, used as is; empty or off: no traces. gRPC also takes a bare
    host:port (TLS unless OTEL_EXPORTER_OTLP_INSECURE=true, as OpenTelemetry specifies)."""
    expected = "an http(s) URL such as http://otel-collector:4317 (host:port for grpc), or off"
    text = "" if raw is None else str(raw).strip()
    if text.lower() in {"", "off", "none"}:
        return ""
    if "://" not in text:
        match = OTLP_HOST_PORT.fullmatch(text)
        if not match or not 0 < int(match.group(2)) <= 65535:
            raise ValueError(expected)
        return text
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(expected)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(expected) from None
    return text


@dataclass(frozen=True)
class OtlpOptions:
    """The exporter settings only OTEL_* variables carry: each OTEL_EXPORTER_OTLP_TRACES_X
    replaces OTEL_EXPORTER_OTLP_X (never merged, as the specification and Dynamo have it)."""

    headers: dict[str, str] = field(default_factory=dict)
    compression: str = "none"
    insecure: bool = False  # only for a gRPC endpoint without a scheme
    certificate_file: str = ""
    client_key_file: str = ""
    client_certificate_file: str = ""

    def redacted(self) -> dict[str, Any]:
        """For /status: header names only (their values are usually credentials)."""
        return {
            "headers": sorted(self.headers),
            "compression": self.compression,
            "insecure": self.insecure,
            "certificate_file": self.certificate_file,
            "client_key_file": self.client_key_file,
            "client_certificate_file": self.client_certificate_file,
        }


HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


def otlp_options(environ: Mapping[str, str], warn: Callable[[str], None] = lambda _: None) -> OtlpOptions:
    def pick(suffix: str) -> tuple[str, str]:
        return _env(environ, f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}")

    headers: dict[str, str] = {}
    raw_headers, headers_name = pick("HEADERS")
    for position, item in enumerate(raw_headers.split(","), start=1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower()  # gRPC metadata keys must be lower case
        if not sep or not HEADER_NAME.fullmatch(key):
            # Dynamo skips such an entry with a warning too. The entry may hold a credential
            # ("Authorization: Bearer ..."), so only its position is named.
            warn(f"{headers_name}: entry {position} is not name=value; skipped")
            continue
        headers[key] = unquote(value.strip())
    compression, compression_name = pick("COMPRESSION")
    compression = compression.lower() or "none"
    if compression not in {"gzip", "none"}:
        # main's variable: Dynamo would start with it, so the sidecar does too (uncompressed).
        warn(f"{compression_name}={_short(compression)} is not gzip or none; spans are sent uncompressed")
        compression = "none"
    insecure_raw, insecure_name = pick("INSECURE")
    if insecure_raw and insecure_raw.lower() not in {"true", "false"}:
        warn(f"{insecure_name}={insecure_raw[:20]!r} is not true or false; read as false")
    files = {}
    for suffix in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"):
        path, name = pick(suffix)
        if path and not os.access(path, os.R_OK):
            # Not fatal: the exporter then fails to start, which /status and the log report.
            warn(f"{name}={_short(path)} is not a readable PEM file; the OTLP exporter cannot use it")
        files[suffix] = path
    return OtlpOptions(
        headers=headers,
        compression=compression,
        insecure=insecure_raw.lower() == "true",
        certificate_file=files["CERTIFICATE"],
        client_key_file=files["CLIENT_KEY"],
        client_certificate_file=files["CLIENT_CERTIFICATE"],
    )


def otlp_warnings(endpoint: str, protocol: str) -> list[str]:
    """Endpoints that parse but will most likely never accept a span."""
    if not endpoint or "://" not in endpoint:
        return []
    parts = urlsplit(endpoint)
    shown = redact_url(endpoint)
    out = []
    other = "http/protobuf" if protocol == "grpc" else "grpc"
    if parts.port == OTLP_PORTS[other]:
        out.append(
            f"OTLP endpoint {shown} is on port {parts.port}, the usual {other} port, but the protocol is "
            f"{protocol}: set OTEL_EXPORTER_OTLP_PROTOCOL (or otlp_protocol) to {other}, or use port "
            f"{OTLP_PORTS[protocol]}"
        )
    if protocol == "http/protobuf" and parts.path in {"", "/"}:
        out.append(
            f"OTLP endpoint {shown} has no path: an OTLP/HTTP receiver takes traces at {OTLP_TRACES_PATH} "
            "(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and otlp_endpoint are used as is; "
            "OTEL_EXPORTER_OTLP_ENDPOINT gets the path added)"
        )
    return out


def _default_otlp_protocol() -> str:
    return otlp_protocol_from_env(os.environ)[0]


def _default_otlp_timeout() -> Any:
    """Raw, like the DYN_* defaults: load_config's parser validates it."""
    return otlp_timeout_from_env(os.environ)[0]


def _default_otlp_endpoint() -> str:
    try:
        protocol = _otlp_protocol(_default_otlp_protocol())
    except ValueError:
        protocol = "grpc"
    return otlp_endpoint_from_env(os.environ, protocol)[0]


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
# What a multinode non-leader pod runs instead of a Dynamo server (the operator's per-backend
# commands, deploy/operator/internal/dynamo/backend_*.go): vLLM's Ray agent (`ray start
# --address=<leader> --block`), TRT-LLM's sshd for the leader's mpirun and the OpenMPI daemon
# it starts; vLLM `--headless` and SGLang `--node-rank N` ranks match the Dynamo patterns above.
# An inter-pod GMS weight server (failover.go) runs `gpu_memory_service.cli.server`.
NON_LEADER_PROCESS_PATTERNS = [
    r"\bray\s+start\b",
    r"\bsshd\b.*\s-D\b",
    r"\borted\b",
    r"\bgpu_memory_service\b",
]
ROLES = ("all", "frontend", "worker", "non-leader")
# A pod's place in a multinode group, as the injector passes it (an explicit value, or the
# operator's labels through the downward API): LWS `role` label `worker` or `leader`, LWS
# worker index, or a Grove PodClique name ending `-ldr` / `-wkr` (operator suffixes), or
# `-gms-<rank>`: an inter-pod GMS weight server, which serves no Dynamo endpoint either.
_NON_LEADER = re.compile(r"^(non-leader|worker|[1-9][0-9]*)$|-wkr(-[0-9]+)?$|-gms-[0-9]+$")
_LEADER = re.compile(r"^(leader|0)$|-ldr$")


def _label_value(raw: Any) -> str:
    """Label values as the injector passes them (two labels joined at most): kept whole up to
    253 characters, cut beyond, never refused: they come from the pod's own labels."""
    return str(raw).strip()[:253]


def multinode_position(value: str) -> str:
    """ "non-leader", "leader" or "" (not known to be in a multinode group)."""
    text = value.strip().lower()
    if _NON_LEADER.search(text):
        return "non-leader"
    return "leader" if _LEADER.search(text) else ""


def _spec(parser: Callable[[Any], Any], doc: str, secret: bool = False, dyn_env: str = "") -> dict[str, Any]:
    return {"parser": parser, "doc": doc, "secret": secret, "dyn_env": dyn_env}


@dataclass
class Config:
    # HTTP server
    listen_host: str = field(
        default="0.0.0.0", metadata=_spec(_bind_address, "Address the sidecar's HTTP server binds.")
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
            _choice(*ROLES),
            "Which Dynamo parts to watch: frontend, worker, all, or non-leader (a multinode non-leader pod: "
            "GPU, processes, cgroup and TCP only; it serves no Dynamo endpoint).",
        ),
    )
    multinode_position: str = field(
        default="",
        metadata=_spec(
            _label_value,
            "This pod's place in a multinode group: leader, non-leader, or the operator's label as the injector "
            "passes it (LWS role leader|worker, Grove PodClique name ending -ldr|-wkr, or -gms-N for a GPU Memory "
            "Service weight server). A worker that is a non-leader runs as role non-leader; empty: not multinode.",
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
    quiet_slowdown: int = field(
        default=2,
        metadata=_spec(
            _int_range(1, 10),
            "While the pod is quiet (serving, no traffic, no finding at warning or above), collectors other "
            "than health and logs run this many times slower, and at their own pace again on the first "
            "sign of anything; 1 turns it off.",
        ),
    )
    quiet_after: float = field(
        default=30.0,
        metadata=_spec(
            _seconds(1, 3600), "How long with no traffic before the pod counts as quiet (see quiet_slowdown)."
        ),
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
    memory_limit: int | None = field(
        default=None,
        metadata=_spec(
            _bytes_or_auto(16 * 2**20, 2**40),
            "The sidecar container's memory limit the budget derives from; auto: read from its cgroup (memory.max).",
        ),
    )
    memory_budget: int | None = field(
        default=None,
        metadata=_spec(
            _bytes_or_auto(2**20, 2**40),
            "Memory for series and their history; auto: a quarter of memory_limit, or 128Mi when no limit is known. "
            "Past it new series, and first their history, are kept out and counted.",
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
    # OTLP traces (defaults from the OTEL_* variables, read as Dynamo reads them)
    otlp_endpoint: str = field(
        default_factory=_default_otlp_endpoint,
        metadata=_spec(
            _otlp_endpoint,
            "URL the sidecar's spans go to, used as is (for http/protobuf include /v1/traces); empty or off: "
            "no traces. Default: resolved from the OTEL_* variables as Dynamo does (docs/operations.md, Traces).",
            dyn_env="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT/OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    )
    otlp_protocol: str = field(
        default_factory=_default_otlp_protocol,
        metadata=_spec(
            _otlp_protocol,
            "OTLP transport: grpc or http/protobuf (default grpc, as Dynamo's).",
            dyn_env="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL/OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    )
    otlp_timeout: float = field(
        default_factory=_default_otlp_timeout,
        metadata=_spec(
            _seconds(0.001, 600),
            "Timeout of one span export (the OTEL_* variables are in milliseconds; default 10 s).",
            dyn_env="OTEL_EXPORTER_OTLP_TRACES_TIMEOUT/OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
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
            "Work in flight with no token produced for this long is a hung engine; 0 means two dynamo_interval "
            "(less the interval jitter: two scrapes apart always count).",
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
                out[f.name] = redact.REDACTED
            else:
                out[f.name] = redact.value(value)
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
        shown = redact.REDACTED if FIELDS[key].metadata["secret"] else raw
        raise ConfigError(key, shown, str(exc), origin) from None


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


def redact_url(text: str) -> str:
    """Credentials in `text` replaced (agent.core.redact: URL userinfo, secret query parameters
    and flags, and every credential the sidecar was given)."""
    return redact.text(text)


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
        if name.startswith(ENV_PREFIX) and key not in FIELDS and name not in NOT_CONFIG_ENV:
            warn(f"{name[:80]} is not a config variable{closest_key(key, env_name)}; ignored")
    for key in FIELDS:
        name = env_name(key)
        if name in environ:
            values[key] = (environ[name], f"env {name}")
    for key, raw in (overrides or {}).items():
        if raw is not None:
            values[key] = (raw, f"flag --{key.replace('_', '-')}")
    _otlp_defaults(values, environ, warn)
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
    # Every credential the sidecar is given is remembered, so that no output shows it, in
    # whatever text it turns up (agent.core.redact).
    redact.remember(
        *(str(getattr(config, f.name)) for f in dataclasses.fields(Config) if f.metadata["secret"])
    )
    redact.remember_values(getattr(config, f.name) for f in dataclasses.fields(Config))
    redact.remember_environ(environ)
    _check_consistency(config)
    _check_otlp(config, values["otlp_endpoint"][1], environ, warn)
    return config


def _otlp_defaults(
    values: dict[str, tuple[Any, str]], environ: Mapping[str, str], warn: Callable[[str], None]
) -> None:
    """The OTLP keys' defaults from `environ`'s OTEL_* variables, each reported by the variable
    it came from; the endpoint is resolved for the protocol in effect (own key or OTEL_*).

    OTEL_* values are `main`'s, copied by the injector: one Dynamo tolerates must not stop the
    sidecar (a native sidecar that exits keeps the whole pod from starting). Like Dynamo, a
    protocol it cannot use falls back to grpc; an endpoint or timeout that does not parse is
    warned about and left at off / the default. The sidecar's own keys stay strict."""
    if "otlp_protocol" not in values:
        protocol_raw, name = otlp_protocol_from_env(environ)
        values["otlp_protocol"] = (protocol_raw, f"env {name}" if name else "default")
        if name and not _parses("otlp_protocol", protocol_raw):
            warn(
                f"{name}={_short(protocol_raw)} is not grpc or http/protobuf; traces use grpc, as Dynamo does"
            )
            values["otlp_protocol"] = ("grpc", f"env {name} (not usable; Dynamo's fallback)")
    protocol = _parse_field("otlp_protocol", *values["otlp_protocol"])
    if "otlp_endpoint" not in values:
        endpoint, origin = otlp_endpoint_from_env(environ, protocol)
        values["otlp_endpoint"] = (endpoint, origin)
        usable = _parses("otlp_endpoint", endpoint) and not (
            endpoint and "://" not in endpoint and protocol != "grpc"
        )
        if not usable:
            warn(
                f"{origin.removeprefix('env ')}={_short(redact_url(endpoint))} is not a usable {protocol} "
                "endpoint; the sidecar's traces are off"
            )
            values["otlp_endpoint"] = ("", f"{origin} (not usable)")
    if "otlp_timeout" not in values:
        timeout, name = otlp_timeout_from_env(environ)
        values["otlp_timeout"] = (timeout, f"env {name}" if name else "default")
        if name and not _parses("otlp_timeout", timeout):
            warn(f"{name}={_short(timeout)} is not a number of milliseconds; the default is used")
            values["otlp_timeout"] = (f"{OTLP_DEFAULT_TIMEOUT:g}s", f"env {name} (not usable)")


def _parses(key: str, raw: Any) -> bool:
    try:
        FIELDS[key].metadata["parser"](raw)
    except ValueError:
        return False
    return True


def _check_otlp(
    config: Config, endpoint_origin: str, environ: Mapping[str, str], warn: Callable[[str], None]
) -> None:
    if config.otlp_endpoint and "://" not in config.otlp_endpoint and config.otlp_protocol != "grpc":
        raise ConfigError(
            "otlp_endpoint",
            redact_url(config.otlp_endpoint),
            "an http(s) URL for http/protobuf (a bare host:port is for grpc only)",
            endpoint_origin,
        )
    off = otlp_traces_exporter_off(environ)
    if (
        not config.otlp_endpoint
        and off.startswith("OTEL_TRACES_EXPORTER=")
        and off.lower() != "otel_traces_exporter=none"
    ):
        warn(f"{off}: the sidecar exports traces only over OTLP; its traces are off")
    if config.otlp_endpoint:
        otlp_options(environ, warn)  # a bad compression or an unreadable TLS file fails at start
    for message in otlp_warnings(config.otlp_endpoint, config.otlp_protocol):
        warn(message)


def _check_consistency(config: Config) -> None:
    if config.hung_engine_after == 0:
        # The stall is measured between scrape timestamps, and each interval is jittered: two
        # intervals can measure 2 x (1 - jitter) x dynamo_interval, and a plain 2 x would then
        # wait for a third scrape (bench/time_to_finding.py's engine_hang missed its deadline so).
        config.hung_engine_after = 2 * config.dynamo_interval * (1 - config.interval_jitter)
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
    if config.role in {"worker", "all"} and multinode_position(config.multinode_position) == "non-leader":
        # The injector cannot tell leader from non-leader in a DGD component's template (the
        # operator renders both from it): the pod's own labels decide, here.
        config.role = "non-leader"
    if config.role == "non-leader" and config.process_patterns == DEFAULT_PROCESS_PATTERNS:
        config.process_patterns = [*DEFAULT_PROCESS_PATTERNS, *NON_LEADER_PROCESS_PATTERNS]
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
    if value is None and value_form(f) == "BYTES":
        text = "auto"
    if text and value_form(f) == "DURATION":
        text += "s"
    return text if text != "" else "none"


def value_form(f: dataclasses.Field[Any]) -> str:
    """The METAVAR of a key's flag: what kind of value it takes."""
    parser = f.metadata["parser"]
    name = getattr(parser, "__qualname__", "")
    for marker, form in (
        ("_bind_address", "HOST"),
        ("_otlp_endpoint", "URL"),
        ("_otlp_protocol", "CHOICE"),
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
        ("_bytes_or_auto", "BYTES"),
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
