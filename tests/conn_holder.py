"""Hold idle connections to a server from one source address, as a misbehaving peer would:
open COUNT connections (TLS handshakes completed with --tls), send nothing, and with
--reopen open a new one each time the server closes one. Run as its own process so its
work does not share the server's interpreter.

    python tests/conn_holder.py --port 9443 --source 127.0.0.2 --count 300 --tls --reopen

Prints one JSON line {"event": "holding", "open": N} once the first round of connects is
done, and {"event": "done", ...} with its counts when stdin closes or SIGTERM arrives.
Standalone on purpose (no project imports): the tests and bench/connections.py run it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
from collections.abc import AsyncIterator


class Holder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.open = 0
        self.opened = 0
        self.closed_by_server = 0
        self.failed = 0
        self.stopping = False
        self.first_round = asyncio.Event()
        self.writers: set[asyncio.StreamWriter] = set()
        self.tls: ssl.SSLContext | None = None
        if args.tls:
            self.tls = ssl.create_default_context()
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE

    async def one(self) -> bool:
        """Hold one connection until the server closes it; False if it could not connect."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.args.host,
                    self.args.port,
                    ssl=self.tls,
                    local_addr=(self.args.source, 0),
                    server_hostname="" if self.tls else None,
                ),
                timeout=10,
            )
        except (OSError, TimeoutError, ssl.SSLError):
            self.failed += 1
            self.progress()
            return False
        if self.stopping:  # connected as the stop came (a cancel wait_for lost)
            writer.transport.abort()
            return False
        self.open += 1
        self.opened += 1
        self.progress()
        self.writers.add(writer)
        try:
            await reader.read(1)  # b"" when the server closes it; it never sends otherwise
            self.closed_by_server += 1
        except (OSError, ssl.SSLError):
            self.closed_by_server += 1
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.transport.abort()
        return True

    def progress(self) -> None:
        if self.opened + self.failed >= self.args.count:
            self.first_round.set()

    async def slot(self) -> None:
        # A flag as well as the cancellation: Python 3.11's wait_for can lose a cancel that
        # arrives as the connect completes, and a slot would then go on forever.
        while not self.stopping:
            ok = await self.one()
            if not self.args.reopen:
                return
            if not ok:
                await asyncio.sleep(0.01)  # refused at connect: the listen queue is full

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
        slots = []
        for _ in range(self.args.count):
            slots.append(asyncio.create_task(self.slot()))
            await asyncio.sleep(0)  # let each connect start before the next
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.first_round.wait(), 20)
        print(json.dumps({"event": "holding", "open": self.open}), flush=True)
        await stop.wait()
        self.stopping = True
        for writer in list(self.writers):  # ends every read(1) even if a cancel gets lost
            writer.transport.abort()
        for task in slots:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.gather(*slots, return_exceptions=True), 5)
        print(
            json.dumps(
                {
                    "event": "done",
                    "opened": self.opened,
                    "closed_by_server": self.closed_by_server,
                    "failed": self.failed,
                }
            ),
            flush=True,
        )


@contextlib.asynccontextmanager
async def holding(
    port: int, count: int, *, tls: bool = False, reopen: bool = True, source: str = "127.0.0.2"
) -> AsyncIterator[dict[str, int]]:
    """For tests on the server's own event loop: this script as a subprocess, holding
    `count` connections from `source` while the block runs; yields its counts (filled in
    when it has stopped)."""
    args = [sys.executable, __file__, f"--port={port}", f"--source={source}", f"--count={count}"]
    args += ["--tls"] if tls else []
    args += ["--reopen"] if reopen else []
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    counts: dict[str, int] = {}
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        counts["held_at_start"] = first["open"]
        yield counts
    finally:
        proc.stdin.close()
        try:
            out = await asyncio.wait_for(proc.stdout.read(), 30)
            lines = out.decode().strip().splitlines()
            if lines:
                counts.update(json.loads(lines[-1]))
        finally:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.2", help="local address to connect from")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--reopen", action="store_true", help="open a new connection for each one closed")
    asyncio.run(Holder(parser.parse_args()).run())


if __name__ == "__main__":
    main()
