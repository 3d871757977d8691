"""The canary's start-up pause follows Dynamo's readiness, not the sidecar's uptime, and it
follows the models being served: after a rename it stops probing the old name within a
round (issue 25; issue 26 item 9). The real-Dynamo counterparts are in
tests/test_real_dynamo_honest.py."""

from __future__ import annotations

import asyncio
import time

from agent.core.facts import EndpointFacts, HealthFacts, ProbeFact
from agent.core.samples import CollectResult
from tests.helpers import base_url, free_port, get_json, get_text, post_completion, wait_for
from tests.test_canary_otlp import canary_requests


async def test_a_sidecar_restarted_next_to_a_serving_dynamo_probes_within_one_canary_interval(
    sim, make_sidecar, http
) -> None:
    """A 60 s start-up grace used to keep the canary blind for 60 s after every sidecar
    start, even with Dynamo serving all along."""
    started = time.monotonic()
    sidecar = await make_sidecar(sim, startup_grace="60", canary_wait="1")
    await wait_for(lambda: canary_requests(sim), timeout=10, what="a canary within the grace")
    # The sim sees the request before the sidecar has its answer: wait for the result too.
    await wait_for(lambda: "tiny" in sidecar.canary.models, timeout=5, what="the canary's result")
    assert time.monotonic() - started < 1 + 1 + 1.5  # canary_wait + one interval + start-up
    status = await get_json(http, base_url(sidecar) + "/canaryz")
    canary = status["canary"]
    assert canary["paused"] is None and canary["models"]["tiny"]["last"]["outcome"] == "ok"


async def test_the_canary_pauses_while_dynamo_starts_and_probes_once_it_answers(
    sim, make_sidecar, http
) -> None:
    """Sidecar first (a native sidecar starts before `main`): paused while the frontend has
    never answered, probing as soon as it does."""
    frontend, worker = sim.url("frontend"), sim.url("worker")
    await sim.stop()
    sidecar = await make_sidecar(
        frontend_url=frontend, worker_system_urls=worker, startup_grace="60", canary_wait="0.5"
    )
    await wait_for(lambda: sidecar.ready, what="ready")
    status = await get_json(http, base_url(sidecar) + "/canaryz")
    assert status["canary"]["paused"] == "dynamo_starting" and status["canary"]["rounds"] == 0
    await sim.start("127.0.0.1", int(frontend.rsplit(":", 1)[1]), int(worker.rsplit(":", 1)[1]))
    answered = time.monotonic()
    await wait_for(lambda: canary_requests(sim), timeout=10, what="a canary once Dynamo answers")
    assert time.monotonic() - answered < 0.5 + 2 * 0.2 + 1.5  # canary_wait + intervals + slack


def _frontend(models: list[str], seen: dict[str, float], since: dict[str, float]) -> HealthFacts:
    view = EndpointFacts(
        "frontend",
        f"http://127.0.0.1:{free_port()}",
        probes={"health": ProbeFact(outcome="ok", status="healthy", status_code=200)},
        first_ok_at=time.time() - 600,
        models=models,
        models_seen=seen,
        models_listed_since=since,
    )
    return HealthFacts({"frontend": view}, time.time())


async def test_a_renamed_model_is_not_probed_but_a_lost_one_is(make_sidecar) -> None:
    sidecar = await make_sidecar(frontend_url="http://127.0.0.1:1", collectors=[])
    now = time.time()

    def probed(models: list[str], seen: dict[str, float], since: dict[str, float]) -> list[str]:
        sidecar.state.update("dynamo_health", CollectResult(facts=_frontend(models, seen, since)))
        return sidecar.canary.models_to_probe()

    # tiny was served; its worker restarted as tiny2: tiny2's listing began after tiny's.
    assert probed(["tiny2"], {"tiny": now - 20, "tiny2": now}, {"tiny": now - 900, "tiny2": now - 10}) == [
        "tiny2"
    ]
    # A rolling rename: both were listed for a while (tiny2 from -100 s, tiny until -20 s).
    assert probed(["tiny2"], {"tiny": now - 20, "tiny2": now}, {"tiny": now - 900, "tiny2": now - 100}) == [
        "tiny2"
    ]
    # Two models served for long; b's workers die: b is probed, its failure is the signal.
    assert probed(["a"], {"a": now, "b": now - 15}, {"a": now - 3000, "b": now - 2000}) == ["a", "b"]
    # All workers gone: nothing listed, the lost model is probed.
    assert probed([], {"tiny": now - 15}, {"tiny": now - 900}) == ["tiny"]


async def test_canaryz_follows_a_rename_under_traffic_within_a_few_collections(
    sim, make_sidecar, http
) -> None:
    """The worker serving `tiny` is lost (its canary fails), then a worker serving `tiny2`
    takes the traffic. No canary round runs while traffic flows, and /canaryz stayed 503 on
    the old name until a round did (or for the 15-minute history window): it must follow
    the models served within a couple of collections."""
    sidecar = await make_sidecar(sim, canary_wait="0.5", canary_failures="1")
    await wait_for(lambda: canary_requests(sim), timeout=10, what="a first canary")
    sim.faults.worker_gone = True
    await wait_for(lambda: sidecar.canary.failing_models == ["tiny"], timeout=10, what="tiny failing")
    status, body = await get_text(http, base_url(sidecar) + "/canaryz")
    assert status == 503 and '"tiny"' in body

    sim.model = "tiny2"
    sim.faults.worker_gone = False
    stop = asyncio.Event()

    async def traffic() -> None:  # real users on the new name: the canary waits for idle
        while not stop.is_set():
            await post_completion(http, sim.url("frontend"), model="tiny2", max_tokens=4)

    load = asyncio.create_task(traffic())
    try:
        rounds = sidecar.canary.rounds
        generation = sidecar.state.generation
        renamed = time.monotonic()

        async def canaryz_ok() -> bool:
            status, _ = await get_text(http, base_url(sidecar) + "/canaryz")
            return status == 200

        await wait_for(canaryz_ok, timeout=10, what="/canaryz 200 once tiny2 is served")
        assert time.monotonic() - renamed < 5
        assert sidecar.state.generation - generation <= 8, "a few collections, not a history window"
        assert sidecar.canary.rounds == rounds, "cleared by the listing, not by a canary round"
        canary = await get_json(http, base_url(sidecar) + "/canaryz")
        assert canary["failing_models"] == [] and "tiny" not in canary["canary"]["models"]
    finally:
        stop.set()
        await asyncio.gather(load, return_exceptions=True)
