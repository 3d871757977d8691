"""The shape of the sidecar's own /metrics at a fixed state: every series' name and labels,
in exposition order, values dropped (they move between runs). Used to check that a refactoring
of how metrics are emitted leaves the exposition unchanged:

    python bench/exposition_shape.py > before.txt   # on the old commit
    python bench/exposition_shape.py > after.txt    # on the new one
    diff before.txt after.txt

The state: bench/diagnose.py's 15-minute fill, then one run of every collector the default
config turns on (Dynamo endpoints absent: their error series are part of the shape), then the
exporter's render with the sidecar's extra samples (drain, canary, SLO, HTTP, OTLP).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import load_config
from agent.core.catalogue import PREFIX
from agent.runtime.sidecar import Sidecar
from bench.diagnose import fill


async def shape() -> list[str]:
    config = load_config(
        environ={},
        overrides={
            "listen_port": "0",
            "dynamo_interval": "5",
            "process_interval": "5",
            "frontend_url": "http://127.0.0.1:9",
            "worker_url": "http://127.0.0.1:9",
            "collector_timeout": "1",
        },
    )
    sidecar = Sidecar(config)
    now = time.time()
    fill(sidecar, now)
    for collector in sidecar.collectors:
        try:
            result = await asyncio.wait_for(collector.collect(), 5)
        except Exception as error:  # a collector that cannot run here is part of the shape
            print(f"# {collector.name}: {type(error).__name__}", file=sys.stderr)
            continue
        sidecar.state.update(collector.name, result, now=time.time())
        await collector.close()
    sidecar.exporter.render()
    body, _ = sidecar.exporter.body("text", False)
    lines = []
    for line in body.decode().splitlines():
        if line.startswith("# HELP") or not line.startswith(("# TYPE " + PREFIX, PREFIX)):
            continue
        lines.append(line.rsplit(" ", 1)[0] if not line.startswith("#") else line)
    return lines


if __name__ == "__main__":
    print("\n".join(asyncio.run(shape())))
