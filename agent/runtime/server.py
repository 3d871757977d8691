"""The sidecar's one HTTP surface: /metrics, /healthz, /readyz, /status, /diagnose.

The server runs on its own thread and event loop (HttpThread): a scrape of /metrics is
answered there from the exposition's cached bytes (immutable, replaced whole by each render),
never waiting behind a render step, a state update or a rule evaluation on the main loop.
Every other handler reads or changes the sidecar's state, so it runs on the main loop, the
only one that touches it: the HTTP loop hands the request over and awaits the answer.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent import __version__
from agent.config import Config, redact_url
from agent.core import redact
from agent.core.facts import LogFacts
from agent.core.log import get as get_logger
from agent.core.samples import Labels
from agent.core.state import SeriesRing
from agent.diagnose import render
from agent.runtime.httpguard import GuardedSite
from collectors.dynamo_health import targets_from
from exporters.prometheus import negotiate

if TYPE_CHECKING:
    from agent.runtime.sidecar import Sidecar

# Typed app state: request.app[SIDECAR_KEY] is a Sidecar to the type checker. The type is named
# only in the annotation (runtime imports this module, so the class cannot be imported here).
SIDECAR_KEY: web.AppKey[Sidecar] = web.AppKey("sidecar")
log = get_logger("dynamo_sidecar.runtime")  # the name auth_token_file's warning always had


MAX_WINDOW = 7 * 86400.0


def parse_window(text: str) -> float:
    """`90`, `90s`, `10m`, `2h` -> seconds; more than zero and at most a week."""
    expected = "a duration from 1s to 7 days such as 90s, 10m or 2h"
    match = re.fullmatch(r"\s*(\d{1,9}(?:\.\d{1,6})?)\s*([smh]?)\s*", text[:40])
    if not match:
        raise ValueError(expected)
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not 1 <= seconds <= MAX_WINDOW:
        raise ValueError(expected)
    return seconds


def _sidecar(request: web.Request) -> Sidecar:
    return request.app[SIDECAR_KEY]


def _json(data: Any, status: int = 200) -> web.Response:
    # Every JSON answer goes through the redactor: no credential the sidecar was given or
    # found (a process's --api-key) is ever served.
    return web.Response(
        text=json.dumps(redact.value(data), indent=1, default=str),
        status=status,
        content_type="application/json",
    )


Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]


def on_main_loop(handler: Handler) -> Handler:
    """The handler run on the sidecar's main loop, whichever loop received the request (the
    request is only read there while this loop waits for the answer)."""

    async def run(request: web.Request) -> web.StreamResponse:
        main = _sidecar(request).loop
        if main is None or main is asyncio.get_running_loop():
            return await handler(request)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(handler(request), main))

    run.__name__ = handler.__name__
    return run


async def metrics(request: web.Request) -> web.StreamResponse:
    sidecar = _sidecar(request)
    main = sidecar.loop
    exporter = sidecar.exporter
    now = time.monotonic()
    # The very first scrape, or the first after a pause with no scraper (the render loop
    # renders ahead only for one): render now, on the main loop, where the state is.
    if not exporter.rendered or (exporter.behind and not exporter.scraped_within(now)):
        if main is not None and main is not asyncio.get_running_loop():
            return await on_main_loop(metrics)(request)
        exporter.render()
    exporter.note_scrape(now)
    fmt = negotiate(request.headers.get("Accept", ""))
    use_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
    if exporter.cached(fmt, use_gzip):
        body, content_type = exporter.body(fmt, use_gzip)
    else:
        # Encoding OpenMetrics or compressing takes milliseconds: not on the event loop, where
        # it would hold every other scrape and collector.
        body, content_type = await asyncio.to_thread(exporter.body, fmt, use_gzip)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    if use_gzip:
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept, Accept-Encoding"
    return response


async def healthz(request: web.Request) -> web.Response:
    """Answered on the HTTP thread, so a render step or a rule evaluation on the main loop
    never delays the kubelet's probe (1 s timeout by default). The main loop vouches for
    itself by ending collector runs: none for the scheduler's stall limit means it is stuck;
    a collector loop that ended has crashed. Both are reads of plain values (a float, tasks'
    done state) that the main loop writes."""
    scheduler = _sidecar(request).scheduler
    dead = scheduler.dead_tasks()
    stalled = scheduler.stalled_for()
    if dead or stalled:
        body: dict[str, Any] = {"status": "unhealthy", "dead_tasks": dead}
        if stalled:
            body["main_loop_stalled_seconds"] = round(stalled, 1)
        return _json(body, 503)
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sidecar = _sidecar(request)
    if sidecar.draining:
        return _json({"status": "draining"}, 503)
    if not sidecar.ready:
        return _json({"status": "starting", "detail": "first collection cycle not complete"}, 503)
    return _json({"status": "ready"})


async def canaryz(request: web.Request) -> web.Response:
    """Canary-based readiness for a Kubernetes probe that wants it: 503 while any model's
    canaries are failing; 200 otherwise (also before the first canary)."""
    canary = _sidecar(request).canary
    failing = canary.failing_models
    body = {"status": "failing" if failing else "ok", "failing_models": failing, "canary": canary.status()}
    return _json(body, 503 if failing else 200)


MAX_HISTORY_NAMES = 16
MAX_HISTORY_SERIES = 200  # per name
# One answer holds at most this many points and bytes (about 1.3 MB of JSON at 50,000
# points, ~0.15 s to compute); the rest follows with ?offset=next_offset. A series longer
# than max_points (at most 1,000) is downsampled to every k-th point, the newest kept.
MAX_HISTORY_POINTS = 50_000
MAX_HISTORY_BYTES = 4 * 2**20
MAX_SERIES_POINTS = 1000
# Answers computed at once (off the event loop, in a thread): more wait their turn, so a
# flood of queries holds one answer's memory, not one each, and one thread at most competes
# with the event loop for the interpreter.
HISTORY_AT_ONCE = 1
HISTORY_SLOTS = web.AppKey("history_slots", asyncio.Semaphore)


def _bounded_int(raw: str, low: int, high: int, default: int) -> int:
    if raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"a whole number from {low} to {high}")
    return int(raw)


def _downsample(points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """Every k-th point so that at most `most` remain, counted back from the newest (kept)."""
    if len(points) <= most:
        return points
    step = -(-len(points) // most)  # ceiling
    return points[::-1][::step][::-1]


def _encode_history(
    picked: list[tuple[str, Labels, SeriesRing]], since: float, most: int, offset: int
) -> tuple[dict[str, list[str]], int, int | None]:
    """(JSON text of each series by name, points, the offset to continue from or None): runs
    in a thread, on frozen copies of the rings, and stops at MAX_HISTORY_BYTES."""
    out: dict[str, list[str]] = {}
    size = points = 0
    for index, (name, labels, ring) in enumerate(picked):
        kept = _downsample(ring.points(since=since), most)
        text = json.dumps({"labels": dict(labels), "points": kept}, separators=(",", ":"), allow_nan=True)
        if size + len(text) > MAX_HISTORY_BYTES and index:
            return out, points, offset + index
        out.setdefault(name, []).append(text)
        size += len(text) + 1
        points += len(kept)
        # Hand the interpreter back after each series: the event loop (a collection cycle,
        # a probe) gets it at once instead of after the 5 ms switch interval, every time.
        time.sleep(0)
    return out, points, None


async def history(request: web.Request) -> web.Response:
    """The kept history of named series, for `dynamo-sidecar audit --live`'s capacity
    forecast: {"now", "window_seconds", "series": {name: [{"labels", "points": [[t, v]]}]},
    "points", "next_offset"}. Only series the sidecar keeps history for are there; bounded in
    names, series, points and bytes (the rest by ?offset=next_offset), computed in a thread
    on copies of the rings; from the pod's loopback or with the bearer token."""
    sidecar = _sidecar(request)
    if not _allowed(request, sidecar.config):
        return _json({"error": "GET /history is allowed from 127.0.0.1 / ::1 or with the bearer token"}, 403)
    try:
        most = _bounded_int(request.query.get("max_points", ""), 2, MAX_SERIES_POINTS, MAX_SERIES_POINTS)
        offset = _bounded_int(request.query.get("offset", ""), 0, MAX_HISTORY_NAMES * MAX_HISTORY_SERIES, 0)
        since = time.time() - parse_window(request.query["since"]) if "since" in request.query else -math.inf
    except ValueError as exc:
        return _json({"error": f"max_points, offset, since: {exc}"}, 400)
    state = sidecar.state
    names = list(dict.fromkeys(request.query.getall("name", [])))[:MAX_HISTORY_NAMES]
    # On the loop, without yielding: which series, and a frozen copy of each ring (a few
    # microseconds each), up to the points one answer may hold.
    picked: list[tuple[str, Labels, SeriesRing]] = []
    budget = MAX_HISTORY_POINTS
    position = 0
    next_offset: int | None = None
    for name in names:
        for labels, ring in list((state.history.get(name) or {}).items())[:MAX_HISTORY_SERIES]:
            position += 1
            if position <= offset:
                continue
            cost = min(len(ring), most)
            if picked and cost > budget:
                next_offset = position - 1
                break
            picked.append((name, labels, ring.copy()))
            budget -= cost
        if next_offset is not None:
            break
    async with request.app[HISTORY_SLOTS]:
        encoded, points, cut = await asyncio.to_thread(_encode_history, picked, since, most, offset)
    if cut is not None:
        next_offset = cut
    # The envelope around the series' texts, written by hand: the texts are not parsed again.
    parts = []
    for name in names:
        entries = encoded.get(name, [])
        parts.append(json.dumps(name) + ":[" + ",".join(entries) + "]")
    head = {
        "now": time.time(),
        "window_seconds": state.history_window,
        "points": points,
        "next_offset": next_offset,
        "limits": {
            "names": MAX_HISTORY_NAMES,
            "series_per_name": MAX_HISTORY_SERIES,
            "points": MAX_HISTORY_POINTS,
            "bytes": MAX_HISTORY_BYTES,
            "max_points": most,
        },
    }
    body = json.dumps(head)[:-1] + ',"series":{' + ",".join(parts) + "}}"
    return web.Response(text=body, content_type="application/json")


def tasks_by_coroutine(tasks: set[asyncio.Task[Any]]) -> dict[str, int]:
    """The tasks counted by what they run (the coroutine's qualified name): a count that grows
    says that something leaks, this says what."""
    coroutines = (task.get_coro() for task in tasks)
    return dict(sorted(Counter(getattr(c, "__qualname__", type(c).__name__) for c in coroutines).items()))


def status_report(sidecar: Sidecar) -> dict[str, Any]:
    """GET /status: what runs, how it is configured (redacted), and what it holds."""
    state = sidecar.state
    tasks = asyncio.all_tasks()
    return {
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - sidecar.started_monotonic, 3),
        "ready": sidecar.ready,
        "draining": sidecar.draining,
        "drain": sidecar.drain.summary.to_dict() if sidecar.drain.summary else None,
        "canary": sidecar.canary.status(),
        "quiet": sidecar.quiet.status(),
        "otlp": sidecar.telemetry.status(),
        "config": sidecar.config.redacted(),
        "targets": [{**t.__dict__, "base_url": redact_url(t.base_url)} for t in targets_from(sidecar.config)],
        "collectors": {name: status.to_dict() for name, status in state.collectors.items()},
        # For leak hunting: these must stay flat over days.
        "tasks": len(tasks),
        "tasks_by_coroutine": tasks_by_coroutine(tasks),
        "threads": threading.active_count(),
        "http_connections": sidecar.connections.active,
        "history": {
            "series": state.history_series,
            "ring_capacity": state.ring_capacity,
            "bytes": state.history_bytes,
            "refused": state.history_refused,
            "memory_budget_bytes": state.memory_budget,
            "memory_budget_used_bytes": state.budget_used(),
            "memory_limit_bytes": state.memory_limit,
            "events": len(state.events),
        },
    }


async def status(request: web.Request) -> web.Response:
    return _json(status_report(_sidecar(request)))


def _diagnose_format(request: web.Request) -> str:
    fmt = request.query.get("format", "")
    if fmt:
        return fmt
    accept = request.headers.get("Accept", "")
    if "text/html" in accept:
        return "html"
    if "text/plain" in accept and "application/json" not in accept:
        return "text"
    return "json"


async def diagnose_handler(request: web.Request) -> web.Response:
    sidecar = _sidecar(request)
    fmt = _diagnose_format(request)
    if fmt not in {"json", "text", "html"}:
        return _json({"error": "format must be json, text or html"}, 400)
    window = None
    if "since" in request.query:
        try:
            window = parse_window(request.query["since"])
        except ValueError as exc:
            return _json({"error": f"since: {exc}"}, 400)
    severity = request.query.get("severity", "info")
    if severity not in {"info", "warning", "critical"}:
        return _json({"error": "severity must be info, warning or critical"}, 400)
    refresh = render.DEFAULT_REFRESH
    if "refresh" in request.query:  # HTML: seconds between reloads, 0 for none
        raw = request.query["refresh"]
        if not raw.isdigit() or int(raw) > 3600:
            return _json({"error": "refresh must be a whole number of seconds from 0 to 3600"}, 400)
        refresh = int(raw)
    report = redact.value(sidecar.diagnose_report(window=window, min_severity=severity))
    if fmt == "text":
        return web.Response(text=render.text(report), content_type="text/plain")
    if fmt == "html":
        return web.Response(text=render.page(report, refresh), content_type="text/html")
    return _json(report)


async def request_lines(request: web.Request) -> web.Response:
    """The Dynamo log lines of one request, by the x-request-id it was sent with."""
    request_id = request.match_info["x_request_id"]
    sidecar = _sidecar(request)
    index = sidecar.state.facts(LogFacts).requests
    if index is None:
        return _json(
            {
                "error": "no log files configured (log_files / DYN_SIDECAR_LOG_FILES)",
                "x_request_id": request_id,
            },
            404,
        )
    lines = index.get(request_id)
    if not lines:
        return _json(
            {"x_request_id": request_id, "lines": [], "detail": "no log line seen with this x_request_id"},
            404,
        )
    return _json({"x_request_id": request_id, "lines": lines})


# The pod's own loopback only: 127.0.0.6 and the rest of 127/8 is where a service mesh's
# proxy (Istio) delivers traffic from outside the pod, so it proves nothing about the caller.
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def auth_token(config: Config) -> str:
    """The bearer token: auth_token, else auth_token_file's content (read on every request,
    so a rotated Secret applies without a restart); "" for none."""
    if config.auth_token:
        return config.auth_token
    if config.auth_token_file:
        try:
            with open(config.auth_token_file, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            log.warning("cannot read auth_token_file", path=config.auth_token_file, error=str(exc))
    return ""


def _allowed(request: web.Request, config: Config) -> bool:
    """Mutating endpoints: the bearer token, or (unless auth_require_token) a caller on the
    pod's own loopback address."""
    token = auth_token(config)
    header = request.headers.get("Authorization", "")
    if token and header and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
        return True
    return not config.auth_require_token and (request.remote or "") in LOOPBACK


async def drain(request: web.Request) -> web.Response:
    """For the Dynamo container's preStop hook: start a drain and block until it ends, or,
    with `?wait=false` (a worker's hook: Dynamo's own shutdown needs the grace period), answer
    202 at once while the drain follows Dynamo's shutdown."""
    sidecar = _sidecar(request)
    if not all(value.isascii() for value in request.headers.values()):
        return _json({"error": "header values must be ASCII"}, 400)
    if not _allowed(request, sidecar.config):
        return _json({"error": "POST /drain is allowed from 127.0.0.1 / ::1 or with the bearer token"}, 403)
    wait = request.query.get("wait", "true").strip().lower()
    if wait not in {"true", "false", "1", "0"}:
        return _json({"error": "wait must be true or false"}, 400)
    summary = sidecar.drain.trigger("http", follow=wait in {"false", "0"})
    if wait in {"false", "0"}:
        return _json(summary.to_dict(), 200 if summary.done else 202)
    await sidecar.drain.wait(sidecar.drain.timeout + sidecar.config.drain_interval + 5)
    return _json(summary.to_dict(), 200 if summary.done else 504)


async def index(request: web.Request) -> web.Response:
    links = [
        "/metrics",
        "/diagnose",
        "/diagnose?format=html",
        "/status",
        "/history?name=<series>[&since=10m&max_points=N&offset=N] (loopback or token)",
        "/healthz",
        "/readyz",
        "/canaryz",
        "POST /drain[?wait=false]",
    ]
    return web.Response(text="dynamo-sidecar\n" + "\n".join(links) + "\n", content_type="text/plain")


def make_app(sidecar: Sidecar) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SIDECAR_KEY] = sidecar
    app[HISTORY_SLOTS] = asyncio.Semaphore(HISTORY_AT_ONCE)
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)  # on the loop that received it: cached bytes
    app.router.add_get("/healthz", healthz)  # on the HTTP thread: see healthz()
    app.router.add_get("/readyz", on_main_loop(readyz))
    app.router.add_get("/status", on_main_loop(status))
    app.router.add_get("/history", on_main_loop(history))
    app.router.add_get("/canaryz", on_main_loop(canaryz))
    app.router.add_get("/diagnose", on_main_loop(diagnose_handler))
    app.router.add_post("/drain", on_main_loop(drain))
    app.router.add_get("/diagnose/request/{x_request_id}", on_main_loop(request_lines))
    return app


class HttpThread:
    """The sidecar's HTTP server on a thread of its own, with its own event loop. Started and
    stopped from the main loop; the connection limiter (agent/runtime/httpguard.py) lives on the
    HTTP loop, the main loop only reads its counters."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run a coroutine on the HTTP loop; awaitable from the main loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def start(self) -> int:
        """Listen; the port bound."""
        self._thread.start()
        try:
            return int(await self._call(self._setup()))
        except BaseException:
            await self.stop()
            raise

    async def _setup(self) -> int:
        sidecar = self.sidecar
        config = sidecar.config
        self._runner = web.AppRunner(
            make_app(sidecar),
            access_log=None,
            shutdown_timeout=1.0,  # part of the exit budget (see Sidecar.stop())
            # Idle keep-alive, and (aiohttp >= 3.14) a connection that never completes a
            # request: both closed after this long.
            keepalive_timeout=config.http_idle_timeout,
            max_line_size=8190,
            max_field_size=8190,
        )
        await self._runner.setup()
        site = GuardedSite(
            self._runner, config.listen_host, config.listen_port, sidecar.connections, reuse_address=True
        )
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Graceful: in-flight requests get the runner's shutdown timeout; then the loop ends."""
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await self._call(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
