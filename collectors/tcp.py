"""TCP connection health of the pod's network namespace.

Passive: socket states grouped by peer role (etcd, NATS, frontend, worker system port, other
Dynamo peers by port or CIDR, other), whether each expected Dynamo port listens, queue sizes,
and per role rtt/retransmits/lost from tcp_info; kernel counters from /proc/net/snmp and
/proc/net/netstat. Active: TCP connect (and optional HTTP GET) probes to the dependencies,
with DNS timed separately and refused / timeout / DNS failure / unreachable told apart.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.core import metrics as m
from agent.core.facts import DependencyProbe, TcpFacts
from agent.core.samples import CollectResult
from collectors.base import Collector, CollectorSpec, Hooks, register
from collectors.dynamo_health import service_ports
from collectors.sockets import (
    LISTEN,
    STATES,
    AnyFamilyRefused,
    Info,
    NetlinkUnavailable,
    Scan,
    netlink_scan,
    netlink_tcp_info,
    port_key,
    procfs_rows,
    tcp_in_use,
)

if TYPE_CHECKING:
    from agent.config import Config

DEFAULT_ROLES = {2379: "etcd", 4222: "nats"}
# While at most this many TCP sockets in the namespace are outside the ports of interest, the
# census dump also carries every socket's tcp_info (one walk of the kernel's socket hash);
# with more, filling tcp_info for all of them costs more than a second walk the kernel filters
# to the sockets of interest. The two cost the same at 3,000-4,000 such sockets on the
# development machine (bench/tcp_sockets.py, bench/RESULTS.md).
SINGLE_DUMP_MAX_SOCKETS = 3000
ETCD_HEALTH_PATH = "/health"
MAX_PROBE_BODY = 4096  # an etcd /health answer is a few dozen bytes
SNMP_TCP = (
    "ActiveOpens",
    "PassiveOpens",
    "AttemptFails",
    "EstabResets",
    "InSegs",
    "OutSegs",
    "RetransSegs",
    "InErrs",
    "OutRsts",
)
NETSTAT_TCPEXT = (
    "ListenOverflows",
    "ListenDrops",
    "TCPSynRetrans",
    "TCPTimeouts",
    "TCPAbortOnTimeout",
    "TCPAbortOnData",
    "TCPLostRetransmit",
)


@dataclass(frozen=True)
class ProbeTarget:
    role: str
    host: str
    port: int
    http_path: str = ""  # "" = TCP connect only

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def parse_probe_target(text: str) -> ProbeTarget:
    """`role=host:port`, `role=http://host:port/path`, `role=nats://host:port`."""
    role, sep, rest = text.partition("=")
    if not sep or not role.strip() or not rest.strip():
        raise ValueError(f"{text!r}: expected role=host:port or role=http://host:port/path")
    rest = rest.strip()
    if "://" not in rest:
        rest = "tcp://" + rest
    parts = urlsplit(rest)
    default_port = {"http": 80, "https": 443, "nats": 4222, "tcp": None}.get(parts.scheme)
    port = parts.port or default_port
    if not parts.hostname or not port:
        raise ValueError(f"{text!r}: expected role=host:port or role=http://host:port/path")
    path = (parts.path or "/") if parts.scheme == "http" else ""
    role = role.strip()
    if role == "etcd" and path == "/":
        # An etcd endpoint as Dynamo's ETCD_ENDPOINTS gives it (http://host:2379): etcd
        # answers `/` with 404; its health is GET /health (etcd 3.4+).
        path = ETCD_HEALTH_PATH
    return ProbeTarget(role, parts.hostname, int(port), path)


def etcd_health(status: int, body: bytes) -> tuple[str, str]:
    """(outcome, error) of etcd's GET /health: 200 `{"health":"true"}` (3.5+ adds
    `"reason":""`) is ok; `{"health":"false","reason":...}` (no leader, alarms; 503 in
    3.5+) is a reachable etcd that cannot serve, which Dynamo's leases need."""
    try:
        parsed = json.loads(body.decode("utf-8", "replace") or "null")
    except ValueError:
        parsed = None
    health = str(parsed.get("health", "")).lower() if isinstance(parsed, dict) else ""
    if status == 200 and health == "true":
        return "ok", ""
    if health == "false":
        reason = str(parsed.get("reason", "") if isinstance(parsed, dict) else "")[:160]
        return "unhealthy", f"etcd /health: health false{': ' + reason if reason else ''} (HTTP {status})"
    return "http_error", f"etcd /health: HTTP {status}, body {body[:120].decode('utf-8', 'replace')!r}"


def parse_role_map(items: list[str]) -> tuple[dict[int, str], list[tuple[Any, str]]]:
    """`port=role` and `cidr=role` entries."""
    ports: dict[int, str] = {}
    networks: list[tuple[Any, str]] = []
    for item in items:
        key, sep, role = item.partition("=")
        if not sep or not role:
            raise ValueError(f"{item!r}: expected PORT=role or CIDR=role")
        if key.isdigit():
            ports[int(key)] = role
        else:
            try:
                networks.append((ipaddress.ip_network(key, strict=False), role))
            except ValueError:
                raise ValueError(f"{item!r}: {key!r} is neither a port nor a CIDR") from None
    return ports, networks


def _kernel_counters(proc_root: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for filename, prefix, wanted in (("snmp", "Tcp:", SNMP_TCP), ("netstat", "TcpExt:", NETSTAT_TCPEXT)):
        try:
            with open(os.path.join(proc_root, "net", filename), encoding="ascii") as handle:
                lines = [line.split() for line in handle if line.startswith(prefix)]
        except OSError:
            continue
        if len(lines) >= 2:
            for key, value in zip(lines[0][1:], lines[1][1:], strict=False):
                if key in wanted:
                    try:
                        out[key] = int(value)
                    except ValueError:
                        continue
    return out


class TcpCollector(Collector):
    name = "tcp"

    def __init__(
        self,
        interval: float,
        timeout: float,
        service_ports: dict[int, str],
        role_map: list[str] | None = None,
        probe_targets: list[ProbeTarget] | None = None,
        probe_timeout: float = 2.0,
        probe_concurrency: int = 8,
        proc_root: str = "/proc",
        use_netlink: bool = True,
    ) -> None:
        super().__init__(interval, timeout)
        extra_ports, self.networks = parse_role_map(role_map or [])
        # Ports Dynamo serves in this pod: a connection to them from outside is inbound.
        self.service_ports = dict(service_ports)
        self.peer_ports = {**DEFAULT_ROLES, **extra_ports}
        self.probe_targets = probe_targets or []
        self.probe_timeout = probe_timeout
        self.probe_concurrency = probe_concurrency
        self.proc_root = proc_root
        self.use_netlink = use_netlink
        self.method = "netlink" if use_netlink else "procfs"
        self.netlink_error = ""
        # One AF_UNSPEC dump for IPv4 and IPv6 until the kernel refuses it.
        self.any_family = True
        self.single_dump_max = SINGLE_DUMP_MAX_SOCKETS
        self.dumps = 0  # sock_diag dumps (walks of the kernel's socket hash) of the last run
        self._info_rows = 0  # sockets of interest (with tcp_info) the last run saw
        self._addr_roles: dict[bytes, str] = {}
        self._probe_counts: dict[tuple[str, str], int] = {}
        # target -> (outcome, since): when each dependency's current outcome began.
        self._probe_since: dict[str, tuple[str, float]] = {}
        self._probe_ok: dict[str, float] = {}  # target -> when it last answered ok

    # --- passive -----------------------------------------------------------------------
    def _role_of_addr(self, addr: bytes) -> str:
        role = self._addr_roles.get(addr)
        if role is None:
            role = "other"
            if self.networks:
                try:
                    ip = ipaddress.ip_address(addr)
                    if ip.version == 6 and ip.ipv4_mapped:
                        ip = ip.ipv4_mapped
                    role = next(
                        (r for net, r in self.networks if ip.version == net.version and ip in net), "other"
                    )
                except ValueError:
                    pass
            if len(self._addr_roles) < 65536:
                self._addr_roles[addr] = role
        return role

    def _scan(
        self,
        local: frozenset[bytes],
        remote: frozenset[bytes],
        keep_all: bool,
        info_ports: tuple[frozenset[bytes], frozenset[bytes]],
    ) -> Scan:
        """The census; over netlink it also carries tcp_info (`scan.info`) while the namespace
        holds at most `single_dump_max` sockets besides those of interest (as many as the last
        run saw: their tcp_info is read either way)."""
        if self.use_netlink:
            in_use = tcp_in_use(self.proc_root)
            single = in_use is not None and in_use - self._info_rows <= self.single_dump_max
            try:
                try:
                    scan = netlink_scan(
                        local,
                        remote,
                        keep_all,
                        self.proc_root,
                        info_ports if single else None,
                        self.any_family,
                    )
                except AnyFamilyRefused:
                    self.any_family = False  # this kernel wants one dump per family
                    scan = netlink_scan(
                        local, remote, keep_all, self.proc_root, info_ports if single else None
                    )
                self.method = "netlink"
                self.dumps = scan.dumps
                return scan
            except NetlinkUnavailable as exc:
                self.netlink_error = str(exc)
                self.use_netlink = False  # not allowed here: do not retry every cycle
        self.method = "procfs"
        self.dumps = 0
        scan = Scan()
        for row in procfs_rows(self.proc_root):
            scan.add(row, local, remote, keep_all)
        return scan

    def collect_sockets(self) -> tuple[dict[tuple[str, str, str], int], dict[str, list[float]], set[int]]:
        """Counts by (state, peer, direction), per-peer aggregates, listening ports.

        Per peer: [rtt_sum_us, rtt_count, retransmits, lost, send_queue, recv_queue].
        Sockets on no port of interest are counted by state only (peer "other",
        direction "any"): at ten thousand sockets that is what keeps this cheap.
        """
        service = {port_key(p): r for p, r in self.service_ports.items()}
        peers = {port_key(p): r for p, r in self.peer_ports.items()}
        keep_all = bool(self.networks)
        # tcp_info is read for established sockets whose local port is a service port or
        # remote port a peer port (what the kernel filter of `netlink_tcp_info` selects).
        info_ports = (frozenset(service), frozenset(peers))
        scan = self._scan(frozenset(service), frozenset(peers) | frozenset(service), keep_all, info_ports)
        raw: dict[tuple[int, str, str], int] = {}
        per_peer: dict[str, list[float]] = {}
        listening: set[bytes] = set()
        for state, sport, dport, dst, rqueue, wqueue in scan.rows:
            if state == LISTEN:
                listening.add(sport)
                key = (state, service.get(sport, "other"), "listen")
            elif sport in service:
                key = (state, service[sport], "in")
            else:
                peer = (
                    peers.get(dport)
                    or service.get(dport)
                    or (self._role_of_addr(dst) if keep_all else "other")
                )
                key = (state, peer, "out" if peer != "other" else "any")
            raw[key] = raw.get(key, 0) + 1
            if rqueue or wqueue:
                aggregate = per_peer.setdefault(key[1], [0.0] * 6)
                aggregate[4] += wqueue
                aggregate[5] += rqueue
        for state, count in enumerate(scan.other_states):
            if count:
                key = (state, "other", "any")
                raw[key] = raw.get(key, 0) + count
        if scan.other_send or scan.other_recv:
            aggregate = per_peer.setdefault("other", [0.0] * 6)
            aggregate[4] += scan.other_send
            aggregate[5] += scan.other_recv
        if self.method == "netlink":
            if scan.info is not None:
                self._add_tcp_info(scan.info, per_peer, service, peers)
                self._info_rows = len(scan.info)
            else:
                self._tcp_info(per_peer, service, peers)
        counts = {
            (STATES.get(state, "unknown"), peer, direction): n for (state, peer, direction), n in raw.items()
        }
        return counts, per_peer, {int.from_bytes(p, "big") for p in listening}

    def _tcp_info(
        self, per_peer: dict[str, list[float]], service: dict[bytes, str], peers: dict[bytes, str]
    ) -> None:
        """rtt / retransmits / lost for the sockets of the roles that matter, in a second dump
        the kernel filters (many sockets in the namespace)."""
        try:
            infos, dumps = netlink_tcp_info(
                self.service_ports, self.peer_ports, self.proc_root, self.any_family
            )
        except NetlinkUnavailable as exc:
            self.netlink_error = f"tcp_info: {exc}"
            return
        self.dumps += dumps
        self._info_rows = len(infos)
        self._add_tcp_info(infos, per_peer, service, peers)

    @staticmethod
    def _add_tcp_info(
        infos: list[Info],
        per_peer: dict[str, list[float]],
        service: dict[bytes, str],
        peers: dict[bytes, str],
    ) -> None:
        for sport, dport, rtt_us, retrans, lost in infos:
            peer = service.get(sport) or peers.get(dport) or service.get(dport) or "other"
            aggregate = per_peer.get(peer)
            if aggregate is None:
                aggregate = per_peer[peer] = [0.0] * 6
            if rtt_us:
                aggregate[0] += rtt_us
                aggregate[1] += 1
            aggregate[2] += retrans
            aggregate[3] += lost

    def _passive(self, result: CollectResult) -> TcpFacts:
        counts, per_peer, listening = self.collect_sockets()
        for (state, peer, direction), count in counts.items():
            result.add(m.TCP_SOCKETS.sample(count, state=state, peer=peer, direction=direction))
        for peer, (rtt_sum, rtt_n, retrans, lost, sendq, recvq) in per_peer.items():
            result.add(m.TCP_QUEUE_BYTES.sample(sendq, peer=peer, queue="send"))
            result.add(m.TCP_QUEUE_BYTES.sample(recvq, peer=peer, queue="recv"))
            if self.method == "netlink" and peer != "other":
                if rtt_n:
                    result.add(m.TCP_RTT_SECONDS.sample(rtt_sum / rtt_n / 1e6, peer=peer))
                result.add(m.TCP_SOCKET_RETRANSMITS.sample(retrans, peer=peer))
                result.add(m.TCP_SOCKET_LOST.sample(lost, peer=peer))
        for port, role in sorted(self.service_ports.items()):
            result.add(m.TCP_LISTENING.sample(1 if port in listening else 0, port=port, role=role))
        kernel = _kernel_counters(self.proc_root)
        for key, value in kernel.items():
            result.add(m.TCP_KERNEL_TOTAL.sample(value, counter=key))
        result.add(m.TCP_COLLECTION_METHOD.sample(1, method=self.method))
        close_wait = {peer: n for (state, peer, _), n in counts.items() if state == "close_wait"}
        return TcpFacts(
            method=self.method,
            netlink_error=self.netlink_error,
            listening={str(port): port in listening for port in self.service_ports},
            service_ports={str(p): r for p, r in self.service_ports.items()},
            close_wait=close_wait,
            sockets=sum(counts.values()),
            kernel=kernel,
        )

    # --- active ------------------------------------------------------------------------
    async def _probe(self, target: ProbeTarget, slots: asyncio.Semaphore) -> dict[str, Any]:
        async with slots:
            outcome, error = "ok", ""
            dns_seconds = connect_seconds = None
            status = 0
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.probe_timeout):
                    infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except TimeoutError:
                return {"target": target, "outcome": "dns_timeout", "error": "name resolution timed out"}
            except socket.gaierror as exc:
                return {"target": target, "outcome": "dns_error", "error": str(exc)}
            dns_seconds = time.monotonic() - started
            address = infos[0][4]
            started = time.monotonic()
            writer = None
            try:
                async with asyncio.timeout(self.probe_timeout):
                    host, port = str(address[0]), int(address[1])
                    reader, writer = await asyncio.open_connection(host, port)
                    connect_seconds = time.monotonic() - started
                    if target.http_path:
                        writer.write(
                            f"GET {target.http_path} HTTP/1.0\r\nHost: {target.host}\r\n\r\n".encode()
                        )
                        await writer.drain()
                        line = await reader.readline()
                        parts = line.split()
                        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
                        if target.role == "etcd" and target.http_path == ETCD_HEALTH_PATH and status:
                            # HTTP/1.0: the body runs to the close. A few bytes at most.
                            response = b""
                            while len(response) < MAX_PROBE_BODY:
                                chunk = await reader.read(MAX_PROBE_BODY - len(response))
                                if not chunk:
                                    break
                                response += chunk
                            body = response.partition(b"\r\n\r\n")[2]
                            outcome, error = etcd_health(status, body)
                        elif not 200 <= status < 400:
                            outcome, error = (
                                "http_error",
                                line.decode("latin-1").strip()[:200] or "no status line",
                            )
            except TimeoutError:
                outcome, error = "timeout", f"no answer within {self.probe_timeout:g}s"
            except ConnectionRefusedError:
                outcome, error = "refused", "connection refused"
            except OSError as exc:
                unreachable = exc.errno in {errno.EHOSTUNREACH, errno.ENETUNREACH}
                outcome, error = ("unreachable" if unreachable else "error"), str(exc)
            finally:
                if writer is not None:
                    writer.close()
            return {
                "target": target,
                "outcome": outcome,
                "error": error,
                "dns_seconds": dns_seconds,
                "connect_seconds": connect_seconds,
                "status": status,
            }

    async def _active(self, result: CollectResult) -> dict[str, DependencyProbe]:
        if not self.probe_targets:
            return {}
        slots = asyncio.Semaphore(self.probe_concurrency)
        probes = await asyncio.gather(*(self._probe(t, slots) for t in self.probe_targets))
        facts: dict[str, DependencyProbe] = {}
        for probe in probes:
            target: ProbeTarget = probe.pop("target")
            labels = {"target": target.name, "role": target.role}
            outcome = probe["outcome"]
            key = (target.name, outcome)
            self._probe_counts[key] = self._probe_counts.get(key, 0) + 1
            result.add(m.PROBE_UP.sample(1 if outcome == "ok" else 0, **labels))
            result.add(m.PROBE_OUTCOME.sample(1, outcome=outcome, **labels))
            if probe.get("dns_seconds") is not None:
                result.add(m.PROBE_DNS_SECONDS.sample(probe["dns_seconds"], **labels))
            if probe.get("connect_seconds") is not None:
                result.add(m.PROBE_CONNECT_SECONDS.sample(probe["connect_seconds"], **labels))
            if target.http_path and probe.get("status"):
                result.add(m.PROBE_HTTP_STATUS_CODE.sample(probe["status"], **labels))
            now = time.time()
            known = self._probe_since.get(target.name)
            if known is None or known[0] != outcome:
                known = self._probe_since[target.name] = (outcome, now)
            if outcome == "ok":
                self._probe_ok[target.name] = now
            facts[target.name] = DependencyProbe(
                target.role,
                outcome,
                probe.get("error", ""),
                probe.get("dns_seconds"),
                probe.get("connect_seconds"),
                probe.get("status", 0),
                since=known[1],
                last_ok=self._probe_ok.get(target.name, 0.0),
            )
        for (name, outcome), count in self._probe_counts.items():
            role = next((t.role for t in self.probe_targets if t.name == name), "other")
            result.add(m.PROBES_TOTAL.sample(count, target=name, role=role, outcome=outcome))
        return facts

    async def collect(self) -> CollectResult:
        result = CollectResult()
        passive = await asyncio.to_thread(self._passive, result)
        probes = await self._active(result)
        passive.probes, passive.time = probes, time.time()
        result.facts = passive
        return result


def _build(config: Config, hooks: Hooks) -> TcpCollector:
    return TcpCollector(
        config.tcp_interval,
        config.collector_timeout + config.tcp_probe_timeout * 2,
        service_ports=service_ports(config),
        role_map=config.tcp_peer_roles,
        probe_targets=[parse_probe_target(t) for t in config.tcp_probe_targets],
        probe_timeout=config.tcp_probe_timeout,
        proc_root=config.proc_root,
    )


register(
    CollectorSpec(
        "tcp",
        order=60,
        enabled=lambda config: config.tcp_enabled,
        interval=lambda config: config.tcp_interval,
        factory=_build,
    )
)
