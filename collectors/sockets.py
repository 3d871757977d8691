"""Reading the TCP socket table of this network namespace, fast.

Primary: netlink `sock_diag` (INET_DIAG). Every dump makes the kernel walk its whole
established-socket hash (a fixed size set by the node's memory: 262,144 buckets, about
1.5-4 ms, on the development machine), so a collection makes as few dumps as it can:

- the legacy request type (TCPDIAG_GETSOCK) is dumped by the kernel with family AF_UNSPEC,
  so one walk returns IPv4 and IPv6 sockets together (the current request type needs one
  dump per family); where a kernel refuses it, one dump per family as before;
- while the namespace holds few sockets (`/proc/net/sockstat{,6}`), the census dump also asks
  for `tcp_info` and keeps rtt, retransmits and lost of the established sockets on the ports
  of interest; with many, filling `tcp_info` for every socket costs more than a second walk,
  so a second dump asks for it with a bytecode filter that returns just those sockets.

The census reads only state, ports, remote address and queue sizes (a narrow struct, no
per-socket object). Fallback where netlink is not allowed: `/proc/net/tcp` and
`/proc/net/tcp6`. At ten thousand sockets this is the hot path: rows are plain tuples and
ports stay as the kernel's 2-byte big-endian strings.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Iterator

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
# The request type of the first inet_diag interface (struct inet_diag_req, no family field):
# the kernel answers it with messages of this type for sockets of every family.
TCPDIAG_GETSOCK = 18
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
# nlmsghdr, then struct inet_diag_req: family, src_len, dst_len, ext, id, states, dbs.
_REQ_ANY_FAMILY = struct.Struct("=IHHIIBBBB48sII")
_HEAD = struct.Struct("=IH")
# nlmsghdr rest (flags, seq, pid), then inet_diag_msg keeping: family, state, sport, dport,
# dst, rqueue, wqueue.
_ROW = struct.Struct("=IH10xBBxx2s2s16x16s4x8x4xII8x")
_ROW_SIZE = 16 + 72
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")

# A row: (state, sport_be, dport_be, remote_addr, rqueue, wqueue)
Row = tuple[int, bytes, bytes, bytes, int, int]


class NetlinkUnavailable(Exception):
    pass


class AnyFamilyRefused(NetlinkUnavailable):
    """The kernel answered the one-dump-for-every-family request with an error: dump per family."""


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
    if family == socket.AF_UNSPEC:
        return (
            _REQ_ANY_FAMILY.pack(
                _REQ_ANY_FAMILY.size + len(attr),
                TCPDIAG_GETSOCK,
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                0,
                0,
                0,
                0,
                ext,
                b"\0" * 48,
                states,
                0,
            )
            + attr
        )
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


def _dumps(
    families_: tuple[int, ...], states: int, with_info: bool, bytecode: bytes = b""
) -> Iterator[tuple[int, bytes]]:
    """(family, request) of each dump: one AF_UNSPEC dump, or one per family."""
    for seq, family in enumerate(families_, 1):
        yield family, _request(family, states, with_info, seq, bytecode)


def _error(data: bytes, offset: int, family: int) -> NetlinkUnavailable:
    (errno_neg,) = struct.unpack_from("=i", data, offset + 16)
    message = f"sock_diag error {-errno_neg}"
    return AnyFamilyRefused(message) if family == socket.AF_UNSPEC else NetlinkUnavailable(message)


def _messages(sock: socket.socket, family: int) -> Iterator[tuple[bytes, int, int]]:
    """(buffer, offset, length) of each answer to a dump until NLMSG_DONE."""
    unpack_head = _HEAD.unpack_from
    while True:
        data = sock.recv(1 << 20)
        offset, end = 0, len(data)
        while offset + 16 <= end:
            length, kind = unpack_head(data, offset)
            if kind == NLMSG_DONE or length < 16:
                return
            if kind == NLMSG_ERROR:
                raise _error(data, offset, family)
            yield data, offset, length
            offset += (length + 3) & ~3


def _tcp_info_at(data: bytes, attr: int, end: int) -> tuple[int, int, int] | None:
    """(rtt_us, total_retrans, lost) from the INET_DIAG_INFO attribute among a message's
    attributes [attr, end), or None when it has none."""
    while attr + 4 <= end:
        rta_len, rta_type = _RTA.unpack_from(data, attr)
        if rta_len < 4:
            return None
        if rta_type == INET_DIAG_INFO and rta_len >= 4 + 104:
            info = attr + 4
            return (
                _U32.unpack_from(data, info + 68)[0],
                _U32.unpack_from(data, info + 100)[0],
                _U32.unpack_from(data, info + 32)[0],
            )
        attr += (rta_len + 3) & ~3
    return None


_ROW_NO_DST = struct.Struct("=IH10xxBxx2s2s16x16x4x8x4xII8x")
# (sport, dport, rtt_us, total_retrans, lost) of an established socket on a port of interest.
Info = tuple[bytes, bytes, int, int, int]


class Scan:
    """One pass over the socket table: the bulk (sockets on no port of interest) is only
    counted by state; the rest is kept as rows for role-by-role accounting."""

    __slots__ = ("dumps", "info", "other_recv", "other_send", "other_states", "rows")

    def __init__(self) -> None:
        self.other_states = [0] * 16
        self.other_send = 0
        self.other_recv = 0
        self.rows: list[Row] = []
        # tcp_info read by the census itself; None when it was not asked for.
        self.info: list[Info] | None = None
        self.dumps = 0  # sock_diag dumps made (each one walk of the kernel's socket hash)

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


def _in_use(proc_root: str, name: str, prefix: str) -> int | None:
    """`inuse` of the `prefix` line of /proc/net/<name> (TCP sockets of this namespace, not
    counting TIME_WAIT), None when unreadable."""
    try:
        with open(os.path.join(proc_root, "net", name), encoding="ascii") as handle:
            for line in handle:
                if line.startswith(prefix):
                    fields = line.split()
                    if len(fields) >= 3 and fields[1] == "inuse" and fields[2].isdigit():
                        return int(fields[2])
    except OSError:
        pass
    return None


def tcp_in_use(proc_root: str = "/proc") -> int | None:
    """TCP sockets (IPv4 and IPv6, TIME_WAIT aside) in this namespace; None when unknown."""
    v4 = _in_use(proc_root, "sockstat", "TCP:")
    if v4 is None:
        return None
    return v4 + (_in_use(proc_root, "sockstat6", "TCP6:") or 0)


def families(proc_root: str = "/proc", any_family: bool = False) -> tuple[int, ...]:
    """Address families to dump. Each dump walks the whole socket hash table: one AF_UNSPEC
    dump when the kernel takes it (`any_family`), else IPv4 and, unless this namespace has
    no IPv6 TCP socket in use (/proc/net/sockstat6 says so), IPv6."""
    if any_family:
        return (socket.AF_UNSPEC,)
    if _in_use(proc_root, "sockstat6", "TCP6:") == 0:
        return (socket.AF_INET,)
    return (socket.AF_INET, socket.AF_INET6)


def netlink_scan(
    local: set[bytes] | frozenset[bytes],
    remote: set[bytes] | frozenset[bytes],
    keep_all: bool,
    proc_root: str = "/proc",
    info_ports: tuple[frozenset[bytes], frozenset[bytes]] | None = None,
    any_family: bool = False,
) -> Scan:
    """The whole table over sock_diag in one tight loop (this runs once per socket).

    With `info_ports` (local ports, remote ports) the dump also asks for tcp_info, and
    `scan.info` gets it for the established sockets whose local port is in the first set or
    remote port in the second: the rows `netlink_tcp_info` would return, without a second
    walk of the hash. `any_family`: one AF_UNSPEC dump instead of one per family
    (`AnyFamilyRefused` where the kernel does not take it)."""
    scan = Scan()
    other = scan.other_states
    rows = scan.rows
    send = recv = 0
    want_info = info_ports is not None
    info_local, info_remote = info_ports or (frozenset(), frozenset())
    info: list[Info] = []
    tcp_info_at = _tcp_info_at
    unpack_row = (_ROW if keep_all else _ROW_NO_DST).unpack_from
    unpack_head = _HEAD.unpack_from
    sock = _open()
    try:
        for family, request in _dumps(families(proc_root, any_family), ALL_STATES, want_info):
            sock.send(request)
            scan.dumps += 1
            answer = TCPDIAG_GETSOCK if family == socket.AF_UNSPEC else SOCK_DIAG_BY_FAMILY
            done = False
            while not done:
                data = sock.recv(1 << 20)
                offset, end = 0, len(data)
                while offset + _ROW_SIZE <= end:
                    if keep_all:
                        length, kind, row_family, state, sport, dport, dst, rqueue, wqueue = unpack_row(
                            data, offset
                        )
                        if row_family != socket.AF_INET6:
                            dst = dst[:4]
                    else:
                        length, kind, state, sport, dport, rqueue, wqueue = unpack_row(data, offset)
                        dst = b""
                    if kind != answer:
                        break
                    if keep_all or state == LISTEN or sport in local or dport in remote:
                        rows.append((state, sport, dport, dst, rqueue, wqueue))
                        if (
                            want_info
                            and state == ESTABLISHED
                            and (sport in info_local or dport in info_remote)
                        ):
                            values = tcp_info_at(data, offset + _ROW_SIZE, offset + length)
                            if values is not None:
                                info.append((sport, dport, *values))
                    else:
                        other[state & 15] += 1
                        if rqueue or wqueue:
                            send += wqueue
                            recv += rqueue
                    offset += (length + 3) & ~3
                if offset + 16 <= end:
                    length, kind = unpack_head(data, offset)
                    if kind == NLMSG_ERROR:
                        raise _error(data, offset, family)
                    done = kind == NLMSG_DONE
    except OSError as exc:
        raise NetlinkUnavailable(str(exc)) from None
    finally:
        sock.close()
    scan.other_send, scan.other_recv = send, recv
    if want_info:
        scan.info = info
    return scan


def netlink_tcp_info(
    local_ports: Iterable[int],
    remote_ports: Iterable[int],
    proc_root: str = "/proc",
    any_family: bool = False,
) -> tuple[list[Info], int]:
    """(sport, dport, rtt_us, total_retrans, lost) of established sockets on those ports, in
    a dump of its own that the kernel filters with bytecode (for namespaces with many
    sockets, where asking the census for everyone's tcp_info costs more); and the number
    of dumps made."""
    bytecode = port_filter(local_ports, remote_ports)
    if not bytecode:
        return [], 0
    out: list[Info] = []
    dumps = 0
    sock = _open()
    try:
        for family, request in _dumps(families(proc_root, any_family), 1 << ESTABLISHED, True, bytecode):
            sock.send(request)
            dumps += 1
            for data, offset, length in _messages(sock, family):
                _, _, _, _, sport, dport, _, _, _ = _ROW.unpack_from(data, offset)
                values = _tcp_info_at(data, offset + _ROW_SIZE, offset + length)
                if values is not None:
                    out.append((sport, dport, *values))
    except OSError as exc:
        raise NetlinkUnavailable(str(exc)) from None
    finally:
        sock.close()
    return out, dumps


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
    # One AF_UNSPEC dump (one walk of the socket hash for both families); one per family where
    # the kernel refuses that request.
    for any_family in (True, False):
        try:
            sock = _open()
            try:
                for family, request in _dumps(families(proc_root, any_family), mask, False):
                    sock.send(request)
                    for data, offset, _ in _messages(sock, family):
                        state, sport, inode = _ROW_INODE.unpack_from(data, offset)
                        out[inode] = (state, int.from_bytes(sport, "big"))
            finally:
                sock.close()
            return out
        except AnyFamilyRefused:
            out.clear()
        except (NetlinkUnavailable, OSError):
            out.clear()
            break
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
