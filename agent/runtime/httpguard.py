"""The listening socket of both HTTP servers (the sidecar's and the webhook's), guarded so
that no single peer can take the server from the kubelet's probes and Prometheus's scrapes:

- a cap on open connections (`limit`), counted from the TCP accept, before any TLS
  handshake, so half-open handshakes count too;
- a share per peer address (`per_peer`, three quarters of the cap unless set): past it the
  peer's new connections are refused at once, before any TLS handshake, so a peer
  re-opening everything it loses costs an accept and a close each time, and the last
  quarter of the cap stays for everyone else (behind a proxy or a mesh every caller has the
  proxy's address: there the share is simply a lower cap);
- at the cap, the oldest idle connection of the peer holding the most is closed to admit
  the new one (shed), so a probe or scrape always gets in while anyone holds an idle
  connection; only when every open connection is in the middle of a request is a new one
  refused. "Idle" means no request is being read or handled: never used, kept alive between
  requests, mid TLS handshake, or still sending its request headers (a slowloris).
- idle keep-alive connections, and connections that never complete a request, are closed
  after aiohttp's keep-alive timeout (>= 3.14 arms it for both); a TLS handshake has the
  same time to complete.

TLS is terminated here rather than by the event loop (`create_server(ssl=...)`), for three
reasons: the cap must count connections before their handshake; each accepted connection
takes the certificate context current at that moment (certificates reload without a
restart, see agent/tools/certreload.py); and asyncio's TLS protocol allocates a 256 KiB read
buffer per connection (`SSLProtocol.max_size`), which made an idle TLS connection cost
~0.28 MB: 32 KiB holds two full TLS records.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from aiohttp import web

TLS_READ_BUFFER = 32 * 1024


def default_per_peer(limit: int) -> int:
    """A peer may hold three quarters of the cap: the rest stays for everyone else."""
    return max(1, limit * 3 // 4)


class _LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's server-side TLS protocol with a 32 KiB read buffer instead of 256 KiB."""

    max_size = TLS_READ_BUFFER


class ConnectionLimiter:
    """Open connections by peer, in the order they were accepted (oldest first)."""

    def __init__(self, limit: int, per_peer: int | None = None) -> None:
        self.limit = limit
        self.per_peer = min(limit, per_peer if per_peer else default_per_peer(limit))
        self.by_peer: dict[str, dict[_Guarded, None]] = {}
        self.active = 0
        self.refused = 0  # closed at once: no idle connection could make room
        self.shed = 0  # idle connections closed to make room for a new one

    def admit(self, conn: _Guarded) -> bool:
        mine = self.by_peer.get(conn.peer)
        if mine is not None and len(mine) >= self.per_peer:
            self.refused += 1
            return False
        if self.active >= self.limit and not self._shed_any():
            self.refused += 1
            return False
        self.by_peer.setdefault(conn.peer, {})[conn] = None
        self.active += 1
        return True

    def release(self, conn: _Guarded) -> None:
        mine = self.by_peer.get(conn.peer)
        if mine is None or conn not in mine:
            return
        del mine[conn]
        if not mine:
            del self.by_peer[conn.peer]
        self.active -= 1

    def _shed_from(self, conns: dict[_Guarded, None]) -> bool:
        for conn in conns:  # oldest first
            if conn.idle():
                self.release(conn)
                conn.shed()
                self.shed += 1
                return True
        return False

    def _shed_any(self) -> bool:
        """Shed the oldest idle connection, from the peer holding the most first."""
        for _, conns in sorted(self.by_peer.items(), key=lambda item: -len(item[1])):
            if self._shed_from(conns):
                return True
        return False


class _Guarded(asyncio.Protocol):
    """One accepted TCP connection: admitted or closed at once, then delegating to aiohttp's
    request handler (through a TLS protocol when the site has a certificate)."""

    def __init__(
        self,
        make_handler: Callable[[], Any],
        limiter: ConnectionLimiter,
        tls: Callable[[], ssl.SSLContext] | None,
        handshake_timeout: float,
    ) -> None:
        self.make_handler = make_handler
        self.limiter = limiter
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.peer = ""
        self.transport: asyncio.BaseTransport | None = None
        self.handler: Any = None  # aiohttp's RequestHandler
        self.inner: Any = None  # what the socket's events go to: the handler or the TLS layer

    def idle(self) -> bool:
        handler = self.handler
        if handler is None:
            return True
        return not getattr(handler, "_request_in_progress", False) and not getattr(handler, "_messages", ())

    def shed(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        if not self.limiter.admit(self):
            self.transport = None
            transport.close()
            return
        self.handler = self.make_handler()
        if self.tls is None:
            self.inner = self.handler
        else:
            # No waiter: nothing awaits the handshake; a failed one closes the socket.
            waiter: Any = None
            handshake_timeout: Any = self.handshake_timeout
            self.inner = _LeanSSLProtocol(
                asyncio.get_running_loop(),
                self.handler,
                self.tls(),
                waiter,
                server_side=True,
                ssl_handshake_timeout=handshake_timeout,
            )
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.inner is None else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.limiter.release(self)
        self.transport = None
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None
        self.handler = None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class _GuardedTLS(_Guarded, asyncio.BufferedProtocol):
    """asyncio's TLS protocol reads into its own buffer: the socket must see a buffered
    protocol for it."""

    _spare = bytearray(1024)

    def get_buffer(self, sizehint: int) -> Any:
        if self.inner is None:  # refused, or already gone: discard
            return memoryview(self._spare)
        return self.inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self.inner is not None:
            self.inner.buffer_updated(nbytes)


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through the limiter; `tls` gives the certificate
    context for each new connection (None: plain HTTP)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        limiter: ConnectionLimiter,
        *,
        tls: Callable[[], ssl.SSLContext] | None = None,
        handshake_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.limiter = limiter
        self.tls = tls
        self.handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        kind = _Guarded if self.tls is None else _GuardedTLS

        def factory() -> asyncio.Protocol:
            return kind(server, self.limiter, self.tls, self.handshake_timeout)

        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address
        )
