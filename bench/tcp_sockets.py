"""TCP collector cost at ten thousand sockets, against psutil.net_connections().

Opens N loopback connections (bounded: N <= 20000), then measures the CPU time of one
socket-table collection by the sidecar (netlink sock_diag with tcp_info, and the /proc
fallback) and of psutil.net_connections("tcp") over the same sockets, in one run. Then the
CPU (user + system, all threads) of whole collector runs, `await collector.collect()` as the
sidecar calls it every 10 s (sockets, tcp_info, kernel counters; no probes configured):
median and minimum over --runs runs. With --of-interest the connections go to a port the
collector treats as the frontend's, so every one of them is a socket whose tcp_info it reads.

    python bench/tcp_sockets.py              # 10,000 sockets (5,000 connections, both ends)
    python bench/tcp_sockets.py --sockets 0 --runs 300   # a pod's few sockets
    python bench/tcp_sockets.py --of-interest            # 10,000 sockets on the frontend port
    python bench/tcp_sockets.py --sockets 0 --ipv6       # and one IPv6 listener (TCP6 in use)
    python bench/tcp_sockets.py --smoke      # 1,000 sockets
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from collectors.tcp import TcpCollector


def open_sockets(target: int) -> tuple[list[socket.socket], int]:
    """`target` sockets (half client, half accepted) to one loopback listener: (held, its port)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = target + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    held = [listener]
    linger = struct.pack("ii", 1, 0)  # close with RST: leave no TIME_WAIT behind for the next run
    for _ in range(min(target, 20000) // 2):
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        held += [client, server]
    return held, port


def cpu_of(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return best


async def collect_cpu(collector: TcpCollector, runs: int) -> list[float]:
    """CPU seconds of each `collect()`; process_time counts the worker thread it uses too."""
    await collector.collect()  # warm: the first run also builds caches
    spent = []
    for _ in range(runs):
        started = time.process_time()
        await collector.collect()
        spent.append(time.process_time() - started)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="whole collector runs to time")
    parser.add_argument(
        "--of-interest", action="store_true", help="connect to the port the collector calls frontend"
    )
    parser.add_argument(
        "--ipv6", action="store_true", help="also hold one IPv6 listener, so TCP6 sockets are in use"
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.sockets, args.repeat, args.runs = 1000, 2, 3
    held, port = open_sockets(args.sockets)
    if args.ipv6:
        v6 = socket.socket(socket.AF_INET6)
        v6.bind(("::1", 0))
        v6.listen()
        held.append(v6)
    service = {port if args.of_interest else 8000: "frontend", 9345: "worker_system"}
    try:
        netlink = TcpCollector(1, 5, service_ports=service)
        procfs = TcpCollector(1, 5, service_ports=service, use_netlink=False)
        counted = sum(netlink.collect_sockets()[0].values())
        t_netlink = cpu_of(netlink.collect_sockets, args.repeat)
        t_procfs = cpu_of(procfs.collect_sockets, args.repeat)
        runs = asyncio.run(collect_cpu(TcpCollector(10, 5, service_ports=service), args.runs))
        t_psutil = (
            cpu_of(lambda: psutil.net_connections("tcp"), max(1, args.repeat // 2)) if args.sockets else 0.0
        )
    finally:
        for sock in held:
            sock.close()
    result = {
        "sockets_seen": counted,
        "netlink_cpu_ms": round(t_netlink * 1000, 2),
        "procfs_cpu_ms": round(t_procfs * 1000, 2),
        "psutil_net_connections_cpu_ms": round(t_psutil * 1000, 2),
        "speedup_vs_psutil": round(t_psutil / t_netlink, 1) if t_netlink and t_psutil else None,
        "netlink_method": netlink.method,
        "collect_runs": len(runs),
        "collect_cpu_ms_median": round(statistics.median(runs) * 1000, 2),
        "collect_cpu_ms_min": round(min(runs) * 1000, 2),
    }
    print(json.dumps(result, indent=1))
    budget_ok = args.smoke or args.sockets < 10000 or (t_netlink * 1000 < 30 and t_psutil / t_netlink >= 10)
    sys.exit(0 if counted >= args.sockets * 0.9 and budget_ok else 1)


if __name__ == "__main__":
    main()
