"""/history at its worst and the state's memory budget, through the real aiohttp app.

The worst case of issue 26: 16 names x 200 series, every ring full. Before, one such query
blocked the event loop 9 s and grew the process by 1.24 GB. Now an answer is bounded in
points and bytes (the rest by ?offset=), computed in a thread on copies of the rings; the
timing goals (<= 1 s a query, /healthz never held > 0.5 s) are measured in bench/history.py,
here the bounds are asserted with margin."""

from __future__ import annotations

import asyncio
import json
import time
from itertools import pairwise

import aiohttp

from agent.core.samples import CollectResult, sample
from agent.core.signals import DynamoNames
from agent.runtime.server import MAX_HISTORY_BYTES, MAX_HISTORY_POINTS
from agent.runtime.sidecar import Sidecar
from tests.helpers import PeakRss, base_url, get_json, get_text, wait_for

NAMES = sorted(DynamoNames().history_names())[:16]
SERIES = 200


def fill_worst_case(sidecar: Sidecar) -> int:
    """16 kept names x 200 series, each ring full (its capacity of points), values that move."""
    state = sidecar.state
    assert all(state._history_filter(name) for name in NAMES) and len(NAMES) == 16
    labels = [{"instance": f"i{i:03d}", "model": "m" * 40} for i in range(SERIES)]
    start = time.time() - 5.0 * state.ring_capacity
    for step in range(state.ring_capacity):
        samples = [
            sample(name, step * (i + 1) + 0.25 * (step % 3), **labels[i])
            for name in NAMES
            for i in range(SERIES)
        ]
        state.update("worst", CollectResult(samples=samples), now=start + 5.0 * step)
    return state.ring_capacity


async def _all_pages(http: aiohttp.ClientSession, url: str) -> tuple[int, int, int, int]:
    """(pages, series, points, largest body in bytes) over every page of one query."""
    offset: int | None = 0
    pages = series = points = largest = 0
    while offset is not None:
        async with http.get(f"{url}&offset={offset}") as response:
            assert response.status == 200
            body = await response.read()
        largest = max(largest, len(body))
        page = json.loads(body)
        pages += 1
        series += sum(len(entries) for entries in page["series"].values())
        points += page["points"]
        offset = page["next_offset"]
        assert pages <= 40, "the pages never end"
    return pages, series, points, largest


DEFAULT_INTERVALS = {"process_interval": "5", "dynamo_interval": "5", "collector_timeout": "4"}


async def test_worst_case_history_is_bounded_and_never_stalls_healthz(make_sidecar, http) -> None:
    sidecar = await make_sidecar(**DEFAULT_INTERVALS)
    capacity = fill_worst_case(sidecar)
    assert capacity == 182  # the default: 900 s at 5 s
    query = base_url(sidecar) + "/history?" + "&".join(f"name={name}" for name in NAMES)
    answered: list[float] = []
    done = asyncio.Event()

    async def probe_healthz() -> None:
        # The app runs on this test's loop: a blocked loop holds the poller too, so the gap
        # between answers is what shows a stall.
        answered.append(time.monotonic())
        while not done.is_set():
            status, _ = await get_text(http, base_url(sidecar) + "/healthz")
            assert status == 200
            answered.append(time.monotonic())
            await asyncio.sleep(0.02)

    with PeakRss() as rss:
        prober = asyncio.create_task(probe_healthz())
        results = await asyncio.gather(*(_all_pages(http, query) for _ in range(4)))
        done.set()
        await prober
    for pages, series, points, largest in results:
        # Every series and every point is there, over pages each within the bounds.
        assert (series, points) == (16 * SERIES, 16 * SERIES * capacity)
        assert largest <= MAX_HISTORY_BYTES + 64 * 1024
        assert pages >= 16 * SERIES * capacity // MAX_HISTORY_POINTS
    gaps = [b - a for a, b in pairwise(answered)]
    assert len(gaps) >= 3
    assert max(gaps) < 2.0, sorted(gaps)[-5:]  # the goal, 0.5 s, is bench/history.py's
    # Before: +1.24 GB for one query. Four at once now hold at most two answers in flight.
    assert rss.peak - rss.base < 150 * 2**20, (rss.base >> 20, rss.peak >> 20)


async def test_history_downsamples_to_max_points_keeping_the_newest(make_sidecar, http) -> None:
    sidecar = await make_sidecar()
    state = sidecar.state
    start = time.time() - 500
    for step in range(100):
        state.update("c", CollectResult(samples=[sample(NAMES[0], step, a="1")]), now=start + 5 * step)
    body = await get_json(http, base_url(sidecar) + f"/history?name={NAMES[0]}&max_points=10")
    points = body["series"][NAMES[0]][0]["points"]
    assert len(points) == 10
    assert points[-1][1] == 99 and [b[1] - a[1] for a, b in pairwise(points)] == [10] * 9
    for bad in ("max_points=1", "max_points=x", "offset=-1", "since=0s"):
        status, text = await get_text(http, base_url(sidecar) + f"/history?name=a&{bad}")
        assert status == 400 and "max_points, offset, since" in text, bad


async def test_history_needs_loopback_or_the_token(make_sidecar) -> None:
    """127.0.0.2 is loopback to the kernel but not the pod's own address (a mesh proxy's
    range): like /drain, it must bring the bearer token."""
    sidecar = await make_sidecar(listen_host="0.0.0.0", auth_token="s3cret-token")
    url = f"http://127.0.0.1:{sidecar.port}/history?name=x"
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as other:
        async with other.get(url) as response:
            assert response.status == 403
        async with other.get(url, headers={"Authorization": "Bearer s3cret-token"}) as response:
            assert response.status == 200
            assert (await response.json())["series"] == {"x": []}


async def test_the_memory_budget_is_a_finding_before_it_is_spent(make_sidecar, http) -> None:
    """A source inventing series of a history-kept name: the budget keeps history, then series
    out, counts them, and the warning names bytes used, budget and limit."""
    sidecar = await make_sidecar(memory_budget="2Mi", memory_limit="64Mi", **DEFAULT_INTERVALS)
    state = sidecar.state
    for step in range(3):
        samples = [sample(NAMES[0], step, instance=f"i{i}") for i in range(3000)]
        state.update("flood", CollectResult(samples=samples), now=time.time())
    assert state.memory_budget == 2 * 2**20 and state.budget_used() <= 2 * 2**20
    assert state.history_refused > 0 and state.caps_hit["memory_budget"] > 0
    assert state.history_kept == 2**20 // state.ring_reserve  # half of 2 MiB, ~3.8 KB reserved a ring
    report = await wait_for(
        lambda: get_json(http, base_url(sidecar) + "/diagnose"), timeout=10, what="a report"
    )
    finding = next(f for f in report["findings"] if f["id"] == "memory_budget:state")
    evidence = {e["signal"]: e["value"] for e in finding["evidence"]}
    assert evidence["dynamo_sidecar_memory_budget_bytes"] == 2 * 2**20
    assert evidence["container memory limit"] == 64 * 2**20
    assert 0.8 * 2**21 <= evidence["dynamo_sidecar_memory_budget_used_bytes"] <= 2**21
    _, text = await get_text(http, base_url(sidecar) + "/metrics")
    assert 'dynamo_sidecar_series_caps_hit_total{cap="memory_budget"}' in text
    assert "dynamo_sidecar_history_refused_total " in text
