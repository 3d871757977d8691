"""The sidecar's own HTTP server under abuse: slow and idle connections, a connection flood,
mutating endpoints from the wrong address, headers that are not ASCII."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time

import aiohttp
import pytest

from tests.conn_holder import holding
from tests.helpers import base_url, get_text, wait_for


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection within `seconds` (recv returns b'')."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


async def test_slowloris_and_idle_connections_are_closed(sim, make_sidecar) -> None:
    sidecar = await make_sidecar(sim, http_idle_timeout="1")
    port = sidecar.port
    idle = socket.create_connection(("127.0.0.1", port))
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    started = time.monotonic()
    closed = await asyncio.gather(
        asyncio.to_thread(_closed_within, idle, 10), asyncio.to_thread(_closed_within, slow, 10)
    )
    assert closed == [True, True]
    assert time.monotonic() - started < 10
    idle.close()
    slow.close()


async def test_a_connection_flood_is_capped_and_counted(sim, make_sidecar, http) -> None:
    sidecar = await make_sidecar(sim, max_connections="20", http_idle_timeout="30")
    flood = [socket.create_connection(("127.0.0.1", sidecar.port)) for _ in range(40)]
    try:
        await wait_for(lambda: sidecar.connections.refused >= 15, timeout=10, what="connections refused")
        assert sidecar.connections.active <= 20 + 1
    finally:
        for sock in flood:
            sock.close()
    # Once the flood is gone, service is back.
    status, text = await get_text(http, base_url(sidecar) + "/metrics")
    assert status == 200 and "dynamo_sidecar_http_connections_refused_total" in text


async def _answered(url: str, count: int) -> int:
    """GETs answered 200 out of `count`, each on a fresh connection from 127.0.0.1 with 2 s."""
    answered = 0
    for _ in range(count):
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0), force_close=True)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(url) as response,
            ):
                await response.read()
                answered += response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            pass
    return answered


async def test_one_peer_holding_the_cap_does_not_lock_out_probes_and_scrapes(sim, make_sidecar) -> None:
    """127.0.0.2 opens more connections than max_connections and re-opens every one the
    sidecar closes; the kubelet's /healthz and Prometheus's /metrics from 127.0.0.1 still
    answer (before: 3/40 and 1/40 with the 256 cap held)."""
    sidecar = await make_sidecar(sim, max_connections="64", http_idle_timeout="30")
    limiter = sidecar.connections
    async with holding(sidecar.port, 80) as counts:
        assert counts["held_at_start"] > limiter.per_peer // 2
        healthz = await _answered(base_url(sidecar) + "/healthz", 20)
        held = len(limiter.by_peer.get("127.0.0.2", {}))
        metrics = await _answered(base_url(sidecar) + "/metrics", 20)
        assert 0 < held <= limiter.per_peer and limiter.active <= limiter.limit
    assert healthz >= 18 and metrics >= 18, (healthz, metrics)
    assert limiter.refused > 0


async def test_drain_refused_from_a_mesh_proxy_address(sim, make_sidecar) -> None:
    """Istio delivers outside traffic from 127.0.0.6: that is not the pod's own loopback."""
    sidecar = await make_sidecar(sim)
    await wait_for(lambda: sidecar.ready, what="ready")
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.6", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(base_url(sidecar) + "/drain") as response,
    ):
        assert response.status == 403
    assert not sidecar.draining and sidecar.ready


async def test_non_ascii_authorization_is_a_400_not_a_500(sim, make_sidecar) -> None:
    sidecar = await make_sidecar(sim, auth_token="s3cret")

    def post() -> bytes:
        with socket.create_connection(("127.0.0.1", sidecar.port)) as sock:
            sock.sendall(
                b"POST /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe2\x82\xac\r\n"
                b"Content-Length: 0\r\n\r\n"
            )
            sock.settimeout(5)
            return sock.recv(4096)

    answer = await asyncio.to_thread(post)  # the server runs on this test's event loop
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert not sidecar.draining


@pytest.mark.netns
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to create a network namespace",
)
async def test_drain_refused_from_another_network_namespace(sim, make_sidecar) -> None:
    """A caller in another namespace reaches the sidecar through a veth pair; no token, no drain."""
    ns = f"dsc{os.getpid() % 100000}"
    host_if, ns_if = f"dh{os.getpid() % 10000}", f"dn{os.getpid() % 10000}"
    run = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True, timeout=10)
    try:
        run("netns", "add", ns)
        run("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run("link", "set", ns_if, "netns", ns)
        run("addr", "add", "10.231.7.1/30", "dev", host_if)
        run("link", "set", host_if, "up")
        run("netns", "exec", ns, "ip", "addr", "add", "10.231.7.2/30", "dev", ns_if)
        run("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        sidecar = await make_sidecar(sim, listen_host="0.0.0.0")
        result = await asyncio.to_thread(
            subprocess.run,
            [
                "ip",
                "netns",
                "exec",
                ns,
                "python3",
                "-c",
                "import urllib.request as u, urllib.error as e\n"
                "try:\n"
                f"  u.urlopen(u.Request('http://10.231.7.1:{sidecar.port}/drain', method='POST'), timeout=5)\n"
                "  print(200)\n"
                "except e.HTTPError as x:\n"
                "  print(x.code)\n",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout.strip() == "403", result.stdout + result.stderr
        assert not sidecar.draining
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
