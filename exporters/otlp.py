"""OTLP traces: canary requests, drains, and events (health transitions, restarts, XIDs).

Configured like Dynamo: the `otlp_endpoint`, `otlp_protocol` and `otlp_timeout` keys default
to the OTEL_EXPORTER_OTLP_* variables read by Dynamo's rules (agent/config.py says which, with
the source), and headers, compression, TLS files and insecure come from the same variables.
grpc (Dynamo's default) and http/protobuf are supported; with no endpoint, tracing is off and
costs nothing. The span queue is bounded and exported from a background thread: a receiver
that is down or slow costs counted drops (`dynamo_sidecar_otlp_spans_dropped_total`), never
memory growth or a blocked event loop. Each transport is imported only when selected: a
running sidecar has 55 MiB resident with traces off, 62.5 MiB over OTLP/HTTP (requests) and
72 MiB over gRPC (grpcio, 8 more OS threads); bench/otlp_cost.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from agent import __version__
from agent.config import ConfigError, redact_url
from agent.core import metrics as m
from agent.core import redact
from agent.core.aio import wait_event
from agent.core.log import get as get_logger
from agent.core.samples import Event, Sample
from exporters.otlp_settings import OtlpSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from agent.config import Config
    from exporters.otlp_sdk import BoundedBatchProcessor

log = get_logger("dynamo_sidecar.otlp")


# The SDK (TracerProvider, the batch processor, the exporters) is imported only when traces
# are on: ~90 ms and ~3 MB at start for a sidecar that exports nothing (bench/startup.py).
_SDK_NAMES = {"build_resource", "make_exporter", "BoundedBatchProcessor"}


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from exporters import otlp_sdk

        return getattr(otlp_sdk, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Telemetry:
    """The sidecar's tracer. Disabled (a no-op tracer) when no OTLP endpoint is set."""

    def __init__(
        self,
        settings: OtlpSettings | None = None,
        exporter: SpanExporter | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.settings = settings or OtlpSettings()
        self.endpoint = self.settings.endpoint
        self.protocol = self.settings.protocol
        self.processor: BoundedBatchProcessor | None = None
        self.provider: TracerProvider | None = None
        self.error = ""
        if exporter is None and not self.endpoint:
            self.tracer: Tracer = trace.NoOpTracer()
            return
        from opentelemetry.sdk.trace import TracerProvider

        from exporters.otlp_sdk import BoundedBatchProcessor, build_resource, make_exporter

        try:
            exporter = exporter or make_exporter(self.settings)
        except (ConfigError, ImportError, ValueError, OSError) as exc:
            self.error = str(exc)
            log.error("OTLP exporter not started", error=self.error)
            self.tracer = trace.NoOpTracer()
            return
        self.processor = BoundedBatchProcessor(exporter)
        self.provider = TracerProvider(resource=build_resource(environ))
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("dynamo_sidecar", __version__)
        log.info(
            "OTLP traces on",
            endpoint=redact_url(self.endpoint),
            protocol=self.protocol,
            timeout=self.settings.timeout,
            headers=sorted(self.settings.options.headers),
        )

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> Telemetry:
        telemetry = cls(OtlpSettings.from_config(config, environ), environ=environ)
        if not config.otlp_endpoint:
            log.info(
                "OTLP traces off",
                hint="Dynamo's setup turns them on: OTEL_EXPORT_ENABLED=true and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT "
                "in main's env (inject copies it), or set otlp_endpoint",
            )
        return telemetry

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
        span.add_event(event.kind, {"message": redact.text(event.message), **attributes}, timestamp=start)
        if event.kind in {"health_transition"} and event.attributes.get("to_outcome") not in {None, "ok"}:
            span.set_status(Status(StatusCode.ERROR, redact.text(event.message)))
        span.end(end_time=start)

    def record_span(
        self, name: str, started_at: float, ended_at: float, attributes: dict[str, Any], error: str = ""
    ) -> None:
        """A finished piece of work as one span (a drain); `error` marks it failed."""
        if not self.enabled:
            return
        span = self.tracer.start_span(name, start_time=int(started_at * 1e9), attributes=attributes)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=int(ended_at * 1e9))

    def flush(self, timeout: float) -> bool:
        if self.processor is None:
            return True
        return self.processor.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        if self.processor is not None:
            self.processor.shutdown()

    async def shut_down_within(self, timeout: float) -> None:
        """Shut the exporter down at exit, waiting at most `timeout`. An OTLP receiver that
        is down can hold the shutdown in retries for many seconds: it runs on a daemon
        thread, left behind when it takes longer."""
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def shut_down() -> None:
            try:
                self.shutdown()
            except Exception as exc:  # an exporter failing at exit is logged, not raised
                log.warning("OTLP exporter shutdown failed", error=repr(exc)[:300])
            with contextlib.suppress(RuntimeError):  # the loop may be closed by then
                loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shut_down, name="otlp-shutdown", daemon=True).start()
        if not await wait_event(done, timeout):
            log.warning("OTLP exporter shutdown still running; not waiting for it", timeout=timeout)

    def samples(self) -> list[Sample]:
        out = [
            m.OTLP_ENABLED.sample(
                1 if self.enabled else 0,
                protocol=self.protocol if self.enabled else "none",
            )
        ]
        if self.processor is None:
            return out
        processor = self.processor
        out.append(m.OTLP_SPANS_EXPORTED_TOTAL.sample(processor.exported))
        for reason, count in processor.dropped.items():
            out.append(m.OTLP_SPANS_DROPPED_TOTAL.sample(count, reason=reason))
        out.append(m.OTLP_EXPORT_FAILURES_TOTAL.sample(processor.failures))
        out.append(m.OTLP_QUEUE_SPANS.sample(len(processor._queue)))
        return out

    def status(self) -> dict[str, Any]:
        processor = self.processor
        return {
            "enabled": self.enabled,
            "endpoint": redact_url(self.endpoint),
            "protocol": self.protocol,
            "timeout": self.settings.timeout,
            **self.settings.options.redacted(),
            "error": self.error,
            "exported": processor.exported if processor else 0,
            "dropped": dict(processor.dropped) if processor else {},
            "failures": processor.failures if processor else 0,
            "last_error": processor.last_error if processor else "",
            "last_success": processor.last_success if processor else 0.0,
        }


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes leave the pod: redacted like every other output (agent.core.redact)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, str):
            out[f"dynamo.{key}"] = redact.value({key: value})[key]
        elif isinstance(value, bool | int | float):
            out[f"dynamo.{key}"] = value
        elif value is not None:
            out[f"dynamo.{key}"] = redact.text(str(value))[:500]
    return out


def traceparent_for(span: Any) -> str:
    """The W3C traceparent of a span; a fresh random one when tracing is off, so the
    request can still be found by trace id in Dynamo's logs."""
    context = span.get_span_context() if span is not None else None
    if context is not None and context.is_valid:
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
