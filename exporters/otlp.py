"""OTLP traces: canary requests, drains, and events (health transitions, restarts, XIDs).

Configured by the standard OTEL_EXPORTER_OTLP_* variables (endpoint, protocol, headers,
timeout); with no endpoint set, tracing is off and costs nothing. The span queue is bounded
and exported from a background thread: a receiver that is down or slow costs counted drops
(`dynamo_sidecar_otlp_spans_dropped_total`), never memory growth or a blocked event loop.
The gRPC stack is imported only when gRPC is selected.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from agent import __version__
from agent.log import get as get_logger
from agent.samples import Event, Sample, sample

log = get_logger("dynamo_sidecar.otlp")

GRPC = "grpc"
HTTP = "http/protobuf"
# Downward-API env names the Helm chart sets, and the OTel resource keys they fill.
K8S_ENV = {
    "k8s.pod.name": ("POD_NAME", "K8S_POD_NAME"),
    "k8s.namespace.name": ("POD_NAMESPACE", "K8S_NAMESPACE_NAME"),
    "k8s.node.name": ("NODE_NAME", "K8S_NODE_NAME"),
    "k8s.container.name": ("CONTAINER_NAME", "K8S_CONTAINER_NAME"),
}


def otlp_settings(environ: Mapping[str, str]) -> tuple[str, str]:
    """(endpoint, protocol) from the standard variables; endpoint "" means disabled."""
    endpoint = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or ""
    )
    protocol = (
        (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or HTTP
        )
        .strip()
        .lower()
    )
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        endpoint = ""
    return endpoint.strip(), protocol


def build_resource(environ: Mapping[str, str]) -> Resource:
    attributes: dict[str, Any] = {
        "service.name": "dynamo-sidecar",
        "service.version": __version__,
    }
    for key, names in K8S_ENV.items():
        for name in names:
            if environ.get(name):
                attributes[key] = environ[name]
                break
    pod = attributes.get("k8s.pod.name") or socket.gethostname()
    attributes["service.instance.id"] = f"{pod}/dynamo-sidecar"
    # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME still win, as the spec says.
    return Resource.create(attributes)


def make_exporter(protocol: str) -> SpanExporter:
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol in {HTTP, "http"}:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected grpc or http/protobuf")


class BoundedBatchProcessor(SpanProcessor):
    """Queues ended spans (bounded) and exports them in batches from one thread."""

    def __init__(
        self, exporter: SpanExporter, max_queue: int = 2048, batch_size: int = 256, delay: float = 2.0
    ) -> None:
        self.exporter = exporter
        self.batch_size = batch_size
        self.delay = delay
        self._queue: deque[ReadableSpan] = deque()
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._flushed = threading.Condition(self._lock)
        self._in_export = 0
        self._stopping = False
        self.exported = 0
        self.dropped: dict[str, int] = {"queue_full": 0, "export_failed": 0}
        self.failures = 0
        self.last_error = ""
        self.last_success = 0.0
        self._thread = threading.Thread(target=self._loop, name="otlp-export", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            if len(self._queue) >= self.max_queue:
                self.dropped["queue_full"] += 1
                return
            self._queue.append(span)
            full = len(self._queue) >= self.batch_size
        if full:
            self._wake.set()

    def _take(self) -> list[ReadableSpan]:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._in_export += bool(batch)
            return batch

    def _export(self, batch: list[ReadableSpan]) -> None:
        try:
            result = self.exporter.export(batch)
            error = "" if result == SpanExportResult.SUCCESS else "receiver did not accept the batch"
        except Exception as exc:  # an exporter bug or transport error must not kill the thread
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._in_export -= 1
            if error:
                self.failures += 1
                self.dropped["export_failed"] += len(batch)
                self.last_error = error[:300]
            else:
                self.exported += len(batch)
                self.last_success = time.time()
            self._flushed.notify_all()

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait(self.delay)
            self._wake.clear()
            while batch := self._take():
                self._export(batch)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        self._wake.set()
        with self._lock:
            while self._queue or self._in_export:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._flushed.wait(min(remaining, 0.1))
        return True

    def shutdown(self) -> None:
        if self._stopping:
            return  # the provider's atexit hook may call this again
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.exporter.shutdown()


class Telemetry:
    """The sidecar's tracer. Disabled (a no-op tracer) when no OTLP endpoint is set."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, exporter: SpanExporter | None = None
    ) -> None:
        environ = os.environ if environ is None else environ
        self.endpoint, self.protocol = otlp_settings(environ)
        self.processor: BoundedBatchProcessor | None = None
        self.provider: TracerProvider | None = None
        self.error = ""
        if exporter is None and not self.endpoint:
            self.tracer: Tracer = trace.NoOpTracer()
            return
        try:
            exporter = exporter or make_exporter(self.protocol)
        except (ValueError, ImportError) as exc:
            self.error = str(exc)
            log.error("OTLP exporter not started", error=self.error)
            self.tracer = trace.NoOpTracer()
            return
        self.processor = BoundedBatchProcessor(exporter)
        self.provider = TracerProvider(resource=build_resource(environ))
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("dynamo_sidecar", __version__)
        log.info("OTLP traces on", endpoint=self.endpoint, protocol=self.protocol)

    @property
    def enabled(self) -> bool:
        return self.processor is not None

    def record_event(self, event: Event) -> None:
        """An event as a span with one span event: health transitions, restarts, XIDs, drains."""
        if not self.enabled:
            return
        start = int(event.timestamp * 1e9)
        span = self.tracer.start_span(
            f"dynamo_sidecar.{event.kind}", kind=SpanKind.INTERNAL, start_time=start
        )
        attributes = {"dynamo.source": event.source, **_attributes(event.attributes)}
        span.set_attributes(attributes)
        span.add_event(event.kind, {"message": event.message, **attributes}, timestamp=start)
        if event.kind in {"health_transition"} and event.attributes.get("to_outcome") not in {None, "ok"}:
            span.set_status(Status(StatusCode.ERROR, event.message))
        span.end(end_time=start)

    def flush(self, timeout: float) -> bool:
        if self.processor is None:
            return True
        return self.processor.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        if self.processor is not None:
            self.processor.shutdown()

    def samples(self) -> list[Sample]:
        out = [
            sample(
                "dynamo_sidecar_otlp_enabled",
                1 if self.enabled else 0,
                protocol=self.protocol if self.enabled else "none",
            )
        ]
        if self.processor is None:
            return out
        processor = self.processor
        out.append(sample("dynamo_sidecar_otlp_spans_exported_total", processor.exported))
        for reason, count in processor.dropped.items():
            out.append(sample("dynamo_sidecar_otlp_spans_dropped_total", count, reason=reason))
        out.append(sample("dynamo_sidecar_otlp_export_failures_total", processor.failures))
        out.append(sample("dynamo_sidecar_otlp_queue_spans", len(processor._queue)))
        return out

    def status(self) -> dict[str, Any]:
        processor = self.processor
        return {
            "enabled": self.enabled,
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "error": self.error,
            "exported": processor.exported if processor else 0,
            "dropped": dict(processor.dropped) if processor else {},
            "failures": processor.failures if processor else 0,
            "last_error": processor.last_error if processor else "",
            "last_success": processor.last_success if processor else 0.0,
        }


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, bool | int | float | str):
            out[f"dynamo.{key}"] = value
        elif value is not None:
            out[f"dynamo.{key}"] = str(value)[:500]
    return out


def traceparent_for(span: Any) -> str:
    """The W3C traceparent of a span; a fresh random one when tracing is off, so the
    request can still be found by trace id in Dynamo's logs."""
    context = span.get_span_context() if span is not None else None
    if context is not None and context.is_valid:
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
