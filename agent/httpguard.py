"""The sidecar's listening socket, guarded: a cap on open connections (connections past it
are closed at once and counted), so a flood of idle or slow connections cannot take every
file descriptor of a guest in someone else's pod. The idle and header-read timeout is
aiohttp's keep-alive timeout, which 3.14 also arms for a connection that never completes a
request (a slowloris)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web


class ConnectionLimiter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's request handler unless the connection is over the cap."""

    def __init__(self, inner: Any, limiter: ConnectionLimiter) -> None:
        self.inner = inner
        self.limiter = limiter
        self.over = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.limiter.active += 1
        if self.limiter.active > self.limiter.limit:
            self.over = True
            self.limiter.refused += 1
            transport.close()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.over:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.over else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.limiter.active -= 1
        if not self.over:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.over:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.over:
            self.inner.resume_writing()


class GuardedSite(web.TCPSite):
    def __init__(
        self, runner: web.AppRunner, host: str, port: int, limiter: ConnectionLimiter, **kwargs: Any
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.limiter = limiter

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.Protocol] = lambda: _Guarded(server(), self.limiter)  # noqa: E731
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=self._reuse_address
        )
