"""TCP collector with real loopback listeners and clients, and in network namespaces with a
veth pair where loss, silent drops and resets are made with iptables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.sockets import port_filter
from collectors.tcp import ProbeTarget, TcpCollector, parse_probe_target, parse_role_map
from tests.helpers import free_port, wait_for_sync


def listener(backlog: int = 128) -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock, sock.getsockname()[1]


def sockets_count(counts, state: str, peer: str, direction: str) -> int:
    return counts.get((state, peer, direction), 0)


@pytest.mark.parametrize("netlink", [True, False], ids=["netlink", "procfs"])
def test_state_counts_match_what_was_created(netlink: bool) -> None:
    server, port = listener()
    service, service_port = listener()
    held: list[socket.socket] = [server, service]
    try:
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(7)]
        accepted = [server.accept()[0] for _ in clients]
        inbound = [socket.create_connection(("127.0.0.1", service_port)) for _ in range(3)]
        served = [service.accept()[0] for _ in inbound]
        held += clients + accepted + inbound + served
        collector = TcpCollector(
            1, 5, service_ports={service_port: "frontend"}, role_map=[f"{port}=etcd"], use_netlink=netlink
        )
        counts, per_peer, listening = collector.collect_sockets()
        assert collector.method == ("netlink" if netlink else "procfs")
        assert sockets_count(counts, "established", "etcd", "out") == 7
        assert sockets_count(counts, "established", "frontend", "in") == 3
        assert sockets_count(counts, "listen", "frontend", "listen") == 1
        assert service_port in listening and port in listening
        if netlink:
            assert "etcd" in per_peer and per_peer["etcd"][1] == 7  # tcp_info for all 7
            assert per_peer["etcd"][0] > 0
    finally:
        for sock in held:
            sock.close()


def test_close_wait_leak_is_visible() -> None:
    server, port = listener()
    try:
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        for _ in clients:
            conn, _ = server.accept()
            conn.close()  # the peer closes; our side never does: CLOSE_WAIT

        def close_wait() -> int:
            collector = TcpCollector(1, 5, service_ports={}, role_map=[f"{port}=nats"])
            return sockets_count(collector.collect_sockets()[0], "close_wait", "nats", "out")

        assert wait_for_sync(lambda: close_wait() == 5, timeout=5, what="5 CLOSE_WAIT sockets")
    finally:
        for sock in [server, *clients]:
            sock.close()


async def test_probe_outcomes_refused_timeout_dns_ok_http() -> None:
    from aiohttp import web

    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = runner.addresses[0][1]
    # A listener that never accepts, its backlog full: connects hang (SYNs dropped).
    stuck, stuck_port = listener(backlog=0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", stuck_port))
        fillers.append(filler)
    try:
        targets = [
            parse_probe_target(f"etcd=127.0.0.1:{free_port()}"),
            parse_probe_target(f"nats=nats://127.0.0.1:{stuck_port}"),
            parse_probe_target(f"frontend=http://127.0.0.1:{http_port}/health"),
            parse_probe_target("peer=no-such-host.invalid:4222"),
        ]
        collector = TcpCollector(1, 10, service_ports={}, probe_targets=targets, probe_timeout=0.5)
        result = await collector.collect()
        outcomes = {name: fact.outcome for name, fact in result.facts.probes.items()}
        assert outcomes[targets[0].name] == "refused"
        assert outcomes[targets[1].name] == "timeout"
        assert outcomes[targets[2].name] == "ok"
        assert outcomes[targets[3].name] in {"dns_error", "dns_timeout"}
        values = {(s.name, s.labels): s.value for s in result.samples}
        http_labels = (("role", "frontend"), ("target", targets[2].name))
        assert values[("dynamo_sidecar_probe_http_status_code", http_labels)] == 200
        assert ("dynamo_sidecar_probe_connect_seconds", http_labels) in values
        assert ("dynamo_sidecar_probe_dns_seconds", http_labels) in values
        kernel = result.facts.kernel
        assert "ListenOverflows" in kernel and "RetransSegs" in kernel
    finally:
        for sock in [stuck, *fillers]:
            sock.close()
        await runner.cleanup()


def test_listening_check_for_expected_ports() -> None:
    server, port = listener()
    closed = free_port()
    try:
        collector = TcpCollector(1, 5, service_ports={port: "frontend", closed: "worker_system"})
        result = asyncio.run(collector.collect())
        values = {
            (s.name, s.labels): s.value for s in result.samples if s.name == "dynamo_sidecar_tcp_listening"
        }
        assert values[("dynamo_sidecar_tcp_listening", (("port", str(port)), ("role", "frontend")))] == 1
        assert (
            values[("dynamo_sidecar_tcp_listening", (("port", str(closed)), ("role", "worker_system")))] == 0
        )
    finally:
        server.close()


def test_config_forms() -> None:
    # etcd answers `/` with 404: an etcd URL without a path is probed at its /health.
    assert parse_probe_target("etcd=http://etcd:2379") == ProbeTarget("etcd", "etcd", 2379, "/health")
    assert parse_probe_target("etcd=http://etcd:2379/") == ProbeTarget("etcd", "etcd", 2379, "/health")
    assert parse_probe_target("proxy=http://etcd:2379") == ProbeTarget("proxy", "etcd", 2379, "/")
    assert parse_probe_target("nats=nats://nats.dynamo:4222") == ProbeTarget("nats", "nats.dynamo", 4222, "")
    assert parse_probe_target("peer=10.0.0.5:9000").port == 9000
    with pytest.raises(ValueError):
        parse_probe_target("etcd")
    ports, networks = parse_role_map(["9345=router", "10.0.0.0/8=peers"])
    assert ports == {9345: "router"} and networks[0][1] == "peers"
    with pytest.raises(ValueError):
        parse_role_map(["nonsense=x"])
    # The kernel filter: >= and <= (8 bytes each) per port, a 4-byte JMP between conditions.
    assert len(port_filter([8000], [2379, 4222])) == 2 * 20 + 16


def test_cidr_roles() -> None:
    server, port = listener()
    try:
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        collector = TcpCollector(1, 5, service_ports={}, role_map=["127.0.0.0/8=loopback-peers"])
        counts = collector.collect_sockets()[0]
        assert sockets_count(counts, "established", "loopback-peers", "out") >= 2
    finally:
        for sock in (server, client, conn):
            sock.close()


# --- network namespaces: a client and a server host joined by a veth pair ---------------

NETNS_PREFIX = f"dsc{os.getpid() % 100000}"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


def _netns_possible() -> str:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = _run("ip", "netns", "add", NETNS_PREFIX + "probe", check=False)
    if probe.returncode != 0:
        return f"ip netns add not permitted: {probe.stderr.strip()}"
    _run("ip", "netns", "del", NETNS_PREFIX + "probe", check=False)
    return ""


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str]]:
    """(client netns, server netns, server address) on 10.231.x.0/24 inside our own namespaces."""
    reason = _netns_possible()
    if reason:
        pytest.skip(reason)
    client, server = NETNS_PREFIX + "c", NETNS_PREFIX + "s"
    subnet = f"10.231.{os.getpid() % 250}"
    try:
        _run("ip", "netns", "add", client)
        _run("ip", "netns", "add", server)
        _run(
            "ip",
            "link",
            "add",
            "veth" + NETNS_PREFIX[-6:] + "a",
            "type",
            "veth",
            "peer",
            "name",
            "veth" + NETNS_PREFIX[-6:] + "b",
        )
        _run("ip", "link", "set", "veth" + NETNS_PREFIX[-6:] + "a", "netns", client)
        _run("ip", "link", "set", "veth" + NETNS_PREFIX[-6:] + "b", "netns", server)
        _run("ip", "-n", client, "addr", "add", f"{subnet}.1/24", "dev", "veth" + NETNS_PREFIX[-6:] + "a")
        _run("ip", "-n", server, "addr", "add", f"{subnet}.2/24", "dev", "veth" + NETNS_PREFIX[-6:] + "b")
        for ns, dev in ((client, "a"), (server, "b")):
            _run("ip", "-n", ns, "link", "set", "veth" + NETNS_PREFIX[-6:] + dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        yield client, server, f"{subnet}.2"
    finally:
        _run("ip", "netns", "del", client, check=False)
        _run("ip", "netns", "del", server, check=False)


SERVER = """
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(64)
print("listening", flush=True)
def sink(conn):
    while conn.recv(65536): pass
while True:
    conn, _ = srv.accept(); threading.Thread(target=sink, args=(conn,), daemon=True).start()
"""

# Runs the collector inside the client namespace and prints its view as JSON.
PROBE = """
import asyncio, json, sys, socket, time
sys.path.insert(0, sys.argv[1])
from collectors.tcp import TcpCollector, parse_probe_target
host, port, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
collector = TcpCollector(1, 30, service_ports={}, role_map=[f"{port}=etcd"],
                         probe_targets=[parse_probe_target(f"etcd={host}:{port}")], probe_timeout=1.0)
before = asyncio.run(collector.collect()).facts
sent = 0
deadline = time.monotonic() + seconds
try:
    conn = socket.create_connection((host, port), timeout=2)
    conn.settimeout(2)
    payload = b"x" * 65536
    while time.monotonic() < deadline and sent < 200 * 1024 * 1024:
        try:
            sent += conn.send(payload)
        except socket.timeout:
            pass
except OSError as exc:
    print(json.dumps({"error": str(exc)}))
after = asyncio.run(collector.collect())
print(json.dumps({
    "before": before.kernel, "after": after.facts.kernel, "sent": sent,
    "probe": after.facts.probes[f"{host}:{port}"].outcome,
    "retrans_etcd": next((s.value for s in after.samples if s.name == "dynamo_sidecar_tcp_socket_retransmits" and dict(s.labels)["peer"] == "etcd"), None),
}))
"""


def _retransmit_ratio(view: dict) -> float:
    retrans = view["after"]["RetransSegs"] - view["before"]["RetransSegs"]
    sent = view["after"]["OutSegs"] - view["before"]["OutSegs"]
    return retrans / max(sent, 1)


def _in_ns(ns: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=timeout)


def _view(client: str, host: str, port: int, seconds: float) -> dict:
    import json

    result = _in_ns(
        client,
        sys.executable,
        "-c",
        PROBE,
        str(Path(__file__).resolve().parent.parent),
        host,
        str(port),
        str(seconds),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.netns
@pytest.mark.slow
def test_loss_raises_retransmits_and_drops_time_out_and_resets_refuse(two_hosts) -> None:
    client, server, address = two_hosts
    port = 4400
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server, sys.executable, "-c", SERVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
        clean = _view(client, address, port, 1.5)
        assert clean["probe"] == "ok"
        clean_ratio = _retransmit_ratio(clean)
        # 10% random loss on the server's input: retransmits rise.
        _in_ns(
            server,
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            str(port),
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.1",
            "-j",
            "DROP",
        )
        lossy = _view(client, address, port, 3)
        lossy_ratio = _retransmit_ratio(lossy)
        # A burst into a fresh veth queue already retransmits a little; 10% loss much more.
        assert lossy_ratio > max(0.02, clean_ratio * 2), (clean_ratio, lossy_ratio)
        assert lossy["retrans_etcd"] and lossy["retrans_etcd"] > 0  # seen per peer too (tcp_info)
        # Silent drop of everything: connects time out.
        _in_ns(server, "iptables", "-F", "INPUT")
        _in_ns(server, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP")
        assert _view(client, address, port, 0)["probe"] == "timeout"
        # Reset: refused, a different outcome.
        _in_ns(server, "iptables", "-F", "INPUT")
        _in_ns(
            server,
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            str(port),
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        )
        assert _view(client, address, port, 0)["probe"] == "refused"
    finally:
        srv.kill()
        srv.wait(timeout=10)
    _ = time
