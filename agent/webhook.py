"""`dynamo-sidecar webhook`: a mutating admission webhook over TLS that adds the sidecar to
Dynamo pods as they are created (`POST /mutate`, `admission.k8s.io/v1` AdmissionReview in, a
JSONPatch out). It never blocks a pod: a malformed review or an internal error answers
`allowed: true` with a warning and no patch, and is logged and counted. The Helm chart runs it
with `failurePolicy: Ignore` as well."""

from __future__ import annotations

import base64
import json
import ssl
from typing import Any

import jsonpatch
from aiohttp import web

from agent import __version__
from agent.inject import InjectError, Options, inject
from agent.log import get as get_logger

log = get_logger("dynamo_sidecar.webhook")
MAX_REVIEW_BYTES = 3 << 20  # the API server sends at most ~3 MiB objects
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


def mutate_review(review: Any, options: Options) -> tuple[dict[str, Any], str]:
    """(the AdmissionReview answer, outcome) for one review: patched | unchanged | error."""
    request = review.get("request") if isinstance(review, dict) else None
    uid = str(request.get("uid", "")) if isinstance(request, dict) else ""
    if not isinstance(request, dict) or not isinstance(request.get("object"), dict):
        return review_response(
            uid, None, ["dynamo-sidecar: not an AdmissionReview with an object; not injected"]
        ), "error"
    original = request["object"]
    try:
        mutated, _ = inject(original, options)
    except InjectError as exc:
        return review_response(uid, None, [f"dynamo-sidecar: not injected: {exc}"]), "error"
    patch = jsonpatch.make_patch(original, mutated).patch
    return review_response(uid, patch, []), ("patched" if patch else "unchanged")


async def mutate(request: web.Request) -> web.Response:
    counts = request.app[COUNTS_KEY]
    uid = ""
    try:
        body = await request.content.read(MAX_REVIEW_BYTES + 1)
        if len(body) > MAX_REVIEW_BYTES:
            raise ValueError("review larger than 3 MiB")
        review = json.loads(body)
        uid = str(((review or {}).get("request") or {}).get("uid", "")) if isinstance(review, dict) else ""
        answer, outcome = mutate_review(review, request.app[OPTIONS_KEY])
    except Exception as exc:  # never block a Dynamo pod on our error
        log.warning("admission review not handled", error=f"{type(exc).__name__}: {exc}"[:300])
        answer, outcome = (
            review_response(uid, None, ["dynamo-sidecar: review not understood; not injected"]),
            "error",
        )
    counts[outcome] = counts.get(outcome, 0) + 1
    if outcome == "error":
        log.warning("admission review answered without a patch", uid=uid)
    return web.json_response(answer)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    lines = [
        "# HELP dynamo_sidecar_webhook_reviews_total Admission reviews answered, by outcome.",
        "# TYPE dynamo_sidecar_webhook_reviews_total counter",
    ]
    for outcome, count in sorted(request.app[COUNTS_KEY].items()):
        lines.append(f'dynamo_sidecar_webhook_reviews_total{{outcome="{outcome}"}} {count}')
    lines += [
        "# HELP dynamo_sidecar_webhook_build_info Always 1; the webhook's version.",
        "# TYPE dynamo_sidecar_webhook_build_info gauge",
        f'dynamo_sidecar_webhook_build_info{{version="{__version__}"}} 1',
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def make_app(options: Options) -> web.Application:
    app = web.Application(client_max_size=MAX_REVIEW_BYTES + 1024)
    app[COUNTS_KEY] = {}
    app[OPTIONS_KEY] = options
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context
