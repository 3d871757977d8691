"""The TCP collector's sock_diag dumps: one walk of the kernel's socket hash (census and
tcp_info together, IPv4 and IPv6 in one AF_UNSPEC dump) gives what the two dumps per family
gave, on sockets these tests create; and where the kernel refuses netlink, one recorded error
and the /proc fallback."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from collectors.sockets import tcp_in_use
from collectors.tcp import TcpCollector
from tests.helpers import wait_for_sync

ROOT = Path(__file__).resolve().parent.parent
SCOPED_STATES = {"established", "listen", "close_wait"}


def _listen(host: str, family: int = socket.AF_INET) -> tuple[socket.socket, int]:
    sock = socket.socket(family)
    sock.bind((host, 0))
    sock.listen(64)
    return sock, sock.getsockname()[1]


def _connect(
    host: str, port: int, server: socket.socket, held: list[socket.socket]
) -> tuple[socket.socket, socket.socket]:
    client = socket.create_connection((host, port), timeout=5)
    accepted, _ = server.accept()
    held += [client, accepted]
    return client, accepted


def _modes(service: dict[int, str], role_map: list[str]) -> dict[str, TcpCollector]:
    """The same configuration read four ways: the default, one dump carrying tcp_info (both
    families at once), census plus a kernel-filtered tcp_info dump per family (the collector
    before issue 28), and /proc."""
    single = TcpCollector(1, 5, service_ports=service, role_map=role_map)
    single.single_dump_max = 10**9
    per_family = TcpCollector(1, 5, service_ports=service, role_map=role_map)
    per_family.single_dump_max = -1
    per_family.any_family = False
    return {
        "default": TcpCollector(1, 5, service_ports=service, role_map=role_map),
        "single": single,
        "per_family": per_family,
        "procfs": TcpCollector(1, 5, service_ports=service, role_map=role_map, use_netlink=False),
    }


def _view(
    collector: TcpCollector, peers: set[str]
) -> tuple[dict[tuple[str, str, str], int], dict[str, list[float]]]:
    """Counts of the test's own peers in the states it made, and per peer: sockets with an rtt
    (its value moves with timing), retransmits, lost, send and receive queue bytes."""
    counts, per_peer, _ = collector.collect_sockets()
    scoped = {key: n for key, n in counts.items() if key[1] in peers and key[0] in SCOPED_STATES}
    aggregates = {peer: [v[1], v[2], v[3], v[4], v[5]] for peer, v in per_peer.items() if peer in peers}
    return scoped, aggregates


def test_one_dump_counts_and_tcp_info_match_the_two_dumps_per_family() -> None:
    held: list[socket.socket] = []
    # A loopback address only this test talks to, for a CIDR role (that path keeps every row
    # and reads the remote address of each: IPv4 addresses must come out as 4 bytes).
    cidr_host = f"127.13.{os.getpid() % 250}.7"
    try:
        service4, port4 = _listen("127.0.0.1")
        peer, peer_port = _listen("127.0.0.1")
        by_address, address_port = _listen(cidr_host)
        held += [service4, peer, by_address]
        service = {port4: "t_svc"}
        try:
            service6, port6 = _listen("::1", socket.AF_INET6)
        except OSError:  # no IPv6 loopback here: the IPv4 half still compares
            service6, port6 = None, 0
        if service6 is not None:
            held.append(service6)
            service[port6] = "t_svc6"
        clients4 = [_connect("127.0.0.1", port4, service4, held)[0] for _ in range(3)]
        if service6 is not None:
            for _ in range(2):
                _connect("::1", port6, service6, held)
        for _ in range(4):
            _connect("127.0.0.1", peer_port, peer, held)
        for _ in range(2):  # the peer closes, this side never does: CLOSE_WAIT
            _connect("127.0.0.1", peer_port, peer, held)[1].close()
        for _ in range(2):
            _connect(cidr_host, address_port, by_address, held)
        # Unread bytes in the service's receive queues: queue sizes compare too.
        for client in clients4:
            client.sendall(b"x" * 100)

        role_map = [f"{peer_port}=t_peer", f"{cidr_host}/32=t_cidr"]
        peers = {"t_svc", "t_svc6", "t_peer", "t_cidr"}
        expected = {
            ("listen", "t_svc", "listen"): 1,
            ("established", "t_svc", "in"): 3,
            ("established", "t_svc", "out"): 3,
            ("established", "t_peer", "out"): 4,
            ("close_wait", "t_peer", "out"): 2,
            ("established", "t_cidr", "out"): 2,
        }
        if service6 is not None:
            expected |= {
                ("listen", "t_svc6", "listen"): 1,
                ("established", "t_svc6", "in"): 2,
                ("established", "t_svc6", "out"): 2,
            }
        modes = _modes(service, role_map)
        # The CLOSE_WAITs and the queued bytes land asynchronously: wait for the old path to
        # see them all, then read every way.
        wait_for_sync(
            lambda: (
                _view(modes["per_family"], peers)[0] == expected
                and _view(modes["per_family"], peers)[1]["t_svc"][4] == 300
            ),
            timeout=10,
            what="the test's sockets as created",
        )
        views = {name: _view(collector, peers) for name, collector in modes.items()}
        for name, (counts, _) in views.items():
            assert counts == expected, name
        for name in ("default", "single", "per_family"):
            assert modes[name].method == "netlink", name
        # tcp_info: the established sockets on a service port (local) or peer port (remote).
        with_rtt = {"t_svc": 3, "t_peer": 4} | ({"t_svc6": 2} if service6 is not None else {})
        old = views["per_family"][1]
        assert {peer_: old[peer_][0] for peer_ in with_rtt} == with_rtt
        # No loss on loopback: nothing retransmitted, nothing lost (the netns test below
        # makes some and compares those too).
        assert {peer_: old[peer_][1:3] for peer_ in with_rtt} == {peer_: [0, 0] for peer_ in with_rtt}
        assert old["t_svc"][4] == 300  # receive queue bytes of the service's sockets
        for name in ("default", "single"):
            assert views[name][1] == old, name
        # procfs has no tcp_info; its receive queues agree. (Send queues do not: sock_diag
        # gives a listener's backlog limit there, /proc/net/tcp 0.)
        assert views["procfs"][1]["t_svc"][4] == 300
        # Dumps made: the old way one census and one tcp_info dump per family in use (this
        # test holds IPv6 sockets); the default one AF_UNSPEC dump while the namespace has
        # few sockets, two (census, filtered tcp_info) when others hold many.
        assert modes["per_family"].dumps == (4 if service6 is not None else 2)
        assert modes["single"].dumps == 1
        in_use = tcp_in_use()
        assert in_use is not None and in_use >= len(held) - 2  # the two closed ends aside
        assert modes["default"].dumps == (1 if in_use <= modes["default"].single_dump_max else 2)
    finally:
        for sock in held:
            sock.close()


# Runs inside a fresh network namespace (unshare --net): loopback with 20% of the segments to
# the peer port dropped by iptables, clients pushing data through it, then the collector's
# view read the three netlink ways once every send queue has drained.
LOSSY = """
import json, socket, sys, threading, time, subprocess
sys.path.insert(0, sys.argv[1])
from collectors.tcp import TcpCollector
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
hosts = [("127.0.0.1", socket.AF_INET, "iptables")]
if socket.has_ipv6:
    hosts.append(("::1", socket.AF_INET6, "ip6tables"))
listeners = []
port = 0
for host, family, _ in hosts:
    srv = socket.socket(family); srv.bind((host, port)); srv.listen(16)
    port = srv.getsockname()[1]
    listeners.append(srv)
for _, _, tool in hosts:
    subprocess.run([tool, "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-m", "statistic",
                    "--mode", "random", "--probability", "0.2", "-j", "DROP"], check=True)
def sink(conn):
    while conn.recv(65536):
        pass
clients = []
for (host, family, _), srv in zip(hosts, listeners):
    for _ in range(3):
        client = socket.create_connection((host, port), timeout=30)
        conn, _ = srv.accept()
        threading.Thread(target=sink, args=(conn,), daemon=True).start()
        clients.append(client)
for client in clients:
    client.sendall(b"x" * 300_000)
service = {}
role_map = [f"{port}=t_peer"]
modes = {"default": TcpCollector(1, 5, service_ports=service, role_map=role_map)}
modes["single"] = TcpCollector(1, 5, service_ports=service, role_map=role_map)
modes["single"].single_dump_max = 10**9
modes["per_family"] = TcpCollector(1, 5, service_ports=service, role_map=role_map)
modes["per_family"].single_dump_max = -1
modes["per_family"].any_family = False
def view(collector):
    counts, per_peer, _ = collector.collect_sockets()
    agg = per_peer.get("t_peer", [0.0] * 6)
    return {"counts": {"/".join(k): n for k, n in counts.items() if k[1] == "t_peer"},
            "tcp_info": [agg[1], agg[2], agg[3], agg[4]], "dumps": collector.dumps}
deadline = time.monotonic() + 60
while view(modes["per_family"])["tcp_info"][3] and time.monotonic() < deadline:
    time.sleep(0.1)  # polling for the send queues to drain, with a deadline
print(json.dumps({"families": len(hosts), **{name: view(c) for name, c in modes.items()}}))
"""


@pytest.mark.netns
@pytest.mark.slow
def test_retransmits_and_lost_match_under_loss() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN) for a network namespace and iptables")
    for tool in ("unshare", "ip", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", LOSSY, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    views = json.loads(result.stdout.strip().splitlines()[-1])
    old = views["per_family"]
    connections = 3 * views["families"]
    assert old["counts"] == {"established/t_peer/out": connections}
    with_rtt, retransmits, _lost, send_queue = old["tcp_info"]
    assert (with_rtt, send_queue) == (connections, 0)
    assert retransmits > 0  # 20% of the segments dropped: the clients retransmitted
    assert views["default"] == views["single"] == old | {"dumps": 1}
    assert old["dumps"] == 2 * views["families"]


# Runs with a seccomp filter that refuses socket(AF_NETLINK, ...) with EPERM, as a locked-down
# container's profile can: the collector records one error, falls back to /proc, and counts.
REFUSED = """
import asyncio, ctypes, json, platform, socket, struct, sys
sys.path.insert(0, sys.argv[1])
from collectors.tcp import TcpCollector
arch, nr_socket = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}[platform.machine()]
LD, JEQ, RET = 0x20, 0x15, 0x06
program = [
    (LD, 0, 0, 4), (JEQ, 0, 5, arch),          # seccomp_data.arch, else allow
    (LD, 0, 0, 0), (JEQ, 0, 3, nr_socket),     # seccomp_data.nr == socket, else allow
    (LD, 0, 0, 16), (JEQ, 0, 1, socket.AF_NETLINK),  # args[0] (domain), else allow
    (RET, 0, 0, 0x00050000 | 1),               # SECCOMP_RET_ERRNO | EPERM
    (RET, 0, 0, 0x7FFF0000),                   # SECCOMP_RET_ALLOW
]
code = b"".join(struct.pack("=HBBI", *op) for op in program)
buffer = ctypes.create_string_buffer(code)
prog = struct.pack("@HP", len(program), ctypes.addressof(buffer))  # struct sock_fprog
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4  # a pointer passed as an int: 64 bits
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
prog_buffer = ctypes.create_string_buffer(prog)
assert libc.prctl(22, 2, ctypes.addressof(prog_buffer), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
port = srv.getsockname()[1]
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
held += [srv.accept()[0] for _ in range(3)]
collector = TcpCollector(1, 5, service_ports={port: "t_svc"})
runs = []
for _ in range(2):
    result = asyncio.run(collector.collect())
    runs.append({
        "method": result.facts.method, "error": result.facts.netlink_error, "dumps": collector.dumps,
        "retries_netlink": collector.use_netlink,
        "counts": {"/".join(k): n for k, n in collector.collect_sockets()[0].items() if k[1] == "t_svc"},
        "method_samples": sorted(dict(s.labels)["method"] for s in result.samples
                                 if s.name == "dynamo_sidecar_tcp_collection_method"),
    })
print(json.dumps(runs))
"""


def test_netlink_refused_records_one_error_and_reads_proc() -> None:
    if platform.machine() not in {"x86_64", "aarch64"}:
        pytest.skip(f"the seccomp filter here knows x86_64 and aarch64, not {platform.machine()}")
    result = subprocess.run(
        [sys.executable, "-c", REFUSED, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    counts = {"listen/t_svc/listen": 1, "established/t_svc/in": 3, "established/t_svc/out": 3}
    for run in runs:  # the second run says the same, and netlink is not tried every cycle
        assert run == {
            "method": "procfs",
            "error": "[Errno 1] Operation not permitted",
            "dumps": 0,
            "retries_netlink": False,
            "counts": counts,
            "method_samples": ["procfs"],
        }


def test_sockets_of_interest_do_not_count_against_the_single_dump() -> None:
    """Their tcp_info is read either way; only the rest would make one dump dearer than two."""
    held: list[socket.socket] = []
    try:
        server, port = _listen("127.0.0.1")
        held.append(server)
        for _ in range(100):
            _connect("127.0.0.1", port, server, held)
        collector = TcpCollector(1, 5, service_ports={port: "t_svc"})
        in_use = tcp_in_use()
        assert in_use is not None
        # 50 under the namespace's count: the first run, knowing of no socket of interest,
        # makes two dumps; it sees 100 (the accepted ends), so the next run makes one.
        collector.single_dump_max = in_use - 50
        first = collector.collect_sockets()
        assert collector.dumps == 2
        second = collector.collect_sockets()
        assert collector.dumps == 1
        for counts, per_peer, _ in (first, second):
            assert counts[("established", "t_svc", "in")] == 100
            assert per_peer["t_svc"][1] == 100  # tcp_info of each, either way
    finally:
        for sock in held:
            sock.close()
