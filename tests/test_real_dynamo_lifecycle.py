"""Findings over a whole incident against a real Dynamo 1.6.1 (frontend + mocker on loopback):
the worker is killed (critical within seconds), restarted, serves five requests in a row, and
shortly after nothing is critical; the kill's findings are resolved or past, with when."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from tests.helpers import base_url, get_json, wait_for
from tests.real_dynamo import REAL_DYNAMO_MARKS, RealDynamo, own_processes

pytestmark = REAL_DYNAMO_MARKS

INTERVAL = 1.0  # collection interval of this test's sidecar (the default is 5 s)


async def test_kill_restart_serve_then_nothing_critical(dynamo: RealDynamo, make_sidecar, http) -> None:
    dynamo.start_worker()
    dynamo.start_frontend()
    dynamo.wait_model()
    sidecar = await make_sidecar(
        frontend_url=dynamo.frontend_url,
        worker_system_urls=dynamo.worker_url,
        process_pid="0",
        process_patterns=own_processes(dynamo),
        log_files=f"{dynamo.frontend_log},{dynamo.worker_log}",
        gpu_enabled="false",
        canary_enabled="false",
        process_interval=str(INTERVAL),
        dynamo_interval=str(INTERVAL),
    )
    url = base_url(sidecar) + "/diagnose"
    await wait_for(lambda: sidecar.ready, timeout=20, what="ready")
    for index in range(3):
        assert (await asyncio.to_thread(dynamo.completion, f"before-{index}", 2))[0] == 200

    async def status(wanted: set[str]) -> dict[str, Any] | None:
        report = await get_json(http, url)
        return report if report["status"] in wanted else None

    killed = time.monotonic()
    dynamo.signal_worker(signal.SIGKILL)
    during = await wait_for(lambda: status({"critical"}), timeout=15, interval=0.2, what="critical")
    kill_to_critical = time.monotonic() - killed
    assert during["findings"][0]["id"] == "endpoint_refused:worker", during["findings"][0]
    # Requests fail while the worker is gone: 503, or 404 once Dynamo de-listed the model (~8 s).
    assert (await asyncio.to_thread(dynamo.completion, "during", 2))[0] in {503, 404}
    assert dynamo.worker is not None
    # Off the event loop: the sidecar in this process keeps collecting meanwhile.
    await asyncio.to_thread(dynamo.worker.wait, 10)
    await asyncio.to_thread(dynamo.start_worker)
    await asyncio.to_thread(dynamo.wait_model)

    async def five_in_a_row() -> bool:
        for index in range(5):
            code, _ = await asyncio.to_thread(dynamo.completion, f"after-{index}", 2)
            if code != 200:
                return False
        return True

    await wait_for(five_in_a_row, timeout=60, interval=0.5, what="five requests in a row succeed")
    served = time.monotonic()
    events = ("worker_restarted:worker", "request_failures:requests", "frontend_stale_instances:frontend")

    async def calm() -> dict[str, Any] | None:
        # Nothing critical, and what the kill left in the windows is past: a failure counted in
        # the same scrape as the first successes is past once a later scrape adds none.
        report = await status({"ok", "warning"})
        if report is None:
            return None
        active = [f for f in report["findings"] if f["id"] in events and f["state"] == "active"]
        return None if active else report

    try:
        after = await wait_for(
            calm, timeout=20, interval=0.2, what="nothing critical, the kill's events past"
        )
    except AssertionError:
        report = await get_json(http, url)
        left = [(f["id"], f["severity"], f["state"], f["summary"]) for f in report["findings"]]
        raise AssertionError(f"still critical 20 s after five requests succeeded: {left}") from None
    served_to_calm = time.monotonic() - served
    print(f"kill -> critical {kill_to_critical:.1f}s; five served -> nothing critical {served_to_calm:.1f}s")
    by_id = {f["id"]: f for f in after["findings"]}
    refused = by_id["endpoint_refused:worker"]
    assert (refused["state"], refused["severity"], refused["was"]) == ("resolved", "info", "critical")
    assert 0 < refused["duration_seconds"] < time.monotonic() - killed + 1
    # What the kill left in the windows (failed requests, the restart, flapping) is past.
    for finding in after["findings"]:
        if finding["state"] == "active":
            assert finding["severity"] != "critical", finding
    for event_id in events:
        if event_id in by_id:
            assert by_id[event_id]["state"] in {"past", "resolved"}, by_id[event_id]
    # Still true two collections later: nothing comes back at its old severity.
    mark = time.time()
    await wait_for(
        lambda: sidecar.state.latest_time.get("dynamo_health", 0) > mark + 2 * INTERVAL,
        timeout=4 * INTERVAL + 5,
        what="two more collections",
    )
    settled = await get_json(http, url)
    later_by = {f["id"]: f for f in settled["findings"]}
    assert settled["status"] != "critical" and later_by["endpoint_refused:worker"]["state"] == "resolved"
    assert kill_to_critical < 3 * INTERVAL + 2, kill_to_critical
    assert served_to_calm <= 2 * INTERVAL + 1, served_to_calm
