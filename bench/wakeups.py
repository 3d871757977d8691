"""What one wake-up of an idle asyncio process costs on this machine: an event loop with
nothing to do but a timer firing N times a second, its CPU time over the run divided by the
wake-ups. On a VM an idle CPU's wake-up goes through the hypervisor, and this is the price of
every timer, thread hand-off and socket event an idle sidecar has (bench/RESULTS.md).

    python bench/wakeups.py                 # 1 and 10 wake-ups a second, 30 s each
    python bench/wakeups.py --rates 2 --seconds 60
    python bench/wakeups.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def measure(rate: float, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    fired = 0

    def tick() -> None:
        nonlocal fired
        fired += 1
        loop.call_later(1 / rate, tick)

    loop.call_later(1 / rate, tick)
    await asyncio.sleep(0.5)  # settle: the first timers and the loop's own start-up
    fired_before, cpu_before, wall_before = fired, time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu_before
    wakeups = fired - fired_before
    return {
        "rate_per_second": rate,
        "seconds": round(time.monotonic() - wall_before, 1),
        "wakeups": wakeups,
        "cpu_percent_of_one_core": round(100 * cpu / seconds, 4),
        "cpu_us_per_wakeup": round(1e6 * cpu / max(1, wakeups), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    seconds = 2.0 if args.smoke else args.seconds
    results = [asyncio.run(measure(rate, seconds)) for rate in args.rates]
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
