"""Reading the TCP socket table of this network namespace, fast.

Primary: netlink `sock_diag` (INET_DIAG). One dump of every socket reads only state, ports,
remote address and queue sizes (a narrow struct, no per-socket object); a second dump asks
the kernel, with a bytecode filter, for `tcp_info` (rtt, retransmits, lost) of just the
established sockets to or from the ports that matter. Fallback where netlink is not
allowed: `/proc/net/tcp` and `/proc/net/tcp6`. At ten thousand sockets this is the hot path:
rows are plain tuples and ports stay as the kernel's 2-byte big-endian strings.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Iterator

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
INET_DIAG_REQ_BYTECODE = 1
BC_JMP, BC_S_GE, BC_S_LE, BC_D_GE, BC_D_LE = 1, 2, 3, 4, 5
ALL_STATES = 0xFFFFFFFF
ESTABLISHED = 1

STATES = {
    1: "established",
    2: "syn_sent",
    3: "syn_recv",
    4: "fin_wait1",
    5: "fin_wait2",
    6: "time_wait",
    7: "close",
    8: "close_wait",
    9: "last_ack",
    10: "listen",
    11: "closing",
    12: "new_syn_recv",
}
LISTEN = 10

_REQ = struct.Struct("=IHHIIBBBBI48s")
_HEAD = struct.Struct("=IH")
# nlmsghdr rest (flags, seq, pid), then inet_diag_msg keeping: state, sport, dport, dst,
# rqueue, wqueue.
_ROW = struct.Struct("=IH10xxBxx2s2s16x16s4x8x4xII8x")
_ROW_SIZE = 16 + 72
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")

# A row: (state, sport_be, dport_be, remote_addr, rqueue, wqueue)
Row = tuple[int, bytes, bytes, bytes, int, int]


class NetlinkUnavailable(Exception):
    pass


def port_key(port: int) -> bytes:
    return port.to_bytes(2, "big")


def port_filter(local_ports: Iterable[int], remote_ports: Iterable[int]) -> bytes:
    """INET_DIAG bytecode: accept sport in local_ports or dport in remote_ports.

    The kernel audits bytecode by following each op's `yes` jump and requires every `no`
    target to lie on that path, so an OR is laid out as `ss` does it: each condition
    (port >= P, port <= P) is followed by a JMP that accepts, and a failed condition falls
    through to the next one; the last condition rejects instead.
    """
    conditions = [(BC_S_GE, BC_S_LE, p) for p in sorted(set(local_ports))]
    conditions += [(BC_D_GE, BC_D_LE, p) for p in sorted(set(remote_ports))]
    if not conditions:
        return b""
    total = 20 * (len(conditions) - 1) + 16
    code = b""
    for index, (ge, le, port) in enumerate(conditions):
        here = 20 * index
        port_arg = struct.pack("=BBH", 0, 0, port)
        if index < len(conditions) - 1:
            code += struct.pack("=BBH", ge, 8, 20) + port_arg
            code += struct.pack("=BBH", le, 8, 12) + port_arg
            code += struct.pack("=BBH", BC_JMP, 4, total - (here + 16))
        else:
            code += struct.pack("=BBH", ge, 8, total - here + 4) + port_arg
            code += struct.pack("=BBH", le, 8, total - (here + 8) + 4) + port_arg
    return code


def _request(family: int, states: int, with_info: bool, seq: int, bytecode: bytes = b"") -> bytes:
    ext = 1 << (INET_DIAG_INFO - 1) if with_info else 0
    attr = b""
    if bytecode:
        attr = _RTA.pack(4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    body = _REQ.pack(
        _REQ.size + len(attr),
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        0,
        family,
        socket.IPPROTO_TCP,
        ext,
        0,
        states,
        b"\0" * 48,
    )
    return body + attr


def _open() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except (OSError, AttributeError) as exc:
        raise NetlinkUnavailable(str(exc)) from None
    sock.settimeout(2.0)
    return sock


def _messages(sock: socket.socket) -> Iterator[tuple[bytes, int, int]]:
    """(buffer, offset, length) of each SOCK_DIAG message until NLMSG_DONE."""
    unpack_head = _HEAD.unpack_from
    while True:
        data = sock.recv(1 << 20)
        offset, end = 0, len(data)
        while offset + 16 <= end:
            length, kind = unpack_head(data, offset)
            if kind == NLMSG_DONE or length < 16:
                return
            if kind == NLMSG_ERROR:
                (errno_neg,) = struct.unpack_from("=i", data, offset + 16)
                raise NetlinkUnavailable(f"sock_diag error {-errno_neg}")
            yield data, offset, length
            offset += (length + 3) & ~3


_ROW_NO_DST = struct.Struct("=IH10xxBxx2s2s16x16x4x8x4xII8x")


class Scan:
    """One pass over the socket table: the bulk (sockets on no port of interest) is only
    counted by state; the rest is kept as rows for role-by-role accounting."""

    __slots__ = ("other_recv", "other_send", "other_states", "rows")

    def __init__(self) -> None:
        self.other_states = [0] * 16
        self.other_send = 0
        self.other_recv = 0
        self.rows: list[Row] = []

    def add(
        self,
        row: Row,
        local: set[bytes] | frozenset[bytes],
        remote: set[bytes] | frozenset[bytes],
        keep_all: bool,
    ) -> None:
        state, sport, dport, _, rqueue, wqueue = row
        if keep_all or state == LISTEN or sport in local or dport in remote:
            self.rows.append(row)
        else:
            self.other_states[state & 15] += 1
            self.other_send += wqueue
            self.other_recv += rqueue


def families(proc_root: str = "/proc") -> tuple[int, ...]:
    """Address families to dump. Each dump walks the whole socket hash table, so skip IPv6
    when this namespace has no IPv6 TCP socket in use (/proc/net/sockstat6 says so)."""
    try:
        with open(os.path.join(proc_root, "net", "sockstat6"), encoding="ascii") as handle:
            for line in handle:
                if line.startswith("TCP6:"):
                    fields = line.split()
                    if len(fields) >= 3 and fields[1] == "inuse" and fields[2] == "0":
                        return (socket.AF_INET,)
    except OSError:
        pass
    return (socket.AF_INET, socket.AF_INET6)


def netlink_scan(
    local: set[bytes] | frozenset[bytes],
    remote: set[bytes] | frozenset[bytes],
    keep_all: bool,
    proc_root: str = "/proc",
) -> Scan:
    """The whole table over sock_diag in one tight loop (this runs once per socket)."""
    scan = Scan()
    other = scan.other_states
    rows = scan.rows
    send = recv = 0
    unpack_row = (_ROW if keep_all else _ROW_NO_DST).unpack_from
    unpack_head = _HEAD.unpack_from
    sock = _open()
    try:
        for seq, family in enumerate(families(proc_root), 1):
            sock.send(_request(family, ALL_STATES, False, seq))
            v6 = family == socket.AF_INET6
            done = False
            while not done:
                data = sock.recv(1 << 20)
                offset, end = 0, len(data)
                while offset + _ROW_SIZE <= end:
                    if keep_all:
                        length, kind, state, sport, dport, dst, rqueue, wqueue = unpack_row(data, offset)
                    else:
                        length, kind, state, sport, dport, rqueue, wqueue = unpack_row(data, offset)
                        dst = b""
                    if kind != SOCK_DIAG_BY_FAMILY:
                        break
                    if keep_all or state == LISTEN or sport in local or dport in remote:
                        rows.append((state, sport, dport, dst if v6 else dst[:4], rqueue, wqueue))
                    else:
                        other[state & 15] += 1
                        if rqueue or wqueue:
                            send += wqueue
                            recv += rqueue
                    offset += (length + 3) & ~3
                if offset + 16 <= end:
                    length, kind = unpack_head(data, offset)
                    if kind == NLMSG_ERROR:
                        (errno_neg,) = struct.unpack_from("=i", data, offset + 16)
                        raise NetlinkUnavailable(f"sock_diag error {-errno_neg}")
                    done = kind == NLMSG_DONE
    except OSError as exc:
        raise NetlinkUnavailable(str(exc)) from None
    finally:
        sock.close()
    scan.other_send, scan.other_recv = send, recv
    return scan


def netlink_tcp_info(
    local_ports: Iterable[int], remote_ports: Iterable[int], proc_root: str = "/proc"
) -> Iterator[tuple[bytes, bytes, int, int, int]]:
    """(sport, dport, rtt_us, total_retrans, lost) of established sockets on those ports."""
    bytecode = port_filter(local_ports, remote_ports)
    if not bytecode:
        return
    sock = _open()
    try:
        for seq, family in enumerate(families(proc_root), 1):
            sock.send(_request(family, 1 << ESTABLISHED, True, seq, bytecode))
            for data, offset, length in _messages(sock):
                _, _, _, sport, dport, _, _, _ = _ROW.unpack_from(data, offset)
                attr, end = offset + _ROW_SIZE, offset + length
                while attr + 4 <= end:
                    rta_len, rta_type = _RTA.unpack_from(data, attr)
                    if rta_len < 4:
                        break
                    if rta_type == INET_DIAG_INFO and rta_len >= 4 + 104:
                        info = attr + 4
                        yield (
                            sport,
                            dport,
                            _U32.unpack_from(data, info + 68)[0],
                            _U32.unpack_from(data, info + 100)[0],
                            _U32.unpack_from(data, info + 32)[0],
                        )
                    attr += (rta_len + 3) & ~3
    except OSError as exc:
        raise NetlinkUnavailable(str(exc)) from None
    finally:
        sock.close()


def _procfs_lines(proc_root: str) -> Iterator[tuple[list[str], int]]:
    """Each socket line of /proc/net/tcp and tcp6, split into fields, with the length of an
    address in hex in that file (8 or 32)."""
    for name, addr_hex_len in (("tcp", 8), ("tcp6", 32)):
        path = os.path.join(proc_root, "net", name)
        try:
            handle = open(path, encoding="ascii")  # noqa: SIM115 - closed by the with below
        except OSError:
            continue
        with handle:
            next(handle, None)
            for line in handle:
                yield line.split(), addr_hex_len


def procfs_rows(proc_root: str = "/proc") -> Iterator[Row]:
    """The same rows from /proc/net/tcp{,6}."""
    for parts, addr_hex_len in _procfs_lines(proc_root):
        if len(parts) < 5:
            continue
        local, remote, state_hex, queues = parts[1], parts[2], parts[3], parts[4]
        txq, _, rxq = queues.partition(":")
        remote_hex, _, remote_port = remote.partition(":")
        yield (
            int(state_hex, 16),
            port_key(int(local.rpartition(":")[2], 16)),
            port_key(int(remote_port, 16)),
            _procfs_addr(remote_hex, addr_hex_len),
            int(rxq, 16),
            int(txq, 16),
        )


def _procfs_addr(text: str, hex_len: int) -> bytes:
    raw = bytes.fromhex(text[:hex_len])
    # /proc prints each 32-bit word in host (little-endian) order.
    return b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))


CLOSE_WAIT = 8
# nlmsghdr, then inet_diag_msg keeping: state, sport, inode.
_ROW_INODE = struct.Struct("=16xxBxx2s2x16x16x4x8x4x4x4x4xI")


def sockets_by_inode(states: Iterable[int], proc_root: str = "/proc") -> dict[int, tuple[int, int]]:
    """inode -> (state, local port) of this namespace's TCP sockets in `states`: the kernel
    filters by state, so asking for LISTEN and CLOSE_WAIT returns a handful of rows however
    many sockets are open. Netlink first, /proc/net/tcp{,6} where netlink is not allowed."""
    wanted = set(states)
    mask = 0
    for state in wanted:
        mask |= 1 << state
    out: dict[int, tuple[int, int]] = {}
    try:
        sock = _open()
        try:
            for seq, family in enumerate(families(proc_root), 1):
                sock.send(_request(family, mask, False, seq))
                for data, offset, _ in _messages(sock):
                    state, sport, inode = _ROW_INODE.unpack_from(data, offset)
                    out[inode] = (state, int.from_bytes(sport, "big"))
        finally:
            sock.close()
        return out
    except (NetlinkUnavailable, OSError):
        out.clear()
    for parts, _ in _procfs_lines(proc_root):
        if len(parts) < 10:
            continue
        try:
            state = int(parts[3], 16)
            if state in wanted:
                out[int(parts[9])] = (state, int(parts[1].rpartition(":")[2], 16))
        except ValueError:
            continue
    return out
