"""`dynamo-sidecar webhook`: a mutating admission webhook over TLS that adds the sidecar to
Dynamo pods as they are created (`POST /mutate`, `admission.k8s.io/v1` AdmissionReview in, a
JSONPatch out, through the same pure `inject()` as `dynamo-sidecar inject`).

It never blocks a pod: whatever goes wrong (a malformed or too large review, a body that
does not arrive in time, an internal error, no room to work) is answered HTTP 200,
`allowed: true`, with a warning and no patch, and is logged and counted by outcome. The
answer carries the request's uid whenever one could be read, even from the head of a body
too large to parse, so the API server takes it as an answer and not as a webhook failure.
Pods in kube-system (and kube-public, kube-node-lease) are never injected, whatever the
namespace selector lets through.

What one review may cost is bounded: the body is read whole up to MAX_REVIEW_BYTES (the API
server sends at most ~3 MiB of object), within `read_timeout`; bodies held at once share a
byte budget; parsing, `inject()` and the JSON diff run on worker threads, reviews over
SMALL_REVIEW_BYTES on a lane of their own, so a large review never makes a small one wait
behind it. Connections go through agent/runtime/httpguard.py (cap, share per peer, idle ones shed
first) and the certificate is reloaded when its files change (agent/tools/certreload.py).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import re
import signal
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jsonpatch
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from agent import __version__
from agent.core.log import get as get_logger
from agent.runtime.httpguard import ConnectionLimiter, GuardedSite
from agent.tools.certreload import CertificateReloader, server_context
from agent.tools.inject import InjectError, Options, inject

log = get_logger("dynamo_sidecar.webhook")

# The API server refuses request bodies over 3 MiB, so no object it reviews is larger; the
# review around it adds the request's metadata. Past this a review is answered unread.
MAX_REVIEW_BYTES = 4 << 20
# Reviews up to this size (a pod with a few hundred env vars is ~100 KB) take the small lane.
SMALL_REVIEW_BYTES = 256 << 10
# Bodies held in memory at once (being read, waiting for a thread, being worked on): with
# parsing, an object costs several times its size, so this bounds the webhook's peak.
BODY_BUDGET_BYTES = 16 << 20
# Namespaces never injected, even if the webhook is called for them.
PROTECTED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
# Outcomes: patched | unchanged | skipped (protected namespace) | error (not a review, or
# inject() refused it) | too_large | timeout (body or work past read_timeout) | busy (no budget).
OUTCOMES = ("patched", "unchanged", "skipped", "error", "too_large", "timeout", "busy")
UNANSWERED = ("error", "too_large", "timeout", "busy")  # pods admitted without a sidecar
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))

# The API server writes the request's uid first: `{"kind":..,"apiVersion":..,"request":{"uid":`.
_HEAD_UID = re.compile(rb'"request"\s*:\s*\{\s*"uid"\s*:\s*"([0-9A-Za-z._:-]{1,128})"')
_HEAD_BYTES = 64 << 10

COUNTS_KEY = web.AppKey("counts", dict)
OPTIONS_KEY = web.AppKey("options", Options)


def review_response(uid: str, patch: list[dict[str, Any]] | None, warnings: list[str]) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = [w[:200] for w in warnings[:5]]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def uid_of(review: Any) -> str:
    request = review.get("request") if isinstance(review, dict) else None
    uid = request.get("uid", "") if isinstance(request, dict) else ""
    return uid if isinstance(uid, str) else ""


def uid_from_head(head: bytes) -> str:
    """The request's uid from the first bytes of a review that will not be parsed whole."""
    match = _HEAD_UID.search(head[:_HEAD_BYTES])
    return match.group(1).decode() if match else ""


def _namespace_of(request: dict[str, Any]) -> str:
    namespace = request.get("namespace")
    if not namespace:
        metadata = request["object"].get("metadata")
        namespace = metadata.get("namespace") if isinstance(metadata, dict) else ""
    return namespace if isinstance(namespace, str) else ""


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def json_patch(source: Any, target: Any, path: str = "") -> list[dict[str, Any]]:
    """An RFC 6902 patch from `source` to `target`. jsonpatch diffs every list it meets
    item by item, half a second for a 3 MB pod whose env lists inject() never touches:
    subtrees that compare equal (a C-speed ==) are skipped here, items appended to a list
    become `add .../-`, and only what is left, small, goes to jsonpatch."""
    if source == target:
        return []
    if isinstance(source, dict) and isinstance(target, dict):
        ops: list[dict[str, Any]] = [
            {"op": "remove", "path": _pointer(path, key)} for key in source if key not in target
        ]
        for key, value in target.items():
            if key not in source:
                ops.append({"op": "add", "path": _pointer(path, key), "value": value})
            else:
                ops += json_patch(source[key], value, _pointer(path, key))
        return ops
    if isinstance(source, list) and isinstance(target, list):
        if len(target) > len(source) and target[: len(source)] == source:
            return [{"op": "add", "path": f"{path}/-", "value": value} for value in target[len(source) :]]
        if len(source) == len(target):  # changed in place: diff the items that differ
            ops = []
            for index, (before, after) in enumerate(zip(source, target, strict=True)):
                ops += json_patch(before, after, _pointer(path, index))
            return ops
        return [
            {**op, "path": path + op["path"], **({"from": path + op["from"]} if "from" in op else {})}
            for op in jsonpatch.make_patch(source, target).patch
        ]
    return [{"op": "replace", "path": path or "", "value": target}]


def mutate_review(review: Any, options: Options) -> tuple[dict[str, Any], str]:
    """(the AdmissionReview answer, outcome) for one parsed review."""
    uid = uid_of(review)
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("object"), dict):
        return review_response(
            uid, None, ["dynamo-sidecar: not an AdmissionReview with an object; not injected"]
        ), "error"
    namespace = _namespace_of(request)
    if namespace in PROTECTED_NAMESPACES:
        return review_response(uid, None, [f"dynamo-sidecar: never injects into {namespace}"]), "skipped"
    original = request["object"]
    try:
        mutated, _ = inject(original, options)
    except InjectError as exc:
        return review_response(uid, None, [f"dynamo-sidecar: not injected: {exc}"]), "error"
    patch = json_patch(original, mutated)
    return review_response(uid, patch, []), ("patched" if patch else "unchanged")


def answer_body(body: bytes, options: Options) -> tuple[bytes, str, str]:
    """(the serialized answer, outcome, uid) for a whole review body. Runs on a worker
    thread: parsing a large review and diffing it are the expensive part."""
    try:
        review = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        uid = uid_from_head(body)
        log.warning("admission review is not JSON", uid=uid, error=str(exc)[:200])
        answer = review_response(uid, None, ["dynamo-sidecar: review is not JSON; not injected"])
        return json.dumps(answer).encode(), "error", uid
    uid = uid_of(review)
    try:
        answer, outcome = mutate_review(review, options)
    except Exception as exc:  # never block a Dynamo pod on our error
        log.warning("admission review not handled", uid=uid, error=f"{type(exc).__name__}: {exc}"[:300])
        answer = review_response(uid, None, ["dynamo-sidecar: review not understood; not injected"])
        outcome = "error"
    return json.dumps(answer).encode(), outcome, uid


class ByteBudget:
    """Bytes of review bodies held at once; a review waits its turn for room (first come,
    first served) for at most `timeout`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int, timeout: float) -> bool:
        size = min(size, self.total)
        if not self._waiters and self.used + size <= self.total:
            self.used += size
            return True
        entry = (size, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(entry[1])
        except TimeoutError:
            self._leave(entry)
            return False
        except asyncio.CancelledError:
            self._leave(entry)
            raise
        return True

    def _leave(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        size, granted = entry
        if granted.done():  # granted as the wait ended: give it back
            self.release(size)
        else:
            granted.cancel()
            self._waiters.remove(entry)
            self._wake()

    def release(self, size: int) -> None:
        self.used -= min(size, self.total)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            size, granted = self._waiters.popleft()
            self.used += size
            granted.set_result(None)


class _TooLarge(Exception):
    def __init__(self, head: bytes) -> None:
        self.head = head


async def read_review(request: web.Request, limit: int, chunks: list[bytes]) -> bytes:
    """The whole body, however many reads it takes (what has arrived so far stays in
    `chunks`, for the uid if it never completes); _TooLarge (with the head) past `limit`."""
    declared = request.content_length
    size = 0
    async for chunk in request.content.iter_chunked(64 << 10):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or (declared is not None and declared > limit and size >= _HEAD_BYTES):
            raise _TooLarge(b"".join(chunks)[:_HEAD_BYTES])
    return b"".join(chunks)


@dataclass
class WebhookSettings:
    options: Options  # what the sidecar gets (its image has no default: see agent/tools/inject.py)
    cert_file: str = ""
    key_file: str = ""
    host: str = "0.0.0.0"
    port: int = 9443
    metrics_port: int | None = None  # plain-HTTP /metrics and /healthz, for Prometheus
    max_connections: int = 256
    idle_timeout: float = 10.0
    read_timeout: float = 10.0  # a review's body, and its work, must be done within this
    budget_wait: float = 2.0  # how long a review waits for room in the body budget
    reload_interval: float = 5.0
    max_review_bytes: int = MAX_REVIEW_BYTES
    body_budget_bytes: int = BODY_BUDGET_BYTES


class _StateCollector:
    """Connection and certificate state, read when /metrics is asked."""

    def __init__(self, webhook: Webhook) -> None:
        self.webhook = webhook

    def collect(self) -> Iterator[Metric]:
        hook = self.webhook
        prefix = "dynamo_sidecar_webhook_"
        build = GaugeMetricFamily(
            prefix + "build_info", "Always 1; the webhook's version.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
        reviews = CounterMetricFamily(
            prefix + "reviews",
            "Admission reviews answered, by outcome: patched, unchanged, skipped (protected namespace), "
            "error, too_large, timeout, busy (the last four admit the pod without the sidecar).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            reviews.add_metric([outcome], hook.counts.get(outcome, 0))
        yield reviews
        cumulative, buckets = 0, []
        for bound, count in zip(DURATION_BUCKETS, hook.duration_counts, strict=True):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        yield HistogramMetricFamily(
            prefix + "review_duration_seconds",
            "Time from a review's request to its answer.",
            buckets=buckets,
            sum_value=hook.duration_sum,
        )
        yield from self._connections(prefix)
        reloader = hook.certificates
        if reloader is not None:
            if reloader.expiry is not None:
                yield GaugeMetricFamily(
                    prefix + "certificate_expiry_timestamp_seconds",
                    "Unix time the certificate being served expires.",
                    value=reloader.expiry,
                )
            yield GaugeMetricFamily(
                prefix + "certificate_loaded_timestamp_seconds",
                "Unix time the certificate being served was loaded.",
                value=reloader.loaded_at,
            )
            yield CounterMetricFamily(
                prefix + "certificate_reloads",
                "Times changed certificate files were loaded and served.",
                value=reloader.reloads,
            )
            yield CounterMetricFamily(
                prefix + "certificate_reload_errors",
                "Changed certificate files that did not load (the previous pair is still served).",
                value=reloader.errors,
            )

    def _connections(self, prefix: str) -> Iterator[Metric]:
        open_ = GaugeMetricFamily(
            prefix + "connections", "Open connections, by listener.", labels=["listener"]
        )
        refused = CounterMetricFamily(
            prefix + "connections_refused",
            "Connections closed at once: the cap or the peer's share was reached and none was idle.",
            labels=["listener"],
        )
        shed = CounterMetricFamily(
            prefix + "connections_shed",
            "Idle connections closed to make room for a new one.",
            labels=["listener"],
        )
        for listener, limiter in self.webhook.limiters.items():
            open_.add_metric([listener], limiter.active)
            refused.add_metric([listener], limiter.refused)
            shed.add_metric([listener], limiter.shed)
        yield open_
        yield refused
        yield shed


class Webhook:
    """The webhook's state: options, limits, worker lanes, counters, certificate."""

    def __init__(self, settings: WebhookSettings, certificates: CertificateReloader | None = None) -> None:
        self.settings = settings
        self.options = settings.options
        self.certificates = certificates
        self.limiters: dict[str, ConnectionLimiter] = {}
        self.small_lane = ThreadPoolExecutor(max_workers=2, thread_name_prefix="review-small")
        self.large_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-large")
        self._budget: ByteBudget | None = None
        self.counts: dict[str, int] = {}
        self.duration_counts = [0] * len(DURATION_BUCKETS)
        self.duration_sum = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(self))  # type: ignore[arg-type]

    @property
    def budget(self) -> ByteBudget:
        if self._budget is None:  # made on the loop that serves
            self._budget = ByteBudget(self.settings.body_budget_bytes)
        return self._budget

    def count(self, outcome: str, started: float, uid: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        seconds = time.monotonic() - started
        self.duration_sum += seconds
        self.duration_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        if outcome in UNANSWERED:
            log.warning("admission review answered without a patch", uid=uid, outcome=outcome)

    async def review(self, request: web.Request) -> tuple[bytes, str, str]:
        settings = self.settings
        deadline = time.monotonic() + settings.read_timeout
        declared = request.content_length
        reserved = min(
            declared if declared is not None else settings.max_review_bytes, settings.max_review_bytes
        )
        reserved = max(reserved, 1)
        if not await self.budget.acquire(reserved, min(settings.budget_wait, settings.read_timeout)):
            return self._unpatched("", "busy", "dynamo-sidecar: webhook busy; not injected")
        released = False
        arrived: list[bytes] = []
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    body = await read_review(request, settings.max_review_bytes, arrived)
            except _TooLarge as exc:
                return self._unpatched(
                    uid_from_head(exc.head),
                    "too_large",
                    f"dynamo-sidecar: review over {settings.max_review_bytes >> 20} MiB; not injected",
                )
            except TimeoutError:
                head = b"".join(arrived)[:_HEAD_BYTES]
                return self._unpatched(
                    uid_from_head(head), "timeout", "dynamo-sidecar: review body too slow; not injected"
                )
            except (OSError, HttpProcessingError) as exc:  # the client went away, or a bad chunked body
                head = b"".join(arrived)[:_HEAD_BYTES]
                log.info(
                    "admission review body not received whole", error=f"{type(exc).__name__}: {exc}"[:200]
                )
                return self._unpatched(
                    uid_from_head(head),
                    "error",
                    "dynamo-sidecar: review body not received whole; not injected",
                )
            lane = self.small_lane if len(body) <= SMALL_REVIEW_BYTES else self.large_lane
            future = asyncio.get_running_loop().run_in_executor(lane, answer_body, body, self.options)
            # The budget is given back when the work is done, not when we stop waiting for it.
            future.add_done_callback(lambda _: self.budget.release(reserved))
            released = True
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                return self._unpatched(
                    uid_from_head(body), "timeout", "dynamo-sidecar: review took too long; not injected"
                )
        finally:
            if not released:
                self.budget.release(reserved)

    @staticmethod
    def _unpatched(uid: str, outcome: str, warning: str) -> tuple[bytes, str, str]:
        return json.dumps(review_response(uid, None, [warning])).encode(), outcome, uid

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self.small_lane.shutdown(wait=False, cancel_futures=True)
        self.large_lane.shutdown(wait=False, cancel_futures=True)


WEBHOOK_KEY = web.AppKey("webhook", Webhook)


async def mutate(request: web.Request) -> web.Response:
    hook = request.app[WEBHOOK_KEY]
    started = time.monotonic()
    body, outcome, uid = await hook.review(request)
    hook.count(outcome, started, uid)
    return web.Response(body=body, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[WEBHOOK_KEY].metrics_text()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def make_app(options: Options | None = None, webhook: Webhook | None = None) -> web.Application:
    """The HTTPS app: /mutate, /healthz, /metrics."""
    if webhook is None:
        if options is None:
            raise TypeError("make_app needs the injection options or a Webhook")
        webhook = Webhook(WebhookSettings(options=options))
    hook = webhook
    app = web.Application(client_max_size=hook.settings.max_review_bytes + 1024)
    app[WEBHOOK_KEY] = hook
    app[COUNTS_KEY] = hook.counts
    app[OPTIONS_KEY] = hook.options
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def make_metrics_app(webhook: Webhook) -> web.Application:
    """The plain-HTTP app for Prometheus: /metrics and /healthz only."""
    app = web.Application(client_max_size=4096)
    app[WEBHOOK_KEY] = webhook
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def tls_context(cert_file: str, key_file: str) -> Any:
    return server_context(cert_file, key_file)


class WebhookServer:
    """The webhook's listeners, started and stopped on the running loop."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.certificates = CertificateReloader(
            settings.cert_file, settings.key_file, settings.reload_interval
        )
        self.webhook = Webhook(settings, self.certificates)
        self.runners: list[web.AppRunner] = []
        self.port = 0
        self.metrics_port = 0

    async def _listen(
        self, app: web.Application, port: int, name: str, limit: int, tls: bool
    ) -> tuple[web.AppRunner, int]:
        settings = self.settings
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=settings.idle_timeout,
            max_line_size=8190,
            max_field_size=8190,
        )
        await runner.setup()
        limiter = ConnectionLimiter(limit)
        self.webhook.limiters[name] = limiter
        site = GuardedSite(
            runner,
            settings.host,
            port,
            limiter,
            tls=self.certificates.current if tls else None,
            handshake_timeout=settings.idle_timeout,
            reuse_address=True,
        )
        await site.start()
        self.runners.append(runner)
        return runner, int(runner.addresses[-1][1])

    async def start(self) -> None:
        settings = self.settings
        _, self.port = await self._listen(
            make_app(webhook=self.webhook), settings.port, "https", settings.max_connections, tls=True
        )
        if settings.metrics_port is not None:
            _, self.metrics_port = await self._listen(
                make_metrics_app(self.webhook), settings.metrics_port, "metrics", 64, tls=False
            )
        self.certificates.start()
        log.info(
            "webhook listening",
            host=settings.host,
            port=self.port,
            metrics_port=self.metrics_port or None,
            certificate_not_after=self.certificates.expiry,
            max_connections=settings.max_connections,
        )

    async def stop(self) -> None:
        await self.certificates.stop()
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
        self.webhook.close()


async def serve(settings: WebhookSettings) -> None:
    """Run until SIGTERM or SIGINT."""
    server = WebhookServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        log.info("webhook stopping")
        await server.stop()
