"""structlog set-up. JSON lines use Dynamo's JSONL field names (time, level, target, message,
plus flat fields), so one log pipeline parses the sidecar and Dynamo alike; a TTY gets the
human console format."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import structlog

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


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and hasattr(stream, "isatty") and stream.isatty())
    processors: list[Any] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    if use_console:
        processors += [
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    else:
        processors += [
            structlog.processors.format_exc_info,
            _dynamo_fields,
            structlog.processors.JSONRenderer(separators=(",", ":")),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    # Lazy: loggers made at import time still follow a configure() that comes later.
    return structlog.get_logger(target=name)
