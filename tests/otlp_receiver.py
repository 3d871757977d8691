"""A real OTLP receiver for tests: rotel (PyPI `rotel`, a Rust OpenTelemetry collector) listening
for OTLP/gRPC and OTLP/HTTP on loopback, printing every span it receives (its detailed debug
log), which `Rotel.spans()` reads back. No fake: the spans went over the wire and were decoded
by a collector the sidecar's code has nothing in common with."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ATTRIBUTE = re.compile(
    r"^\s+-> (?P<key>[^:]+): (?P<kind>Str|Int|Bool|Double|Bytes|Array|Map)\((?P<value>.*)\)$"
)
FIELD = re.compile(
    r"^\s+(?P<name>Trace ID|Parent ID|ID|Name|Kind|Status code|Status message)\s*: ?(?P<value>.*)$"
)


def rotel_binary() -> Path | None:
    try:
        import rotel
    except ImportError:
        return None
    path = Path(rotel.__file__).resolve().parent / "rotel-agent"
    return path if path.exists() else None


def _value(kind: str, text: str) -> Any:
    if kind == "Int":
        return int(text)
    if kind == "Double":
        return float(text)
    if kind == "Bool":
        return text == "true"
    return text


@dataclass
class ReceivedSpan:
    name: str = ""
    trace_id: str = ""
    span_id: str = ""
    kind: str = ""
    status: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


def parse_debug_log(text: str) -> list[ReceivedSpan]:
    """Spans from rotel's `--debug-log traces --debug-log-verbosity detailed` output."""
    spans: list[ReceivedSpan] = []
    resource: dict[str, Any] = {}
    section = ""
    for raw in text.splitlines():
        line = ANSI.sub("", raw)
        if line.startswith("ResourceSpans #"):
            resource, section = {}, "resource"
        elif line.startswith("Resource attributes:"):
            section = "resource_attributes"
        elif line.startswith("ScopeSpans #"):
            section = "scope"
        elif line.startswith("Span #"):
            spans.append(ReceivedSpan(resource=resource))
            section = "span"
        elif line.startswith("Attributes:") and spans:
            section = "span_attributes"
        elif line.startswith("Events:"):
            section = "events"
        elif line.startswith("SpanEvent #"):
            section = "event"
        elif section == "event" and line.strip().startswith("-> Name: "):
            spans[-1].events.append(line.split("-> Name: ", 1)[1])
        elif section == "span" and (match := FIELD.match(line)):
            name, value = match.group("name"), match.group("value").strip()
            target = {"Trace ID": "trace_id", "ID": "span_id", "Name": "name", "Kind": "kind"}
            if name in target:
                setattr(spans[-1], target[name], value)
            elif name == "Status code":
                spans[-1].status = value
        elif section in {"resource_attributes", "span_attributes"} and (match := ATTRIBUTE.match(line)):
            value = _value(match.group("kind"), match.group("value"))
            (resource if section == "resource_attributes" else spans[-1].attributes)[match.group("key")] = (
                value
            )
    return spans


def _free_low_port(taken: set[int]) -> int:
    """A free loopback port below the ephemeral range (32768+), where no client socket can
    take it between this check and rotel's bind; rotel cannot bind port 0 (it panics)."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port below 32768")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Rotel:
    """`rotel-agent start` on two free loopback ports (gRPC and HTTP), spans to a file."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.output = workdir / "rotel-spans.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.http_port = 0

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, deadline: float = 15.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            self.grpc_port = _free_low_port(set())
            self.http_port = _free_low_port({self.grpc_port})
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "start",
                    "--otlp-grpc-endpoint",
                    f"127.0.0.1:{self.grpc_port}",
                    "--otlp-http-endpoint",
                    f"127.0.0.1:{self.http_port}",
                    "--exporter",
                    "blackhole",
                    "--debug-log",
                    "traces",
                    "--debug-log-verbosity",
                    "detailed",
                    "--pid-file",
                    str(self.workdir / "rotel.pid"),
                    "--log-file",
                    str(self.workdir / "rotel.log"),
                ],
                stdout=self.output.open("wb"),
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
            )
            while time.monotonic() < end and self.proc.poll() is None:
                if _accepts(self.grpc_port) and _accepts(self.http_port):
                    return
                time.sleep(0.02)
            self.stop()  # it exited (a port was taken meanwhile): try other ports
        raise RuntimeError(f"rotel did not start: {self.output.read_text(errors='replace')[-2000:]}")

    def spans(self) -> list[ReceivedSpan]:
        return parse_debug_log(self.output.read_text(errors="replace"))

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans() if span.name == name]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
