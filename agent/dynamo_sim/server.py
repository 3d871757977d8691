"""A simulated Dynamo 1.6.1 frontend and worker system status server.

Every body is built from bytes recorded from a real Dynamo (`recorded/`); only the values
that traffic changes (ids, timestamps, counters, uptime) differ. Fault knobs let tests and
`demo` make it misbehave the ways a real Dynamo does: hang, slow, 5xx, malformed JSON,
worker gone, stale instance, worker notready, queue growth, TTFT regression, draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import Any

from aiohttp import web

from agent.dynamo_sim.promtext import PromTemplate

MODEL = "tiny"


def recorded(name: str) -> str:
    return resources.files("agent.dynamo_sim").joinpath("recorded", name).read_text(encoding="utf-8")


def recorded_json(name: str) -> Any:
    return json.loads(recorded(name))


def compact(obj: Any) -> str:
    """Dynamo (serde_json) writes compact JSON with no spaces."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Faults:
    """Knobs, all off by default. Numbers are seconds unless named otherwise."""

    frontend_hang: bool = False  # every frontend endpoint accepts and never answers
    frontend_slow: float = 0.0  # added delay on every frontend response
    frontend_5xx: bool = False  # /health and /live answer 500
    frontend_malformed: bool = False  # /health and /metrics bodies are garbage
    frontend_draining: bool = False  # as after SIGTERM: 503 shutting_down / not_ready
    worker_hang: bool = False  # the system port accepts and never answers (SIGSTOP)
    worker_slow: float = 0.0
    worker_notready: bool = False  # 503 notready while every endpoint says ready
    worker_gone: bool = False  # the frontend lists no instance and /v1/models is empty
    stale_instance: bool = False  # /health still lists the instance; requests fail 503
    ttft_extra: float = 0.0  # TTFT regression: added before the first token
    token_delay: float = 0.002  # per generated token
    max_concurrency: int = 0  # >0: requests beyond it queue (queue growth)
    engine_hang: bool = False  # completions accept and never produce a token

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name: f for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise KeyError(key)
            kind = type(getattr(self, key))
            setattr(self, key, kind(value) if kind is not bool else _truthy(value))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


class DynamoSim:
    def __init__(self, worker_id: str = "e75236237f395ea1") -> None:
        self.faults = Faults()
        self.worker_id = worker_id
        self.frontend_metrics = PromTemplate(recorded("frontend_metrics_after_traffic.prom"))
        self.worker_metrics = PromTemplate(recorded("worker_system_metrics_after_traffic.prom"))
        self._health_template = recorded_json("frontend_health_healthy.json")
        self._worker_health_template = recorded_json("worker_system_health.json")
        self._models_template = recorded_json("frontend_v1_models.json")
        # The served model's name: a test renames it (a worker restarted as another model).
        self.model = MODEL
        self.worker_started = time.monotonic()
        self.requests_seen: list[dict[str, str]] = []  # headers of completions, bounded
        self.inflight = 0
        self._unavailable_once = False
        self.idle = asyncio.Event()  # set whenever no request is in flight
        self.idle.set()
        self.completed = 0
        self.failed = 0
        self._queue_slots: asyncio.Semaphore | None = None
        self._queue_limit = 0  # the max_concurrency the semaphore was made for
        self._runners: dict[str, web.AppRunner] = {}
        self.ports: dict[str, int] = {}
        self.host = "127.0.0.1"

    # --- lifecycle --------------------------------------------------------------------
    async def start(
        self,
        host: str = "127.0.0.1",
        frontend_port: int = 0,
        worker_port: int = 0,
        control_port: int | None = None,
    ) -> None:
        self.host = host
        await self.start_part("frontend", frontend_port)
        await self.start_part("worker", worker_port)
        if control_port is not None:
            await self.start_part("control", control_port)

    async def start_part(self, part: str, port: int | None = None) -> int:
        if part in self._runners:
            return self.ports[part]
        app = {"frontend": self.frontend_app, "worker": self.worker_app, "control": self.control_app}[part]()
        # Like Dynamo, a request whose client went away is cancelled (and leaves in-flight).
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self.ports.get(part, 0) if port is None else port, reuse_address=True
        )
        await site.start()
        self._runners[part] = runner
        self.ports[part] = runner.addresses[0][1]
        if part == "worker":
            self.worker_started = time.monotonic()
        return self.ports[part]

    async def stop_part(self, part: str) -> None:
        runner = self._runners.pop(part, None)
        if runner is not None:
            await runner.cleanup()

    async def stop(self) -> None:
        for part in list(self._runners):
            await self.stop_part(part)

    async def kill_worker(self) -> None:
        """As SIGKILL: the system port closes; the frontend keeps the stale instance."""
        await self.stop_part("worker")
        self.faults.stale_instance = True

    async def restart_worker(self) -> None:
        await self.stop_part("worker")
        self._unavailable_once = False
        self.faults.stale_instance = False
        self.faults.worker_gone = False
        await self.start_part("worker")

    def url(self, part: str) -> str:
        return f"http://{self.host}:{self.ports[part]}"

    # --- helpers ----------------------------------------------------------------------
    async def _frontend_gate(self) -> None:
        if self.faults.frontend_hang:
            await asyncio.Event().wait()
        if self.faults.frontend_slow:
            await asyncio.sleep(self.faults.frontend_slow)

    async def _worker_gate(self) -> None:
        if self.faults.worker_hang:
            await asyncio.Event().wait()
        if self.faults.worker_slow:
            await asyncio.sleep(self.faults.worker_slow)

    @staticmethod
    def _json(body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            body=body.encode(), status=status, content_type="application/json", headers=headers
        )

    def _worker_serving(self) -> bool:
        return not (self.faults.worker_gone or self.faults.stale_instance) and "worker" in self._runners

    # --- frontend ---------------------------------------------------------------------
    def frontend_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.frontend_health)
        app.router.add_get("/live", self.frontend_live)
        app.router.add_get("/metrics", self.frontend_metrics_handler)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    async def frontend_health(self, request: web.Request) -> web.Response:
        await self._frontend_gate()
        if self.faults.frontend_5xx:
            return web.Response(status=500, text="Internal Server Error")
        if self.faults.frontend_malformed:
            return self._json('{"status":"healthy","endpoints":[', 200)
        if self.faults.frontend_draining:
            return self._json(
                compact({"status": "not_ready", "stage": "draining", "message": "Service is not ready"}), 503
            )
        if self.faults.worker_gone or ("worker" not in self._runners and not self.faults.stale_instance):
            return self._json(compact({"status": "healthy", "endpoints": [], "instances": []}))
        return self._json(compact(self._health_template))

    async def frontend_live(self, request: web.Request) -> web.Response:
        await self._frontend_gate()
        if self.faults.frontend_5xx:
            return web.Response(status=500, text="Internal Server Error")
        if self.faults.frontend_draining:
            return self._json(
                compact({"status": "shutting_down", "message": "Service is shutting down"}), 503
            )
        return self._json(recorded("frontend_live.json").strip())

    async def frontend_metrics_handler(self, request: web.Request) -> web.Response:
        await self._frontend_gate()
        if self.faults.frontend_malformed:
            return web.Response(
                text='dynamo_frontend_requests_total{model="tiny" 12\n\x00garbage{{{\n',
                content_type="text/plain",
            )
        return web.Response(text=self.frontend_metrics.render(), content_type="text/plain", charset="utf-8")

    async def models(self, request: web.Request) -> web.Response:
        await self._frontend_gate()
        if not self._worker_serving():
            return self._json(recorded("scenario_worker_sigkill_v1_models.json").strip())
        listing = self._models_template
        if self.model != MODEL:
            listing = {**listing, "data": [{**item, "id": self.model} for item in listing["data"]]}
        return self._json(compact(listing))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    def _error(self, message: str, kind: str, code: int, headers: dict[str, str]) -> web.Response:
        return self._json(compact({"message": message, "type": kind, "code": code}), code, headers)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        await self._frontend_gate()
        request_id = request.headers.get("x-request-id", str(uuid.uuid4()))
        headers = {"x-request-id": request_id}
        if len(self.requests_seen) < 10_000:
            self.requests_seen.append({k.lower(): v for k, v in request.headers.items()})
        endpoint = "chat_completions" if chat else "completions"
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self.frontend_metrics.inc(
                "dynamo_frontend_failures_total",
                1.0,
                **{"class": "InvalidRequest", "reason": "request.invalid"},
            )
            return self._json(recorded("completions_bad_json.txt").splitlines()[0], 400, headers)
        model = str(body.get("model", ""))
        stream = bool(body.get("stream", False))
        request_type = "stream" if stream else "unary"
        if self.faults.frontend_draining:
            return self._error("Service temporarily unavailable", "Service Unavailable", 503, headers)
        if model != self.model and self._worker_serving():
            self._count(endpoint, model, request_type, "error", "not_found")
            self.frontend_metrics.inc(
                "dynamo_frontend_failures_total", 1.0, **{"class": "NotFound", "reason": "request.not_found"}
            )
            return self._json(recorded("completions_unknown_model.txt").splitlines()[0], 404, headers)
        if not self._worker_serving():
            # As the real 1.6.1 frontend after a worker SIGKILL: the first request fails to
            # connect to the dead instance; later ones are refused as "model not ready".
            self._count(endpoint, model, request_type, "error", "unavailable")
            self.failed += 1
            if not self._unavailable_once:
                self._unavailable_once = True
                self.frontend_metrics.inc(
                    "dynamo_frontend_failures_total",
                    1.0,
                    **{"class": "Unavailable", "reason": "transport.cannot_connect"},
                )
                body_text = recorded("scenario_worker_sigkill_completion.txt").splitlines()[0]
            else:
                self.frontend_metrics.inc(
                    "dynamo_frontend_failures_total",
                    1.0,
                    **{"class": "Unavailable", "reason": "backend.unavailable"},
                )
                body_text = recorded("observed_model_not_ready_503.json")
            return self._json(body_text, 503, headers)
        max_tokens = max(1, min(int(body.get("max_tokens") or 16), 4096))
        started = time.monotonic()
        self.inflight += 1
        self.idle.clear()
        self._set_gauges()
        self.frontend_metrics.inc(
            "dynamo_frontend_requests_started_total",
            endpoint=endpoint,
            model=MODEL,
            request_type=request_type,
        )
        try:
            if self.faults.max_concurrency > 0:
                if self._queue_slots is None or self._queue_limit != self.faults.max_concurrency:
                    self._queue_limit = self.faults.max_concurrency
                    self._queue_slots = asyncio.Semaphore(self.faults.max_concurrency)
                slots: asyncio.Semaphore | contextlib.nullcontext[None] = self._queue_slots
            else:
                slots = contextlib.nullcontext()
            async with slots:
                if self.faults.engine_hang:
                    await asyncio.Event().wait()
                first_token_delay = self.faults.token_delay + self.faults.ttft_extra
                await asyncio.sleep(first_token_delay)
                ttft = time.monotonic() - started
                self.frontend_metrics.observe(
                    "dynamo_frontend_time_to_first_token_seconds", ttft, model=MODEL
                )
                if stream:
                    return await self._stream(request, headers, chat, max_tokens, started, endpoint)
                for _ in range(max_tokens - 1):
                    await asyncio.sleep(self.faults.token_delay)
                    self.frontend_metrics.observe(
                        "dynamo_frontend_inter_token_latency_seconds", self.faults.token_delay, model=MODEL
                    )
                payload = self._completion_body(chat, max_tokens)
                self._finish(endpoint, request_type, started, len(await request.read()), len(payload))
                return self._json(payload, 200, headers)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self.idle.set()
            self._set_gauges()

    def _set_gauges(self) -> None:
        # Queued: accepted by the frontend but waiting for an engine slot.
        limit = self.faults.max_concurrency
        queued = max(0, self.inflight - limit) if limit > 0 else 0
        self.frontend_metrics.set("dynamo_frontend_inflight_requests", self.inflight, model=MODEL)
        self.frontend_metrics.set("dynamo_frontend_queued_requests", queued, model=MODEL)
        self.worker_metrics.set(
            "dynamo_component_inflight_requests", self.inflight - queued, dynamo_endpoint="generate"
        )

    def _count(self, endpoint: str, model: str, request_type: str, status: str, error_type: str) -> None:
        self.frontend_metrics.inc(
            "dynamo_frontend_requests_total",
            endpoint=endpoint,
            error_type=error_type,
            model=model,
            request_type=request_type,
            status=status,
        )

    def _finish(
        self, endpoint: str, request_type: str, started: float, bytes_in: int, bytes_out: int
    ) -> None:
        duration = time.monotonic() - started
        self._count(endpoint, MODEL, request_type, "success", "")
        self.frontend_metrics.observe("dynamo_frontend_request_duration_seconds", duration, model=MODEL)
        self.worker_metrics.inc("dynamo_component_requests_total", dynamo_endpoint="generate")
        self.worker_metrics.observe(
            "dynamo_component_request_duration_seconds", duration, dynamo_endpoint="generate"
        )
        self.worker_metrics.inc("dynamo_component_request_bytes_total", bytes_in, dynamo_endpoint="generate")
        self.worker_metrics.inc(
            "dynamo_component_response_bytes_total", bytes_out, dynamo_endpoint="generate"
        )
        self.completed += 1

    def _completion_body(self, chat: bool, max_tokens: int) -> str:
        text = "".join(random.choice((" the", " a", " model", " token")) for _ in range(max_tokens - 1))
        if chat:
            body = recorded_json("chat_completions_max_tokens_1.json")
            body["id"] = f"chatcmpl-{uuid.uuid4()}"
            body["choices"][0]["message"]["content"] = text or None
        else:
            body = recorded_json("completions_max_tokens_1.json")
            body["id"] = f"cmpl-{uuid.uuid4()}"
            body["choices"][0]["text"] = text
        body["created"] = int(time.time())
        body["usage"]["completion_tokens"] = max_tokens
        body["usage"]["total_tokens"] = body["usage"]["prompt_tokens"] + max_tokens
        return compact(body)

    async def _stream(
        self,
        request: web.Request,
        headers: dict[str, str],
        chat: bool,
        max_tokens: int,
        started: float,
        endpoint: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={**headers, "content-type": "text/event-stream"})
        await response.prepare(request)
        created = int(time.time())
        ident = f"chatcmpl-{uuid.uuid4()}" if chat else f"cmpl-{uuid.uuid4()}"
        sent = 0
        if chat:
            chunk = {
                "id": ident,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None, "logprobs": None}
                ],
                "created": created,
                "model": MODEL,
                "object": "chat.completion.chunk",
            }
            await response.write(f"data: {compact(chunk)}\n\n".encode())
        for index in range(max_tokens):
            if index:
                await asyncio.sleep(self.faults.token_delay)
                self.frontend_metrics.observe(
                    "dynamo_frontend_inter_token_latency_seconds", self.faults.token_delay, model=MODEL
                )
            if self.faults.stale_instance or "worker" not in self._runners:
                # As a worker SIGKILL mid-stream: an in-band error, then [DONE].
                error = {
                    "error": {
                        "message": "Service temporarily unavailable",
                        "type": "service_unavailable",
                        "code": 503,
                    }
                }
                await response.write(f"data: {compact(error)}\n\ndata: [DONE]\n\n".encode())
                self._count(endpoint, MODEL, "stream", "error", "unavailable")
                self.failed += 1
                await response.write_eof()
                return response
            last = index == max_tokens - 1
            if chat:
                delta: dict[str, Any] = (
                    {"content": random.choice((" the", " a", " model"))} if not last else {}
                )
                chunk = {
                    "id": ident,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "finish_reason": "length" if last else None,
                            "logprobs": None,
                        }
                    ],
                    "created": created,
                    "model": MODEL,
                    "object": "chat.completion.chunk",
                }
            else:
                chunk = {
                    "id": ident,
                    "choices": [
                        {
                            "text": "" if last else " the",
                            "index": 0,
                            "finish_reason": "length" if last else None,
                        }
                    ],
                    "created": created,
                    "model": MODEL,
                    "system_fingerprint": None,
                    "object": "text_completion",
                    "usage": None,
                }
            await response.write(f"data: {compact(chunk)}\n\n".encode())
            sent += 1
        await response.write(b"data: [DONE]\n\n")
        self._finish(endpoint, "stream", started, 0, sent * 200)
        await response.write_eof()
        return response

    # --- worker system status server ----------------------------------------------------
    def worker_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.worker_health)
        app.router.add_get("/live", self.worker_health)
        app.router.add_get("/metrics", self.worker_metrics_handler)
        return app

    def worker_uptime(self) -> float:
        return time.monotonic() - self.worker_started

    async def worker_health(self, request: web.Request) -> web.Response:
        await self._worker_gate()
        uptime = self.worker_uptime()
        body = dict(self._worker_health_template)
        body["status"] = "notready" if self.faults.worker_notready else "ready"
        body["uptime"] = {"secs": int(uptime), "nanos": int((uptime % 1) * 1e9)}
        return self._json(compact(body), 503 if self.faults.worker_notready else 200)

    async def worker_metrics_handler(self, request: web.Request) -> web.Response:
        await self._worker_gate()
        self.worker_metrics.set("dynamo_component_uptime_seconds", round(self.worker_uptime(), 9))
        return web.Response(text=self.worker_metrics.render(), content_type="text/plain", charset="utf-8")

    # --- control (not part of Dynamo: how tests and demo turn the knobs) ------------------
    def control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/faults", self.get_faults)
        app.router.add_post("/faults", self.post_faults)
        app.router.add_post("/worker/{action}", self.worker_action)
        app.router.add_post("/frontend/{action}", self.frontend_action)
        return app

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "faults": asdict(self.faults),
                "inflight": self.inflight,
                "completed": self.completed,
                "failed": self.failed,
                "ports": self.ports,
            }
        )

    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            self.faults.update(changes)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad fault change: {exc}"}, status=400)
        return await self.get_faults(request)

    async def worker_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action == "kill":
            await self.kill_worker()
        elif action == "restart":
            await self.restart_worker()
        elif action == "stop":
            await self.stop_part("worker")
            self.faults.worker_gone = True
        else:
            return web.json_response({"error": f"unknown action {action}"}, status=404)
        return await self.get_faults(request)

    async def frontend_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action == "stop":
            await self.stop_part("frontend")
        elif action == "start":
            await self.start_part("frontend")
        else:
            return web.json_response({"error": f"unknown action {action}"}, status=404)
        return await self.get_faults(request)
