"""The webhook's serving certificate, reloaded when its files change, without a restart and
without dropping a connection (as controller-runtime's certwatcher and Linkerd do).

cert-manager renewing a Certificate, or anyone updating the Secret, changes the files of
the mounted volume: the kubelet writes the new pair into a fresh directory and swaps the
volume's `..data` symlink to it, so the paths stay and what they resolve to changes. Every
`interval` seconds the files' resolved paths, inodes, sizes and mtimes are compared with the
pair in use; on a change a new SSLContext is built, and each connection accepted after that
is handshaken with it (agent/runtime/httpguard.py asks `current()` per connection; connections
already open keep theirs).

A pair that does not load (half written, a key that does not match the certificate,
unreadable) is not used: the old one goes on serving. It is logged and counted once the
files have stopped changing (a change caught between the two files' writes is looked at
again at the next poll, not reported), and once per distinct bad pair.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

from agent.core.log import get as get_logger

log = get_logger("dynamo_sidecar.webhook")


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context for the pair; raises OSError or ssl.SSLError if it does not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def not_after(cert_file: str) -> float | None:
    """Unix time the (first) certificate in the file expires; None if it cannot be read.
    The stdlib's decoder is the one `ssl` uses for peer certificates; it is not public API,
    so its absence only costs the expiry metric."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        return float(ssl.cert_time_to_seconds(decode(cert_file)["notAfter"]))
    except (OSError, ssl.SSLError, KeyError, ValueError):
        return None


def _file_signature(path: str) -> tuple[Any, ...]:
    try:
        st = os.stat(path)  # follows the symlinks (..data -> ..2025_..., tls.crt -> ..data/tls.crt)
        return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError as exc:
        return (path, "unreadable", type(exc).__name__)


@dataclass
class CertificateReloader:
    cert_file: str
    key_file: str
    interval: float = 5.0

    def __post_init__(self) -> None:
        # The first load is not guarded: a webhook without a certificate must not start.
        self._signature = self.signature()
        self.context = server_context(self.cert_file, self.key_file)
        self.expiry = not_after(self.cert_file)
        self.loaded_at = time.time()
        self.reloads = 0
        self.errors = 0
        self._suspect: tuple[Any, ...] | None = None  # a changed pair that did not load once
        self._reported: tuple[Any, ...] | None = None  # the last bad pair logged and counted
        self._task: asyncio.Task[None] | None = None

    def current(self) -> ssl.SSLContext:
        return self.context

    def signature(self) -> tuple[Any, ...]:
        return (_file_signature(self.cert_file), _file_signature(self.key_file))

    def check(self) -> bool:
        """Look at the files once; True if a new pair was taken into use."""
        signature = self.signature()
        if signature == self._signature:
            return False
        try:
            context = server_context(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            if signature == self._suspect and signature != self._reported:
                self._reported = signature
                self.errors += 1
                log.error(
                    "webhook certificate not reloaded; still serving the previous one",
                    cert_file=self.cert_file,
                    key_file=self.key_file,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
            self._suspect = signature
            return False
        self.context = context
        self._signature = signature
        self._suspect = self._reported = None
        self.expiry = not_after(self.cert_file)
        self.loaded_at = time.time()
        self.reloads += 1
        log.info("webhook certificate reloaded", cert_file=self.cert_file, not_after=self.expiry)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception as exc:  # a surprise in one poll must not end the watching
                log.warning("webhook certificate check failed", error=f"{type(exc).__name__}: {exc}"[:300])

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="certificate-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
