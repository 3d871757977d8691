"""OTLP traces configured the way Dynamo 1.6.1 reads OpenTelemetry's variables, delivered over
gRPC and OTLP/HTTP to a real collector process (rotel, tests/otlp_receiver.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, otlp_options, otlp_warnings
from agent.core.components import Components
from agent.core.signals import Signals
from agent.core.state import State
from agent.diagnose.context import Context
from agent.diagnose.engine import evaluate
from agent.tools.inject import Options, inject
from exporters.otlp import Telemetry
from exporters.otlp_settings import OtlpSettings
from tests.helpers import PYTHON, base_url, get_json, wait_for, wait_for_sync
from tests.otlp_receiver import ReceivedSpan, Rotel, parse_debug_log, rotel_binary
from tests.procs import ENV, http_get, spawn_sidecar, start_sim
from tests.real_dynamo import REAL_DYNAMO_MARKS, RealDynamo

needs_rotel = pytest.mark.skipif(
    rotel_binary() is None, reason="rotel not installed: pip install -e '.[test]' (PyPI rotel)"
)


@pytest.fixture(autouse=True)
def no_otel_env_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test states its own OTEL_* env; none leaks in from the shell running pytest."""
    for name in list(os.environ):
        if name.startswith("OTEL_") or name.startswith("DYN_SIDECAR_OTLP"):
            monkeypatch.delenv(name)


@pytest.fixture
def rotel(tmp_path: Path) -> Iterator[Rotel]:
    binary = rotel_binary()
    if binary is None:
        pytest.skip("rotel not installed: pip install -e '.[test]' (PyPI rotel)")
    receiver = Rotel(binary, tmp_path)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def resolved(env: dict[str, str], **overrides: str) -> tuple[str, str]:
    config = load_config(environ=env, overrides=overrides, warn=lambda _: None)
    return config.otlp_endpoint, config.otlp_protocol


# Each row is one of Dynamo 1.6.1's rules (lib/runtime/src/logging.rs), checked against the
# installed runtime's "OpenTelemetry OTLP export enabled endpoint=... protocol=..." log line.
DYNAMO_RULES = [
    pytest.param({}, ("", "grpc"), id="nothing-set-off"),
    pytest.param(
        {"OTEL_EXPORT_ENABLED": "true"}, ("http://localhost:4317", "grpc"), id="enabled-default-grpc"
    ),
    pytest.param(
        {"OTEL_EXPORT_ENABLED": "true", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4317"},
        ("http://tempo:4317", "grpc"),
        id="dynamo-docs-tempo",
    ),
    pytest.param(
        {"OTEL_EXPORT_ENABLED": "1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        ("http://localhost:4318/v1/traces", "http/protobuf"),
        id="enabled-default-http",
    ),
    pytest.param(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
        ("http://c:4318/v1/traces", "http/protobuf"),
        id="http-base-gets-path",
    ),
    pytest.param(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317/"},
        ("http://c:4317/", "grpc"),
        id="grpc-base-as-is",
    ),
    pytest.param(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "HTTP/PROTOBUF",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c",
        },
        ("https://c/v1/traces", "http/protobuf"),
        id="traces-protocol-wins-any-case",
    ),
    pytest.param(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318",
        },
        ("http://c:4318/custom", "http/protobuf"),
        id="traces-endpoint-as-is",
    ),
    pytest.param(
        {"OTEL_EXPORTER_OTLP_PROTOCOL": " ", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
        ("http://c:4317", "grpc"),
        id="blank-is-unset",
    ),
    pytest.param(
        {"OTEL_EXPORT_ENABLED": "false", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4317"},
        ("", "grpc"),
        id="export-disabled",
    ),
    pytest.param(
        {"OTEL_EXPORT_ENABLED": "enabled", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
        ("", "grpc"),
        id="not-dynamo-truthy",
    ),
    pytest.param(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
        ("", "grpc"),
        id="traces-exporter-none",
    ),
    pytest.param(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORT_ENABLED": "true"}, ("", "grpc"), id="sdk-disabled"
    ),
    pytest.param(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "tempo:4317"}, ("tempo:4317", "grpc"), id="grpc-bare-host-port"
    ),
]


@pytest.mark.parametrize(("env", "expected"), DYNAMO_RULES)
def test_otel_env_resolves_as_dynamo_does(env: dict[str, str], expected: tuple[str, str]) -> None:
    assert resolved(env) == expected


def test_own_keys_win_and_the_endpoint_follows_the_protocol_in_effect() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TIMEOUT": "5000"}
    # The sidecar's own protocol key decides how OTEL_EXPORTER_OTLP_ENDPOINT is completed.
    assert resolved({**env, "DYN_SIDECAR_OTLP_PROTOCOL": "http/protobuf"}) == (
        "http://c:4318/v1/traces",
        "http/protobuf",
    )
    assert resolved(env, otlp_protocol="http/protobuf") == ("http://c:4318/v1/traces", "http/protobuf")
    assert resolved({**env, "DYN_SIDECAR_OTLP_ENDPOINT": "off"}) == ("", "grpc")
    assert resolved(env, otlp_endpoint="https://x:443/v1/traces") == ("https://x:443/v1/traces", "grpc")
    # OpenTelemetry's timeout is milliseconds (the Python SDK's own reading would take seconds).
    assert load_config(environ=env).otlp_timeout == 5.0
    assert load_config(environ={**env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "250"}).otlp_timeout == 0.25
    assert load_config(environ={**env, "DYN_SIDECAR_OTLP_TIMEOUT": "2s"}).otlp_timeout == 2.0


def test_a_traces_exporter_other_than_otlp_turns_traces_off_with_a_warning() -> None:
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    warnings: list[str] = []
    assert load_config(environ=env, warn=warnings.append).otlp_endpoint == ""
    assert len(warnings) == 1 and "OTEL_TRACES_EXPORTER=console" in warnings[0]
    warnings.clear()  # the sidecar's own key still wins, and then nothing is off
    config = load_config(environ=env, overrides={"otlp_endpoint": "http://c:4317"}, warn=warnings.append)
    assert config.otlp_endpoint == "http://c:4317" and warnings == []
    assert resolved({**env, "OTEL_TRACES_EXPORTER": "otlp,console"}) == ("http://c:4317", "grpc")


@pytest.mark.parametrize(
    ("env", "expected", "needle"),
    [
        # Dynamo falls back to grpc for a protocol it cannot use; so does the sidecar.
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            ("http://c:4317", "grpc"),
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"}, ("http://c:4317", "grpc"), "traces use grpc"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c:21"}, ("", "grpc"), "traces are off"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "c:4318"},
            ("", "http/protobuf"),
            "not a usable http/protobuf endpoint",
        ),
    ],
)
def test_unusable_otel_values_from_mains_env_are_warned_not_fatal(
    env: dict[str, str], expected: tuple[str, str], needle: str
) -> None:
    """OTEL_* is main's env, copied by the injector: a value Dynamo starts with must not keep
    the sidecar (a native sidecar: the whole pod) from starting."""
    warnings: list[str] = []
    config = load_config(
        environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", **env}, warn=warnings.append
    )
    assert (config.otlp_endpoint, config.otlp_protocol) == expected
    assert len(warnings) == 1 and needle in warnings[0], warnings


def test_unusable_otel_timeout_compression_and_files_are_warned_not_fatal(tmp_path: Path) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "soon",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "br",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "missing.pem"),
    }
    warnings: list[str] = []
    config = load_config(environ=env, warn=warnings.append)
    assert config.otlp_timeout == 10.0 and config.otlp_endpoint == "https://c:4317"
    assert [w.split("=")[0] for w in warnings] == [
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ], warnings
    # The exporter cannot start without its CA file: recorded, shown, and a finding.
    telemetry = Telemetry.from_config(config, environ=env)
    assert not telemetry.enabled and "missing.pem" in telemetry.status()["error"]
    state = State()
    (finding,) = [
        f
        for f in evaluate(
            Context(state, config, Signals(window=300.0), components=Components(otlp=telemetry))
        )[0]
        if f.rule == "otlp_export_failing"
    ]
    assert finding.subject == "https://c:4317" and finding.since == state.started
    assert "missing.pem" in finding.evidence[0].value


@pytest.mark.parametrize(
    ("overrides", "key", "needle"),
    [
        ({"otlp_protocol": "http/json"}, "otlp_protocol", "http/json is not supported"),
        ({"otlp_protocol": "thrift"}, "otlp_protocol", "grpc or http/protobuf"),
        ({"otlp_endpoint": "ftp://c:21"}, "otlp_endpoint", "http(s) URL"),
        ({"otlp_timeout": "soon"}, "otlp_timeout", "duration"),
        ({"otlp_protocol": "http/protobuf", "otlp_endpoint": "c:4318"}, "otlp_endpoint", "for http/protobuf"),
    ],
)
def test_bad_values_of_the_sidecars_own_keys_are_config_errors(
    overrides: dict[str, str], key: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, overrides=overrides)
    assert caught.value.key == key and needle in str(caught.value)


def test_http_json_from_mains_env_does_not_stop_the_sidecar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert main(["check-config"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["otlp_protocol"] == "grpc"
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in captured.err and "http/json" in captured.err


def test_port_and_path_mistakes_are_warned() -> None:
    (grpc_to_http_port,) = otlp_warnings("http://u:pw@c:4318/v1/traces", "grpc")
    assert "4318" in grpc_to_http_port and "http/protobuf" in grpc_to_http_port
    assert "pw" not in grpc_to_http_port  # credentials in the URL are never printed
    http_to_grpc_port, no_path = otlp_warnings("http://c:4317", "http/protobuf")
    assert "grpc" in http_to_grpc_port and "/v1/traces" in no_path
    assert otlp_warnings("http://c:4317", "grpc") == []
    assert otlp_warnings("http://c:4318/v1/traces", "http/protobuf") == []
    warnings: list[str] = []
    load_config(
        environ={"OTEL_EXPORT_ENABLED": "true", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"},
        warn=warnings.append,
    )
    assert len(warnings) == 1 and "port 4318" in warnings[0]


def test_headers_compression_and_insecure_follow_the_specification() -> None:
    warnings: list[str] = []
    options = otlp_options(
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "x-generic=1",
            # Signal-specific replaces the generic set (never merged); values are URL-decoded;
            # an entry that is not name=value is skipped without echoing it (it may be a token).
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Authorization=Bearer%20s3cr3t,Authorization: Bearer leaked,X-Tenant=a%2Cb",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "yes",
        },
        warnings.append,
    )
    assert options.headers == {"authorization": "Bearer s3cr3t", "x-tenant": "a,b"}
    assert options.compression == "gzip"
    assert options.insecure is False  # only "true" is true; "yes" is warned about
    assert len(warnings) == 2 and not any("leaked" in w or "s3cr3t" in w for w in warnings)
    assert options.redacted()["headers"] == ["authorization", "x-tenant"]


def test_otlp_status_never_shows_header_values_or_url_credentials() -> None:
    settings = OtlpSettings(
        endpoint="http://user:pw@127.0.0.1:9/v1/traces",
        protocol="http/protobuf",
        options=otlp_options({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr3t"}),
    )
    telemetry = Telemetry(settings, environ={})
    try:
        text = json.dumps(telemetry.status())
    finally:
        telemetry.shutdown()
    assert telemetry.enabled and "api-key" in text
    assert "s3cr3t" not in text and "pw@" not in text


def test_each_transport_is_imported_only_when_selected() -> None:
    """grpcio adds ~17 MiB to a running sidecar (bench/otlp_cost.py): never paid for http/protobuf."""
    code = (
        "import sys; from agent.config import load_config; from exporters.otlp import Telemetry\n"
        "env = {'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://127.0.0.1:9', 'OTEL_EXPORTER_OTLP_PROTOCOL': 'http/protobuf'}\n"
        "Telemetry.from_config(load_config(environ=env), environ={}).shutdown()\n"
        "print('LOADED', 'grpc' in sys.modules, 'requests' in sys.modules)\n"
        "env['OTEL_EXPORTER_OTLP_PROTOCOL'] = 'grpc'\n"
        "Telemetry.from_config(load_config(environ=env), environ={}).shutdown()\n"
        "print('LOADED', 'grpc' in sys.modules)\n"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("LOADED ")]
    assert loaded == [["False", "True"], ["True"]], out.stdout[-2000:] + out.stderr[-2000:]


def injected_env(main_env: dict[str, str], pod: dict[str, str]) -> dict[str, str]:
    """The sidecar container's env as `inject` writes it for a pod whose `main` has `main_env`,
    with the downward-API values Kubernetes would fill in."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod["POD_NAME"], "labels": {"nvidia.com/dynamo-component-type": "frontend"}},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "dynamo",
                    "env": [{"name": k, "value": v} for k, v in main_env.items()],
                }
            ]
        },
    }
    out, _ = inject(manifest, Options(image="registry.test/dynamo-sidecar:test"))
    (sidecar,) = out["spec"]["initContainers"]
    env = {item["name"]: item["value"] for item in sidecar["env"] if "value" in item}
    downward = {item["name"] for item in sidecar["env"] if "valueFrom" in item}
    assert downward == {"POD_NAME", "POD_NAMESPACE", "NODE_NAME"}
    return {**env, **pod}


POD = {"POD_NAME": "vllm-frontend-0", "POD_NAMESPACE": "inference", "NODE_NAME": "gpu-node-7"}


@needs_rotel
@pytest.mark.slow  # a sidecar process from start to SIGTERM exit: ~5 s on a loaded machine
def test_grpc_spans_arrive_with_mains_env_from_dynamos_tracing_docs(rotel: Rotel) -> None:
    """Dynamo's docs/observability/tracing.md (Kubernetes): OTEL_EXPORT_ENABLED plus a gRPC
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, no protocol. The sidecar runs as a process with the env
    inject gives it, drains on SIGTERM, and its drain span reaches the collector over gRPC."""
    main_env = {
        "DYN_LOGGING_JSONL": "true",
        "OTEL_EXPORT_ENABLED": "true",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rotel.grpc_url,
        "OTEL_SERVICE_NAME": "dynamo-frontend",
    }
    env = {k: v for k, v in ENV.items() if not k.startswith("OTEL_")}
    env.update(injected_env(main_env, POD))
    sim, ports = start_sim()
    proc: subprocess.Popen[str] | None = None
    try:
        proc, url = spawn_sidecar(
            f"http://127.0.0.1:{ports['frontend']}",
            f"http://127.0.0.1:{ports['worker']}",
            "--drain-settle",
            "0.2",
            "--drain-interval",
            "0.1",
            pid=ports["pid"],
            env=env,
        )
        status = json.loads(http_get(url + "/status")[1])["otlp"]
        assert (status["enabled"], status["protocol"], status["endpoint"]) == (True, "grpc", rotel.grpc_url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        sim.terminate()
        sim.wait(timeout=10)
    (drain,) = wait_for_sync(lambda: rotel.named("dynamo_sidecar.drain"), timeout=10, what="drain span")
    assert drain.attributes["dynamo.drain.reason"] in {"inflight_zero", "process_exited"}
    assert drain.resource["service.name"] == "dynamo-sidecar"  # not main's dynamo-frontend
    assert drain.resource["dynamo.service.name"] == "dynamo-frontend"
    assert drain.resource["k8s.pod.name"] == "vllm-frontend-0"
    assert drain.resource["k8s.container.name"] == "dynamo-sidecar"
    assert rotel.named("dynamo_sidecar.drain_started")  # the events came the same way


@needs_rotel
async def test_http_protobuf_base_endpoint_gets_the_traces_path(
    sim, make_sidecar, rotel, monkeypatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rotel.http_url)  # a base URL, as the spec has it
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=inference")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    for key, value in POD.items():
        monkeypatch.setenv(key, value)
    sidecar = await make_sidecar(sim, canary_wait="0.3")
    assert sidecar.telemetry.endpoint == rotel.http_url + "/v1/traces"
    spans = await wait_for(flushed(sidecar, rotel, "POST /v1/completions"), timeout=15, what="canary span")
    assert spans[0].attributes["dynamo.canary.outcome"] == "ok"
    assert spans[0].resource["k8s.namespace.name"] == "inference"
    assert sidecar.telemetry.processor is not None and sidecar.telemetry.processor.failures == 0


def flushed(sidecar, rotel: Rotel, name: str):
    """A condition for wait_for: flush the sidecar's queue (off the loop), then look."""

    async def check() -> list[ReceivedSpan]:
        await asyncio.to_thread(sidecar.telemetry.flush, 2)
        return rotel.named(name)

    return check


@needs_rotel
def test_bare_host_port_grpc_endpoint_is_tls_unless_insecure(rotel: Rotel) -> None:
    """OpenTelemetry's rule: OTEL_EXPORTER_OTLP_INSECURE applies to a scheme-less gRPC endpoint.
    rotel listens in plaintext, so only the insecure exporter gets its span through."""
    for insecure, delivered in (("true", True), ("false", False)):
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"127.0.0.1:{rotel.grpc_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": insecure,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
        }
        telemetry = Telemetry.from_config(load_config(environ=env), environ=env)
        try:
            telemetry.tracer.start_span(f"insecure-{insecure}").end()
            assert telemetry.flush(5)
            processor = telemetry.processor
            assert processor is not None
            assert (processor.exported, processor.failures) == ((1, 0) if delivered else (0, 1))
        finally:
            telemetry.shutdown()
    wait_for_sync(lambda: rotel.named("insecure-true"), timeout=5, what="the plaintext span")
    assert rotel.named("insecure-false") == []


def test_rotel_debug_log_parser_reads_what_rotel_prints() -> None:
    text = (
        "ResourceSpans #0\nResource attributes:\n     -> service.name: Str(s)\nScopeSpans #0\n"
        "Span #0\n    Trace ID       : ab\n    Parent ID      : \n    ID             : cd\n"
        "    Name           : n: x\n    Kind           : SPAN_KIND_CLIENT\n    Status code    : STATUS_CODE_ERROR\n"
        "Attributes:\n     -> i: Int(3)\n     -> b: Bool(true)\n     -> s: Str(a, b)\nEvents:\nSpanEvent #0\n"
        "     -> Name: evt\n     -> Attributes::\n          -> message: Str(m)\n"
    )
    (span,) = parse_debug_log(text)
    assert (span.name, span.trace_id, span.span_id, span.status) == ("n: x", "ab", "cd", "STATUS_CODE_ERROR")
    assert span.attributes == {"i": 3, "b": True, "s": "a, b"}
    assert span.resource == {"service.name": "s"} and span.events == ["evt"]


def real_dynamo(test):
    for mark in REAL_DYNAMO_MARKS:
        test = mark(test)
    return test


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@needs_rotel
@real_dynamo
async def test_sidecar_spans_go_where_real_dynamo_sends_its_own(
    dynamo: RealDynamo, rotel: Rotel, make_sidecar, sim, http, monkeypatch, protocol: str
) -> None:
    """The same OTEL_* env in a real Dynamo 1.6.1 frontend and in the sidecar: both services'
    spans reach the same collector, over gRPC (Dynamo's default) and over OTLP/HTTP."""
    otel = {"OTEL_EXPORT_ENABLED": "true", "OTEL_SERVICE_NAME": "dynamo-frontend"}
    if protocol == "grpc":
        otel["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = rotel.grpc_url
    else:
        otel["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        otel["OTEL_EXPORTER_OTLP_ENDPOINT"] = rotel.http_url
    dynamo.env.update(otel, OTEL_BSP_SCHEDULE_DELAY="200")  # Dynamo's batch: 5 s by default
    dynamo.start_frontend()
    # No worker: the frontend answers 404 for the model, and traces the request all the same.
    assert dynamo.completion("otlp-probe")[0] == 404
    for key, value in otel.items():
        monkeypatch.setenv(key, value)
    sidecar = await make_sidecar(sim, canary_enabled="false", drain_settle="0.1", drain_interval="0.1")
    async with http.post(base_url(sidecar) + "/drain") as response:
        assert response.status == 200
    await sidecar.flush_telemetry()

    def by_service() -> dict[str, list[ReceivedSpan]] | None:
        out: dict[str, list[ReceivedSpan]] = {}
        for span in rotel.spans():
            out.setdefault(span.resource.get("service.name", ""), []).append(span)
        return out if {"dynamo-frontend", "dynamo-sidecar"} <= set(out) else None

    spans = await wait_for(by_service, timeout=20, what="spans of both Dynamo and the sidecar")
    assert any(s.attributes.get("x_request_id") == "otlp-probe" for s in spans["dynamo-frontend"])
    assert any(s.name == "dynamo_sidecar.drain" for s in spans["dynamo-sidecar"])
    report = await get_json(http, base_url(sidecar) + "/status")
    assert report["otlp"]["protocol"] == protocol and report["otlp"]["failures"] == 0
