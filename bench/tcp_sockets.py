"""TCP collector cost at ten thousand sockets, against psutil.net_connections().

Opens N loopback connections (bounded: N <= 20000), then measures the CPU time of one
socket-table collection by the sidecar (netlink sock_diag with tcp_info, and the /proc
fallback) and of psutil.net_connections("tcp") over the same sockets, in one run.

    python bench/tcp_sockets.py              # 10,000 sockets (5,000 connections, both ends)
    python bench/tcp_sockets.py --smoke      # 1,000 sockets
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from collectors.tcp import TcpCollector


def open_sockets(target: int) -> list[socket.socket]:
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
    return held


def cpu_of(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.sockets, args.repeat = 1000, 2
    held = open_sockets(args.sockets)
    try:
        netlink = TcpCollector(1, 5, service_ports={8000: "frontend"})
        procfs = TcpCollector(1, 5, service_ports={8000: "frontend"}, use_netlink=False)
        counted = sum(netlink.collect_sockets()[0].values())
        t_netlink = cpu_of(netlink.collect_sockets, args.repeat)
        t_procfs = cpu_of(procfs.collect_sockets, args.repeat)
        t_psutil = cpu_of(lambda: psutil.net_connections("tcp"), max(1, args.repeat // 2))
    finally:
        for sock in held:
            sock.close()
    result = {
        "sockets_seen": counted,
        "netlink_cpu_ms": round(t_netlink * 1000, 2),
        "procfs_cpu_ms": round(t_procfs * 1000, 2),
        "psutil_net_connections_cpu_ms": round(t_psutil * 1000, 2),
        "speedup_vs_psutil": round(t_psutil / t_netlink, 1) if t_netlink else None,
        "netlink_method": netlink.method,
    }
    print(json.dumps(result, indent=1))
    budget_ok = args.smoke or (t_netlink * 1000 < 30 and t_psutil / t_netlink >= 10)
    sys.exit(0 if counted >= args.sockets * 0.9 and budget_ok else 1)


if __name__ == "__main__":
    main()
