"""Tails Dynamo's JSONL logs (DYN_LOGGING_JSONL=1) from files: a volume the Dynamo container
writes to, or the node's pod log directory (CRI `<time> stdout F <line>` or Docker json-file)
mounted read-only.

Follows rotation (keeps reading the old file to its end, then the new one) and truncation,
reads at most `max_bytes_per_cycle`, counts lines by level and target, keeps recent WARN/ERROR
lines aggregated by signature (so one noisy error cannot evict the rest) and an index from
`x_request_id` to that request's lines.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core import metrics as m
from agent.core.facts import LogFacts
from agent.core.samples import CollectResult, Event
from agent.core.textsafe import clean, parse_json
from collectors.base import Collector, CollectorSpec, register

if TYPE_CHECKING:
    from agent.config import Config

CRI_LINE = re.compile(r"^\S+ (?:stdout|stderr) ([FP]) (.*)$")
_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8,}\b|\d+(?:\.\d+)?")
# Lines Dynamo's runtime logs when it received SIGTERM: a port that closes after one of these
# was shut down on purpose. ("Signal handlers set up for graceful shutdown" is a start-up line.)
SHUTDOWN_MARKERS = (
    "Received shutdown signal",  # worker (python runtime)
    "frontend service entering draining stage",  # frontend
    "HTTP server shutdown requested",
    "Runtime shutdown initiated",
    "Phase 1: Cancelling endpoint shutdown token",  # both
)
KEPT_FIELDS = ("time", "level", "target", "message", "trace_id", "span_id", "x_request_id", "request_id")
MAX_LINE = 64 * 1024


@dataclass
class ErrorSignature:
    level: str
    target: str
    message: str  # the latest message with this signature
    count: int
    first_seen: float
    last_seen: float
    last_fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "target": self.target,
            "message": self.message,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "last": self.last_fields,
        }


class RequestIndex:
    """x_request_id -> its log lines; bounded in requests and in lines per request."""

    def __init__(self, max_requests: int = 2000, max_lines: int = 50, max_bytes: int = 8 << 20) -> None:
        self.max_requests = max_requests
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.bytes = 0  # approximate size of the kept lines
        self._lines: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()  # written from the reader thread, read from the loop

    def add(self, request_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._add(request_id, record)

    def _add(self, request_id: str, record: dict[str, Any]) -> None:
        lines = self._lines.get(request_id)
        if lines is None:
            lines = self._lines[request_id] = []
            self._sizes[request_id] = 0
        else:
            self._lines.move_to_end(request_id)
        if len(lines) < self.max_lines:
            size = 64 + sum(len(str(v)) for v in record.values())
            lines.append(record)
            self._sizes[request_id] += size
            self.bytes += size
        # Oldest requests go first, by count and by bytes.
        while len(self._lines) > self.max_requests or (self.bytes > self.max_bytes and len(self._lines) > 1):
            oldest, _ = self._lines.popitem(last=False)
            self.bytes -= self._sizes.pop(oldest, 0)

    def get(self, request_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._lines.get(request_id, []))

    def __len__(self) -> int:
        return len(self._lines)


class ErrorRing:
    """Recent WARN/ERROR lines aggregated by (level, target, message shape)."""

    def __init__(self, max_signatures: int = 200) -> None:
        self.max_signatures = max_signatures
        self._by_key: OrderedDict[tuple[str, str, str], ErrorSignature] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, record: dict[str, Any], seen: float) -> None:
        with self._lock:
            self._add(record, seen)

    def _add(self, record: dict[str, Any], seen: float) -> None:
        level, target, message = (
            record.get("level", ""),
            record.get("target", ""),
            str(record.get("message", "")),
        )
        key = (level, target, _VOLATILE.sub("#", message)[:300])
        signature = self._by_key.get(key)
        if signature is None:
            signature = self._by_key[key] = ErrorSignature(level, target, message[:1000], 0, seen, seen, {})
            while len(self._by_key) > self.max_signatures:
                self._by_key.popitem(last=False)  # the least recently seen signature goes
        self._by_key.move_to_end(key)
        signature.count += 1
        signature.last_seen = seen
        signature.message = message[:1000]
        signature.last_fields = {k: record[k] for k in KEPT_FIELDS if k in record}

    def recent(self, since: float = 0.0) -> list[ErrorSignature]:
        with self._lock:
            found = [s for s in self._by_key.values() if s.last_seen >= since]
        return sorted(found, key=lambda s: -s.last_seen)


@dataclass
class _Tail:
    path: str
    handle: Any = None
    inode: int = -1
    partial: bytes = b""
    cri_partial: str = ""


LEVELS = {"TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR"}
MAX_LINE_KEYS = 200  # (level, target) counters kept; the least recently seen are shed
MAX_INDEXED_BYTES = 8 << 20  # the per-request index, in bytes of kept lines


@dataclass
class LogStats:
    lines: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    shed_keys: int = 0  # (level, target) counters dropped to keep the cap
    errors: int = 0  # lines whose handling failed (counted and skipped, the rest kept)

    def count(self, key: tuple[str, str]) -> None:
        if key in self.lines:
            self.lines[key] += 1
            self.lines.move_to_end(key)
            return
        self.lines[key] = 1
        while len(self.lines) > MAX_LINE_KEYS:
            self.lines.popitem(last=False)
            self.shed_keys += 1

    skipped: int = 0
    truncated_lines: int = 0
    rotations: int = 0
    bytes_read: int = 0


def record_time(record: dict[str, Any], fallback: float) -> float:
    text = record.get("time")
    if isinstance(text, str):
        try:
            from datetime import datetime

            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return fallback


class DynamoLogCollector(Collector):
    name = "dynamo_logs"
    slows_when_quiet = False  # an error line is seen at the configured pace

    def __init__(
        self, paths: list[str], interval: float, timeout: float, max_bytes_per_cycle: int = 4 << 20
    ) -> None:
        super().__init__(interval, timeout)
        self.patterns = paths
        self.max_bytes_per_cycle = max_bytes_per_cycle
        self.tails: dict[str, _Tail] = {}
        self.stats = LogStats()
        self.errors = ErrorRing()
        self.shutdowns: list[Event] = []  # handed out as events with the next result
        self.requests = RequestIndex(max_bytes=MAX_INDEXED_BYTES)

    # --- reading -------------------------------------------------------------------------
    def _paths(self) -> list[str]:
        out: list[str] = []
        for pattern in self.patterns:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            out.extend(p for p in matches if os.path.isfile(p))
        return out[:64]

    def _open(self, tail: _Tail, from_end: bool) -> None:
        handle = open(tail.path, "rb")  # noqa: SIM115 - held across cycles on purpose
        stat = os.fstat(handle.fileno())
        if from_end:
            # First sight of a file: start near its end, never re-read a huge history.
            handle.seek(max(0, stat.st_size - self.max_bytes_per_cycle))
            if handle.tell():
                handle.readline()  # drop the partial first line
        tail.handle, tail.inode, tail.partial = handle, stat.st_ino, b""

    def _read_tail(self, tail: _Tail, budget: int, now: float) -> int:
        used = 0
        while used < budget:
            chunk = tail.handle.read(min(65536, budget - used))
            if not chunk:
                break
            used += len(chunk)
            data = tail.partial + chunk
            lines = data.split(b"\n")
            tail.partial = lines.pop()
            if len(tail.partial) > MAX_LINE:
                self.stats.truncated_lines += 1
                tail.partial = b""
            for raw in lines:
                try:
                    self._line(tail, raw.decode("utf-8", "replace"), now)
                except Exception:  # one bad line is that line's error; the rest are read
                    self.stats.errors += 1
        return used

    def _collect_sync(self) -> CollectResult:
        now = time.time()
        budget = self.max_bytes_per_cycle
        current = self._paths()
        for path in list(self.tails):
            if path not in current:
                tail = self.tails.pop(path)
                if tail.handle:
                    tail.handle.close()
        for path in current:
            known = self.tails.get(path)
            try:
                if known is None:
                    tail = self.tails[path] = _Tail(path)
                    self._open(tail, from_end=True)
                else:
                    tail = known
                budget -= self._read_tail(tail, budget, now)
                stat = os.stat(path)
                if stat.st_ino != tail.inode:
                    # Rotated: the old file was read to its end above; follow the new one.
                    tail.handle.close()
                    self.stats.rotations += 1
                    self._open(tail, from_end=False)
                    budget -= self._read_tail(tail, budget, now)
                elif stat.st_size < tail.handle.tell():
                    # Truncated in place (copytruncate): start again from the top.
                    tail.handle.seek(0)
                    tail.partial = b""
                    self.stats.rotations += 1
                    budget -= self._read_tail(tail, budget, now)
            except OSError:
                self.tails.pop(path, None)
            if budget <= 0:
                break
        self.stats.bytes_read += self.max_bytes_per_cycle - budget
        return self._result(now, current)

    def _shutdown(self, record: dict[str, Any], tail: _Tail, seen: float) -> None:
        message = str(record.get("message", ""))
        if any(marker in message for marker in SHUTDOWN_MARKERS):
            self.shutdowns.append(
                Event(
                    kind="dynamo_shutdown",
                    source=tail.path,
                    message=message[:300],
                    timestamp=seen,
                    attributes={"file": tail.path, "target": str(record.get("target", ""))[:120]},
                )
            )

    def _line(self, tail: _Tail, text: str, now: float) -> None:
        text = text.rstrip("\r")
        if not text.strip():
            return
        match = CRI_LINE.match(text)
        if match:
            if match.group(1) == "P":
                tail.cri_partial = (tail.cri_partial + match.group(2))[:MAX_LINE]
                return
            text, tail.cri_partial = tail.cri_partial + match.group(2), ""
        record, error = parse_json(text.encode("utf-8", "replace"), max_depth=8, text_limit=2000)
        if error:
            self.stats.skipped += 1
            return
        if isinstance(record, dict) and isinstance(record.get("log"), str) and "stream" in record:
            # Docker json-file wraps the line
            record, error = parse_json(record["log"].encode("utf-8", "replace"), max_depth=8, text_limit=2000)
            if error:
                self.stats.skipped += 1
                return
        if not isinstance(record, dict) or "message" not in record:
            self.stats.skipped += 1
            return
        level = str(record.get("level", "")).upper()
        level = level if level in LEVELS else "OTHER"  # a label value: from a known set only
        target = clean(record.get("target", ""), 120)
        record["level"] = level
        self.stats.count((level, target))
        seen = record_time(record, now)
        if level in {"WARN", "WARNING", "ERROR"}:
            self.errors.add(record, seen)
        self._shutdown(record, tail, seen)
        request_id = record.get("x_request_id")
        if isinstance(request_id, str) and request_id:
            self.requests.add(request_id[:200], {k: record[k] for k in KEPT_FIELDS if k in record})

    def _result(self, now: float, files: list[str]) -> CollectResult:
        result = CollectResult()
        result.events.extend(self.shutdowns)
        self.shutdowns.clear()
        for (level, target), count in self.stats.lines.items():
            result.add(m.LOG_LINES_TOTAL.sample(count, level=level, target=target))
        result.add(m.LOG_LINES_SKIPPED_TOTAL.sample(self.stats.skipped))
        result.add(m.LOG_LINE_ERRORS_TOTAL.sample(self.stats.errors))
        result.add(m.LOG_COUNTERS_SHED_TOTAL.sample(self.stats.shed_keys))
        result.add(m.LOG_REQUEST_INDEX_BYTES.sample(self.requests.bytes))
        result.add(m.LOG_LINES_TRUNCATED_TOTAL.sample(self.stats.truncated_lines))
        result.add(m.LOG_ROTATIONS_TOTAL.sample(self.stats.rotations))
        result.add(m.LOG_BYTES_READ_TOTAL.sample(self.stats.bytes_read))
        result.add(m.LOG_FILES.sample(len(files)))
        result.facts = LogFacts(files, self.patterns, self.errors, self.requests, now)
        # No byte read and the same files: nothing new for the rules.
        result.digest = (self.stats.bytes_read, self.stats.rotations, self.stats.errors, tuple(files))
        return result

    async def collect(self) -> CollectResult:
        return await asyncio.to_thread(self._collect_sync)

    async def close(self) -> None:
        for tail in self.tails.values():
            if tail.handle:
                tail.handle.close()
        self.tails.clear()


def _build(config: Config) -> DynamoLogCollector:
    return DynamoLogCollector(
        config.log_files, config.dynamo_interval, config.collector_timeout, config.log_max_bytes_per_cycle
    )


register(
    CollectorSpec(
        "dynamo_logs",
        order=70,
        enabled=lambda config: bool(config.log_files),
        interval=lambda config: config.dynamo_interval,
        factory=lambda config, hooks: _build(config),
    )
)
