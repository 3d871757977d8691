"""What history costs: bytes per kept series, and /history at its worst.

1. Bytes per kept series at the default window and interval (900 s at 5 s: 182 points),
   measured with tracemalloc as the difference between the same state filled with and
   without history: per kind of series (flat, counter, small integer gauge, two-decimal
   value, raw float), and for the realistic mix bench/diagnose.py records (a real Dynamo's
   frontend and worker /metrics, processes, cgroup, GPUs).
2. /history worst case (issue 26: 16 names x 200 series, every ring full) through the real
   aiohttp app: one query's pages, then four at once while /healthz is polled every 20 ms:
   time, largest answer, the longest /healthz wait and the process's RSS growth.

    python bench/history.py                   # both
    python bench/history.py --smoke           # 16 x 10 series, a few kinds
    python bench/history.py --code /work/main # the same against another checkout (before)
Goals: <= 2 KB per kept series (must: 4 KB); worst-case /history <= 1 s, /healthz never
held > 0.5 s, peak RSS <= 250 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
import tracemalloc
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEPS = 182  # 900 s at 5 s, the ring's default capacity


def _values(kind: str, series: int, steps: int) -> list[float]:
    rng = random.Random(series)
    out, value = [], 0.0
    for _ in range(steps):
        if kind == "flat":
            value = 3.0
        elif kind == "counter":
            value += rng.randint(0, 20)
        elif kind == "gauge":
            value = float(rng.randint(0, 8))
        elif kind == "decimal":
            value = round(value + rng.randint(0, 9) / 100, 2)
        else:
            value = rng.random() * 100
        out.append(value)
    return out


def _fill_kind(state: Any, kind: str, series: int) -> None:
    from agent.core.samples import CollectResult, sample

    columns = [_values(kind, i, STEPS) for i in range(series)]
    rng = random.Random(7)
    t = 1.765e9
    for step in range(STEPS):
        t += 5.0 * (1 + rng.uniform(-0.1, 0.1))  # the scheduler's jitter
        samples = [sample("m_total", columns[i][step], i=str(i)) for i in range(series)]
        state.update("c", CollectResult(samples=samples), now=t)


def _traced(build: Any) -> int:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept
    return used


def bytes_per_series(kinds: list[str], series: int) -> dict[str, Any]:
    from agent.core.state import State

    out: dict[str, Any] = {}
    for kind in kinds:

        def build(keep: bool, kind: str = kind) -> Any:
            state = State(
                history_window=900, min_interval=5, history_filter=None if keep else (lambda name: False)
            )
            _fill_kind(state, kind, series)
            return state

        _traced(lambda: build(True))  # warms the caches, as in realistic_mix
        without = _traced(lambda: build(False))
        with_history = _traced(lambda: build(True))
        out[kind] = round((with_history - without) / series)
    return out


def realistic_mix(code: str) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    import diagnose as recorded  # bench/diagnose.py: 15 minutes of a real Dynamo's series

    sys.path.insert(0, code)  # diagnose.py put this checkout first: the measured one goes back in front

    from agent.config import load_config
    from agent.runtime.sidecar import Sidecar

    def build(keep: bool) -> Any:
        sidecar = Sidecar(load_config(environ={}, overrides={"listen_port": "0"}))
        if not keep:
            sidecar.state._history_filter = lambda name: False
        recorded.fill(sidecar, time.time())
        return sidecar

    holder: dict[str, Any] = {}

    def keep_one() -> Any:
        holder["sidecar"] = build(True)
        return holder["sidecar"]

    # A first fill warms the module-level caches (label sets, parsed templates), which would
    # otherwise be counted to whichever fill runs first.
    _traced(lambda: build(True))
    without = _traced(lambda: build(False))
    with_history = _traced(keep_one)
    state = holder["sidecar"].state
    kept = state.history_series
    out = {"kept_series": kept, "bytes_per_kept_series": round((with_history - without) / kept)}
    if hasattr(state, "history_bytes"):
        rings = [ring for by_labels in state.history.values() for ring in by_labels.values()]
        out["ring_nbytes_per_series"] = round(sum(ring.nbytes() for ring in rings) / kept)
    return out


def reads(series: int = 3200) -> dict[str, float]:
    """What rules pay to read history: ring.points over `series` full rings, whole and for a
    300 s window (the signals' default), best of five, in ms."""
    from agent.core.samples import CollectResult, sample
    from agent.core.state import State

    state = State(history_window=900, min_interval=5)
    start = 1.765e9
    names, per_name = 16, series // 16
    for step in range(STEPS):
        samples = [
            sample(f"n{n}_total", step * (i + 1) + step % 3, i=str(i))
            for n in range(names)
            for i in range(per_name)
        ]
        state.update("c", CollectResult(samples=samples), now=start + 5 * step + (step % 7) * 0.1)
    rings = [ring for by_labels in state.history.values() for ring in by_labels.values()]
    now = start + 5 * STEPS
    out = {}
    for label, since in (("whole_ms", -float("inf")), ("window_300s_ms", now - 300)):
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for ring in rings:
                ring.points(since, now)
            best = min(best, time.perf_counter() - began)
        out[label] = round(best * 1000, 1)
    return {"rings": len(rings), **out}


async def _query(http: Any, url: str) -> tuple[float, int, int, int, float]:
    """(seconds, pages, points, largest answer, slowest page) for every page of one query."""
    began = time.monotonic()
    offset: Any = 0
    pages = points = largest = 0
    slowest = 0.0
    while offset is not None and pages < 100:
        page_began = time.monotonic()
        async with http.get(f"{url}&offset={offset}") as response:
            body = await response.read()
        slowest = max(slowest, time.monotonic() - page_began)
        assert response.status == 200, (response.status, body[:200])
        page = json.loads(body)
        pages += 1
        largest = max(largest, len(body))
        points += page.get("points") or sum(len(e["points"]) for es in page["series"].values() for e in es)
        offset = page.get("next_offset")
    return time.monotonic() - began, pages, points, largest, slowest


WORST_NAMES = 16
PROBER = """
import json, sys, threading, time, urllib.request
url, answered, stop = sys.argv[1], [], threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.is_set():
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
    answered.append(time.monotonic())
    if len(answered) == 1:
        print("up", flush=True)
    time.sleep(0.02)
print(json.dumps(answered))
"""


async def serve_worst_case(per_name: int) -> None:
    """The server side, in its own process (so that the clients' work is not counted to it):
    a sidecar whose state holds the worst case; prints its port and serves until stdin ends."""
    from agent.config import load_config
    from agent.core.samples import CollectResult, sample
    from agent.core.signals import DynamoNames
    from agent.runtime.sidecar import Sidecar

    overrides = {
        "listen_host": "127.0.0.1",
        "listen_port": "0",
        "gpu_enabled": "false",
        "tcp_enabled": "false",
    }
    overrides |= {"frontend_url": "http://127.0.0.1:9", "worker_system_urls": "http://127.0.0.1:9"}
    sidecar = Sidecar(load_config(environ={}, overrides=overrides))
    await sidecar.start()
    names = sorted(DynamoNames().history_names())[:WORST_NAMES]
    state = sidecar.state
    labels = [{"instance": f"i{i:03d}", "model": "m" * 40} for i in range(per_name)]
    start = time.time() - 5.0 * state.ring_capacity
    for step in range(state.ring_capacity):
        samples = [
            sample(name, step * (i + 1) + 0.25 * (step % 3), **labels[i])
            for name in names
            for i in range(per_name)
        ]
        state.update("worst", CollectResult(samples=samples), now=start + 5.0 * step)
    gc.collect()
    lags: list[tuple[float, float]] = []  # (when, how late a 10 ms sleep woke): the loop's own stalls

    async def watch() -> None:
        while True:
            began = time.monotonic()
            await asyncio.sleep(0.01)
            now = time.monotonic()
            lags.append((now, now - began - 0.01))

    watcher = asyncio.create_task(watch())
    print(json.dumps({"port": sidecar.port, "names": names, "points": state.ring_capacity}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    watcher.cancel()
    print(json.dumps(lags), flush=True)
    await sidecar.stop()


async def worst_case_http(code: str, per_name: int, concurrent: int) -> dict[str, Any]:
    import subprocess

    import aiohttp

    sys.path.append(str(ROOT))  # after the measured checkout: only for the tests' helpers
    from tests.helpers import PeakRss

    child = subprocess.Popen(
        [sys.executable, __file__, "--code", code, "--serve", str(per_name)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline())
        base = f"http://127.0.0.1:{ready['port']}"
        url = base + "/history?" + "&".join(f"name={name}" for name in ready["names"])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            with PeakRss(child.pid) as one_rss:
                one = await _query(http, url)
            # /healthz polled every 20 ms from a process of its own: this one's loop is busy
            # reading and parsing the answers, which must not count as the server's stall.
            prober = subprocess.Popen(
                [sys.executable, "-c", PROBER, base + "/healthz"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert prober.stdout is not None and prober.stdin is not None
            prober.stdout.readline()  # its first answer
            # The same server idle first, over two collection cycles (5 s): the lag its own
            # cycle (the rules over 3,200 series, the render) makes, and the machine's noise.
            idle_from = time.monotonic()
            await asyncio.sleep(10.0)
            idle_until = time.monotonic()
            with PeakRss(child.pid) as many_rss:
                began = time.monotonic()
                many = await asyncio.gather(*(_query(http, url) for _ in range(concurrent)))
                elapsed = time.monotonic() - began
            prober.stdin.close()
            answered = json.loads(prober.stdout.read())
            prober.wait(10)
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        lags = json.loads(child.stdout.readline())
        loop_idle = [lag for at, lag in lags if idle_from < at <= idle_until]
        loop_busy = [lag for at, lag in lags if idle_until < at <= began + elapsed]
        idle = [b - a for a, b in pairwise(answered) if idle_from < b <= idle_until]
        gaps = [b - a for a, b in pairwise(answered) if b > idle_until]
        return {
            "series": len(ready["names"]) * per_name,
            "points_per_series": ready["points"],
            "one_query": {
                "seconds": round(one[0], 3),
                "pages": one[1],
                "points": one[2],
                "largest_answer_bytes": one[3],
                "slowest_answer_seconds": round(one[4], 3),
                "rss_base_mb": round(one_rss.base / 2**20, 1),
                "rss_growth_mb": round((one_rss.peak - one_rss.base) / 2**20, 1),
            },
            f"{concurrent}_at_once": {
                "seconds": round(elapsed, 3),
                "slowest_query_seconds": round(max(q[0] for q in many), 3),
                "slowest_answer_seconds": round(max(q[4] for q in many), 3),
                "healthz_answers": len(gaps),
                "healthz_longest_gap_seconds": round(max(gaps, default=0.0), 3),
                "healthz_gaps_over_0.5s": sum(gap > 0.5 for gap in gaps),
                "healthz_longest_gap_idle_seconds": round(max(idle, default=0.0), 3),
                "rss_peak_mb": round(many_rss.peak / 2**20, 1),
                "server_loop_longest_lag_seconds": round(max(loop_busy, default=0.0), 3),
                "server_loop_longest_lag_idle_seconds": round(max(loop_idle, default=0.0), 3),
            },
        }
    finally:
        if child.stdin and not child.stdin.closed:
            child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose agent/ to measure")
    parser.add_argument("--series", type=int, default=500, help="series per kind for the bytes measurement")
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-bytes", action="store_true")
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.code).resolve()))
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    if args.serve:
        asyncio.run(serve_worst_case(args.serve))
        return 0
    kinds = ["flat", "counter"] if args.smoke else ["flat", "counter", "gauge", "decimal", "float"]
    result: dict[str, Any] = {"code": args.code}
    if not args.skip_bytes:
        result["bytes_per_kept_series"] = bytes_per_series(kinds, 50 if args.smoke else args.series)
    if not args.smoke and not args.skip_bytes:
        result["realistic_mix"] = realistic_mix(str(Path(args.code).resolve()))
        result["reads"] = reads()
    if not args.skip_http:
        result["history_worst_case"] = asyncio.run(
            worst_case_http(str(Path(args.code).resolve()), 10 if args.smoke else 200, args.concurrent)
        )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
