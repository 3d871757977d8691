"""Bounded HTTP GET for collectors: a hard deadline on the whole exchange (so a never-ending
body is cut at the timeout), a cap on the body size, and failures classified the way an
operator needs them (refused = not listening, timeout = hung, ...)."""

from __future__ import annotations

import asyncio
import errno
import sys
import time
from dataclasses import dataclass

import aiohttp

REFUSED = "refused"
TIMEOUT = "timeout"
TOO_LARGE = "too_large"
DNS = "dns"
ERROR = "error"


@dataclass
class HttpResult:
    url: str
    status: int = 0
    body: bytes = b""
    elapsed: float = 0.0
    failure: str = ""  # "" when a response arrived; else refused/timeout/too_large/dns/error
    error: str = ""
    content_type: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure and 200 <= self.status < 300

    def excerpt(self, limit: int = 300) -> str:
        return self.body[:limit].decode("utf-8", "replace")


def new_session(urls: list[str], limit: int = 8) -> aiohttp.ClientSession:
    """A session for GETs to `urls` (no session-level timeout: each call sets its own)."""
    # aiohttp's closed-transport cleanup works around TLS transports that Python before
    # 3.12.8 can leave open; it costs a timer every 2 s for the session's life, a wake-up of
    # an otherwise idle sidecar (~0.1-0.2 ms of CPU each on a VM). Plain HTTP needs none.
    tls = any(url.lower().startswith("https:") for url in urls)
    cleanup = tls and sys.version_info < (3, 12, 8)  # later Pythons close them (cpython#118960)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=4, enable_cleanup_closed=cleanup)
    # No cookie jar: Dynamo's endpoints set none, and the default jar's bookkeeping was
    # ~0.1 ms of CPU a request here (a third of a probe's cost).
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None), cookie_jar=aiohttp.DummyCookieJar()
    )


def _classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return DNS, str(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = getattr(exc, "os_error", None)
        if (
            isinstance(os_error, ConnectionRefusedError)
            or getattr(os_error, "errno", None) == errno.ECONNREFUSED
        ):
            return REFUSED, "connection refused"
        return ERROR, str(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return TIMEOUT, "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return ERROR, f"{type(exc).__name__}: {exc}"
    return ERROR, f"{type(exc).__name__}: {exc}"


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    max_bytes: int,
    headers: dict[str, str] | None = None,
) -> HttpResult:
    result = HttpResult(url=url)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                result.status = response.status
                result.content_type = response.headers.get("Content-Type", "")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > max_bytes:
                        result.failure = TOO_LARGE
                        result.error = f"body larger than {max_bytes} bytes"
                        break
                    chunks.append(chunk)
                result.body = b"".join(chunks)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        result.failure, result.error = _classify(exc)
    result.elapsed = time.monotonic() - started
    return result
