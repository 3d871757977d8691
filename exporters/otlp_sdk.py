"""The OpenTelemetry SDK side of the OTLP exporter (exporters/otlp.py): the resource, the
span exporters and the bounded batch processor. Imported only when traces are on."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from agent import __version__
from agent.config import ConfigError
from exporters.otlp_settings import GRPC, HTTP, K8S_ENV, SERVICE_NAME, OtlpSettings


def build_resource(environ: Mapping[str, str]) -> Resource:
    """The sidecar's resource. OTEL_RESOURCE_ATTRIBUTES adds attributes, but `inject` copies the
    `main` container's OTEL_* env, so its service name (Dynamo's docs set OTEL_SERVICE_NAME to
    dynamo-frontend, dynamo-worker-...) is kept as `dynamo.service.name`, never as this
    sidecar's own `service.name`, and the downward-API values name this container."""
    attributes: dict[str, Any] = {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
    }
    for key, names in K8S_ENV.items():
        for name in names:
            if environ.get(name):
                attributes[key] = environ[name]
                break
    pod = attributes.get("k8s.pod.name") or socket.gethostname()
    attributes["service.instance.id"] = f"{pod}/{SERVICE_NAME}"
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME from os.environ.
    from_env = Resource.create({})
    dynamo_service = environ.get("OTEL_SERVICE_NAME", "").strip()
    if dynamo_service:
        attributes["dynamo.service.name"] = dynamo_service
    return from_env.merge(Resource(attributes))


def _read(path: str) -> bytes | None:
    """A PEM file named by OTEL_EXPORTER_OTLP_*CERTIFICATE/CLIENT_KEY (checked at start)."""
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def make_exporter(settings: OtlpSettings) -> SpanExporter:
    """The OpenTelemetry exporter for `settings`, every value passed explicitly: the SDK's own
    env reading differs from the specification (it takes OTEL_EXPORTER_OTLP_TIMEOUT as seconds)."""
    options = settings.options
    if settings.protocol == GRPC:
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        scheme = urlsplit(settings.endpoint).scheme if "://" in settings.endpoint else ""
        # http:// is plaintext and https:// TLS; a bare host:port is TLS unless *_INSECURE=true.
        insecure = scheme == "http" if scheme else options.insecure
        credentials = None
        if not insecure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(options.certificate_file),
                private_key=_read(options.client_key_file),
                certificate_chain=_read(options.client_certificate_file),
            )
        return GrpcExporter(
            endpoint=settings.endpoint,
            insecure=insecure,
            credentials=credentials,
            headers=dict(options.headers) or None,
            timeout=settings.timeout,
            compression=grpc.Compression.Gzip
            if options.compression == "gzip"
            else grpc.Compression.NoCompression,
        )
    if settings.protocol == HTTP:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(
            endpoint=settings.endpoint,
            certificate_file=options.certificate_file or None,
            client_key_file=options.client_key_file or None,
            client_certificate_file=options.client_certificate_file or None,
            headers=dict(options.headers),
            timeout=settings.timeout,
            compression=Compression.Gzip if options.compression == "gzip" else Compression.NoCompression,
        )
    raise ConfigError("otlp_protocol", settings.protocol, "grpc or http/protobuf")


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
