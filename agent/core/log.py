"""structlog set-up. JSON lines use Dynamo's JSONL field names (time, level, target, message,
plus flat fields), so one log pipeline parses the sidecar and Dynamo alike; a TTY gets the
human console format."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import structlog

from agent.core import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Dynamo (Rust tracing) spells levels like this.
_DYNAMO_LEVEL = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARN",
    "warn": "WARN",
    "error": "ERROR",
    "critical": "ERROR",
    "exception": "ERROR",
}


def _dynamo_fields(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "level": _DYNAMO_LEVEL.get(method, method.upper()),
        "target": event.pop("target", None) or "dynamo_sidecar",
        "message": event.pop("event", ""),
    }
    event.pop("level", None)
    out.update(event)
    return out


def _redacted(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Every field of every line through the redactor (agent.core.redact): a URL with a password,
    an exporter's error quoting its endpoint, a process's command line."""
    return redact.value(event)  # type: ignore[no-any-return]


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    processors: list[Any] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    if use_console:
        processors += [
            _redacted,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    else:
        processors += [
            structlog.processors.format_exc_info,
            _redacted,
            _dynamo_fields,
            structlog.processors.JSONRenderer(separators=(",", ":")),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiohttp, asyncio, OpenTelemetry) log through the standard library: their
    # records, tracebacks included, become the same one-line records, rate-limited.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LibraryHandler)]:
        root.removeHandler(handler)
    root.addHandler(LibraryHandler())
    root.setLevel(logging.WARNING)
    logging.raiseExceptions = False  # a failing handler must not print tracebacks to stderr


class LibraryHandler(logging.Handler):
    """Standard-library log records as structlog lines: one line each (a traceback becomes
    the `exception` field), at most RATE_LIMIT a minute per logger and message, the rest
    counted and reported once the minute is over. A flood (a socket error on every accept
    under fd exhaustion) cannot fill the disk."""

    RATE_LIMIT = 5
    PERIOD = 60.0

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._windows: dict[tuple[str, str], list[float]] = {}  # key -> [window start, count]
        self.suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = (record.name, str(record.msg)[:200])
            now = record.created
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.PERIOD:
                if window is not None and window[1] > self.RATE_LIMIT:
                    get(record.name).warning(
                        "log lines suppressed",
                        logger=record.name,
                        suppressed=int(window[1] - self.RATE_LIMIT),
                    )
                if len(self._windows) > 1000:
                    self._windows.clear()
                window = self._windows[key] = [now, 0]
            window[1] += 1
            if window[1] > self.RATE_LIMIT:
                self.suppressed += 1
                return
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                # Redacted before it is cut: a cut can leave half a URL the patterns miss.
                exception = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
                fields["exception"] = redact.text(exception)[:500]
            method = {logging.ERROR: "error", logging.CRITICAL: "error"}.get(record.levelno, "warning")
            getattr(get(record.name), method)(redact.text(record.getMessage())[:1000], **fields)
        except Exception:  # logging must never raise into the code that logged
            self.handleError(record)


def get(name: str) -> Any:
    # Lazy: loggers made at import time still follow a configure() that comes later.
    return structlog.get_logger(target=name)
