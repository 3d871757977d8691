"""Runs the GPU collector in a process of its own, as production does: NVML is whatever
`libnvidia-ml.so.1` the dynamic loader finds (the tests point LD_LIBRARY_PATH at the fake).

    python tests/gpu_driver.py STEPS_JSON
STEPS_JSON: a list of {"state": "<file text>" (optional), "events": "<lines to append>"
(optional), "sleep": seconds (optional), "timeout": seconds (optional)}; a collection runs
after each step. Prints one JSON line per collection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectors.gpu import GpuCollector


async def main(steps: list[dict]) -> None:
    state_path = os.environ.get("FAKE_NVML_STATE", "")
    events_path = os.environ.get("FAKE_NVML_EVENTS", "")
    collector = GpuCollector(1, 5, dynamo_pids=lambda: {os.getpid(): "dynamo.mocker"})
    for step in steps:
        if "state" in step and state_path:
            Path(state_path).write_text(step["state"].replace("SELF_PID", str(os.getpid())))
            os.utime(state_path, ns=(time.time_ns(), time.time_ns()))
        if "events" in step and events_path:
            with open(events_path, "a") as handle:
                handle.write(step["events"])
        if step.get("sleep"):
            await asyncio.sleep(step["sleep"])
        started = time.process_time()
        try:
            result = await asyncio.wait_for(collector.collect(), timeout=step.get("timeout", 5))
            out = {
                "samples": [[s.name, dict(s.labels), s.value] for s in result.samples],
                "events": [e.to_dict() for e in result.events],
                "facts": dataclasses.asdict(result.facts) if result.facts is not None else None,
            }
        except Exception as exc:  # what the scheduler would record
            out = {"error": f"{type(exc).__name__}: {exc}"}
        out["cpu_seconds"] = time.process_time() - started
        print(json.dumps(out, default=str), flush=True)
    await collector.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
    # As the sidecar does: leave without joining a worker thread still inside a slow NVML
    # call (the slow-driver test leaves one there for seconds).
    sys.stdout.flush()
    os._exit(0)
