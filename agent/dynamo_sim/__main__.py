"""Run the simulated Dynamo on its own: `python -m agent.dynamo_sim --frontend-port 8000`.

Prints one JSON line with the ports once it listens; SIGTERM behaves like Dynamo's
frontend: 503 on /live and /health at once, in-flight requests finish, then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from agent.core.aio import wait_event
from agent.dynamo_sim.server import DynamoSim


async def _main(args: argparse.Namespace) -> None:
    sim = DynamoSim()
    sim.faults.token_delay = args.token_delay
    await sim.start(args.host, args.frontend_port, args.worker_port, args.control_port)
    print(json.dumps({"ports": sim.ports, "pid": __import__("os").getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Like Dynamo: report draining at once, let in-flight requests finish, then close.
    sim.faults.frontend_draining = True
    await wait_event(sim.idle, args.drain_timeout)
    # Like the real frontend, the listener stays a moment after the last stream ends.
    await asyncio.sleep(args.linger)
    await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.dynamo_sim")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--frontend-port", type=int, default=8000)
    parser.add_argument("--worker-port", type=int, default=9090)
    parser.add_argument("--control-port", type=int, default=None)
    parser.add_argument("--token-delay", type=float, default=0.002)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument(
        "--linger", type=float, default=1.0, help="seconds the port stays open after the drain"
    )
    args = parser.parse_args()
    try:
        asyncio.run(_main(args))
    except OSError as exc:
        print(f"dynamo_sim: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
