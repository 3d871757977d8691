"""`dynamo-sidecar demo`: a simulated Dynamo (frontend + one worker) and the sidecar pointed
at it, in one process, with a little traffic. Nothing beyond the package is needed."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
from dataclasses import fields

import aiohttp

from agent.config import load_config
from agent.core import exitcodes
from agent.core.aio import wait_event
from agent.core.log import get as get_logger
from agent.dynamo_sim import DynamoSim, Faults
from agent.runtime.sidecar import Sidecar

log = get_logger("dynamo_sidecar.demo")
FAULT_NAMES = [f.name for f in fields(Faults)]
MAX_DEMO_REQUESTS = 100_000


async def _client(frontend_url: str, stop: asyncio.Event, period: float, client: int) -> None:
    """One client sending small completions, one at a time, `period` apart."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for index in range(MAX_DEMO_REQUESTS):
            if stop.is_set():
                return
            body = {"model": "tiny", "prompt": "hello", "max_tokens": 8, "stream": index % 3 == 0}
            headers = {"x-request-id": f"demo-{client}-{index}"}
            try:
                async with session.post(
                    f"{frontend_url}/v1/completions", json=body, headers=headers
                ) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                pass  # a fault knob can make the frontend fail; the sidecar will say so
            await wait_event(stop, period)


async def _traffic(frontend_url: str, stop: asyncio.Event, period: float, concurrency: int = 1) -> None:
    """Traffic so the rates and latency quantiles have data: `concurrency` clients at once
    (more than one lets `max_concurrency` build a queue)."""
    await asyncio.gather(*(_client(frontend_url, stop, period, c) for c in range(concurrency)))


def verify_command(frontend: str, sidecar: str, control: str) -> str:
    """A `verify` command line for this demo that runs as pasted: this very program, the
    demo's URLs, short phases, and the worker killed and restarted through the fault knobs."""
    program = sys.argv[0] if os.path.basename(sys.argv[0]) == "dynamo-sidecar" else ""
    words = [program] if program else [sys.executable, "-m", "agent.cli"]
    words += [
        "verify", "--frontend-url", frontend, "--sidecar-url", sidecar,
        "--phase-seconds", "standard=5,overload=5,recovery=15",
        "--fault-cmd", f"curl -s -X POST {control}/worker/kill",
        "--recover-cmd", f"curl -s -X POST {control}/worker/restart",
    ]  # fmt: skip
    return shlex.join(words)


async def run_demo(
    port: int,
    faults: dict[str, str],
    duration: float,
    host: str = "127.0.0.1",
    quiet: bool = False,
    concurrency: int = 1,
) -> int:
    sim = DynamoSim()
    sim.faults.update(faults)
    await sim.start(host, 0, 0, control_port=0)
    config = load_config(
        overrides={
            "listen_host": host,
            "listen_port": port,
            "frontend_url": sim.url("frontend"),
            "worker_system_urls": sim.url("worker"),
            "process_pid": os.getpid(),  # the simulated Dynamo lives in this process
            "process_interval": "2",
            "dynamo_interval": "2",
            "collector_timeout": "1.5",
            "http_timeout": "1",
            "startup_grace": "10",
        }
    )
    sidecar = Sidecar(config)
    try:
        await sidecar.start()
    except OSError as exc:
        await sim.stop()
        print(
            f"dynamo-sidecar demo: cannot listen on {host}:{port}: {exc.strerror} (try --port)",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    base = f"http://{host}:{sidecar.port}"
    control = sim.url("control")
    if not quiet:
        print(
            json.dumps(
                {
                    "sidecar": base,
                    "frontend": sim.url("frontend"),
                    "worker": sim.url("worker"),
                    "control": control,
                }
            ),
            flush=True,
        )
        print(
            f"""
dynamo-sidecar demo is running (Ctrl-C stops everything).

  simulated Dynamo frontend   {sim.url("frontend")}   (/health /live /metrics /v1/models /v1/completions)
  simulated worker system     {sim.url("worker")}   (/health /live /metrics)

  Prometheus metrics          curl {base}/metrics
  what is wrong, and why      curl {base}/diagnose?format=text     (or open {base}/diagnose?format=html)
  sidecar status              curl {base}/status

  make it misbehave           curl -X POST {control}/faults -d '{{"worker_notready": true}}'
                              curl -X POST {control}/frontend/stop      (kill the frontend)
                              curl -X POST {control}/worker/kill        (SIGKILL-like worker death)
  and well again              curl -X POST {control}/faults -d '{{"worker_notready": false}}'
                              curl -X POST {control}/frontend/start
                              curl -X POST {control}/worker/restart
  fault knobs: {", ".join(FAULT_NAMES)}

  fault drill, in a second terminal (25 s; the worker is killed in overload, restarted for recovery):
    {verify_command(sim.url("frontend"), base, control)}
""",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    traffic = asyncio.create_task(_traffic(sim.url("frontend"), stop, 0.5, concurrency))
    try:
        if duration > 0:
            await asyncio.wait_for(stop.wait(), timeout=duration)
        else:
            await stop.wait()
    except TimeoutError:
        pass
    stop.set()
    await asyncio.gather(traffic, return_exceptions=True)
    await sidecar.stop()
    await sim.stop()
    if not quiet:
        print("demo stopped", flush=True)
    return 0
