"""What idle connections cost, and whether one peer can lock others out, for both HTTP
servers: the webhook (TLS) and the sidecar (plain HTTP), each run as its own process.

1. Memory: RSS of the server before, while IDLE idle connections are held from one peer
   (TLS handshakes completed for the webhook), and after they are closed; the difference
   per connection.
2. Fairness: a peer at 127.0.0.2 holds FLOOD connections (more than the server's cap) and
   re-opens each one the server closes; meanwhile 127.0.0.1 asks /healthz and /metrics 40
   times each on fresh connections (2 s timeout each), as the kubelet and Prometheus do.
   Also the server's RSS during the flood.

    python bench/connections.py                    # IDLE 150, FLOOD 1000, both servers
    python bench/connections.py --server webhook --idle 1000 --flood 1000
    python bench/connections.py --smoke            # IDLE 20, FLOOD 300, 5 probes each

Loopback has one address per peer: 127.0.0.2 is the second peer (all of 127/8 is loopback
on Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOLDER = ROOT / "tests" / "conn_holder.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def start_server(kind: str, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind == "webhook":
        cert, key = make_certificate(directory)
        args = [
            "webhook",
            "--image=registry.test/dynamo-sidecar:test",
            f"--tls-cert-file={cert}",
            f"--tls-key-file={key}",
            "--listen-host=127.0.0.1",
        ]
        url = f"https://127.0.0.1:{port}"
    else:
        args = ["run", "--listen-host=127.0.0.1", "--tcp-enabled=false", "--startup-grace=0"]
        url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *args, f"--listen-port={port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, url


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def get(url: str, timeout: float = 2.0) -> int:
    """Status of one GET on a fresh connection from 127.0.0.1; 0 if it failed or timed out."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0), force_close=True, ssl=client_tls())
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session,
            session.get(url) as response,
        ):
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return 0


async def wait_up(url: str, deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if await get(url + "/healthz") == 200:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def hold(url: str, count: int, reopen: bool) -> tuple[subprocess.Popen[str], int]:
    port = int(url.rsplit(":", 1)[1])
    args = [sys.executable, str(HOLDER), f"--port={port}", "--source=127.0.0.2", f"--count={count}"]
    args += ["--tls"] if url.startswith("https") else []
    args += ["--reopen"] if reopen else []
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = json.loads(proc.stdout.readline())
    return proc, int(line["open"])


def release(proc: subprocess.Popen[str]) -> dict[str, int]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    out = proc.stdout.read()
    proc.wait(timeout=30)
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


async def settle(pid: int, seconds: float = 1.5) -> float:
    """RSS once it stops moving (a few samples apart), at most a few seconds."""
    last = rss_mb(pid)
    end = time.monotonic() + seconds * 4
    while time.monotonic() < end:
        await asyncio.sleep(seconds / 3)
        now = rss_mb(pid)
        if abs(now - last) < 0.2:
            return now
        last = now
    return last


async def measure(kind: str, idle: int, flood: int, probes: int, quick: bool = False) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(kind, Path(tmp))
        try:
            await wait_up(url)
            pause = 0.3 if quick else 1.5
            before = await settle(proc.pid, pause)
            holder, held = hold(url, idle, reopen=False)
            during = await settle(proc.pid, pause)
            release(holder)
            after = await settle(proc.pid, pause * 2)
            result: dict[str, object] = {
                "server": kind,
                "idle_connections_held": held,
                "rss_before_mb": round(before, 1),
                "rss_idle_mb": round(during, 1),
                "rss_after_close_mb": round(after, 1),
                "kb_per_idle_connection": round((during - before) * 1024 / max(held, 1), 1),
            }
            holder, held = hold(url, flood, reopen=True)
            try:
                healthz = [await get(url + "/healthz") for _ in range(probes)]
                metrics = [await get(url + "/metrics") for _ in range(probes)]
                flood_rss = rss_mb(proc.pid)
            finally:
                counts = release(holder)
            result.update(
                {
                    "flood_connections_asked": flood,
                    "flood_held_at_start": held,
                    "flood_opened_total": counts.get("opened"),
                    "rss_during_flood_mb": round(flood_rss, 1),
                    "healthz_answered": f"{healthz.count(200)}/{probes}",
                    "metrics_answered": f"{metrics.count(200)}/{probes}",
                }
            )
            return result
        finally:
            # SIGTERM would start the sidecar's drain, which waits for a Dynamo that is not here.
            proc.kill()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["webhook", "sidecar", "both"], default="both")
    parser.add_argument("--idle", type=int, default=150)
    parser.add_argument("--flood", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.idle, args.flood, args.probes = 20, 300, 5
    if shutil.which("openssl") is None and args.server != "sidecar":
        print("openssl not installed: cannot make the webhook's certificate", file=sys.stderr)
        sys.exit(3)
    kinds = ["webhook", "sidecar"] if args.server == "both" else [args.server]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for kind in kinds:
        result = asyncio.run(measure(kind, args.idle, args.flood, args.probes, quick=args.smoke))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
