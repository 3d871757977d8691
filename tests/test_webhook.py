"""The admission webhook as the API server meets it: AdmissionReviews over real TLS, whole
bodies of every size in one write and in slow pieces, answers that always carry the uid,
certificates replaced under a running server, and a peer that holds every connection it
can while the kubelet and Prometheus still get answers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.tools.inject import Options, inject
from agent.tools.webhook import (
    PROTECTED_NAMESPACES,
    WebhookServer,
    WebhookSettings,
    json_patch,
    uid_from_head,
)
from tests.conn_holder import holding
from tests.helpers import PYTHON, ROOT, free_port, wait_for, wait_for_sync
from tests.webhook_client import (
    client_tls,
    file_certificate,
    make_pair,
    patched_pod,
    post_review,
    served_certificate,
    sized_review,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

KB, MB = 1000, 1 << 20


@pytest.fixture
async def make_webhook(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[WebhookServer]]]:
    started: list[WebhookServer] = []

    async def factory(**overrides: Any) -> WebhookServer:
        if "cert_file" not in overrides:
            cert, key = make_pair(tmp_path / f"pair{len(started)}")
            overrides.update(cert_file=str(cert), key_file=str(key))
        values: dict[str, Any] = {
            "options": Options(image="registry.test/dynamo-sidecar:test"),
            "host": "127.0.0.1",
            "port": 0,
            "reload_interval": 0.2,
        }
        values.update(overrides)
        server = WebhookServer(WebhookSettings(**values))
        await server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.stop()


async def review(server: WebhookServer, body: bytes, **kwargs: Any) -> dict[str, Any]:
    status, answer = await asyncio.to_thread(post_review, server.port, body, **kwargs)
    assert status == 200, answer[:300]
    return json.loads(answer)


def expect_patched(answer: dict[str, Any], pod: dict[str, Any], uid: str) -> None:
    response = answer["response"]
    assert response["uid"] == uid and response["allowed"] is True, response
    assert patched_pod(pod, answer) == inject(pod, Options(image="registry.test/dynamo-sidecar:test"))[0]


# --- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1 * KB, 16 * KB, 60 * KB, 180 * KB, 1 * MB, 3 * MB], ids=str)
async def test_reviews_of_every_size_are_patched_in_one_write_and_in_slow_pieces(make_webhook, size) -> None:
    """The API server's body rarely arrives in one read: 16 KB records over TLS, and a slow
    link. Before, anything past the first read was cut off and answered uid "" unpatched."""
    server = await make_webhook()
    body, pod = sized_review(size, f"uid-{size}")
    expect_patched(await review(server, body), pod, f"uid-{size}")
    # 40 pieces 5 ms apart: the body spans many reads and several TLS records however large.
    expect_patched(await review(server, body, pieces=40, pause=0.005), pod, f"uid-{size}")
    assert server.webhook.counts == {"patched": 2}


async def test_failures_are_answered_with_the_uid_and_counted(make_webhook) -> None:
    server = await make_webhook(max_review_bytes=2 * MB, read_timeout=1.0)
    # Too large: answered at once, unread, with the uid from the review's head.
    big, _ = sized_review(3 * MB, "uid-too-large")
    answer = (await review(server, big))["response"]
    assert answer == {
        "uid": "uid-too-large",
        "allowed": True,
        "warnings": ["dynamo-sidecar: review over 2 MiB; not injected"],
    }
    # Not JSON, but the uid is there to read.
    broken, _ = sized_review(2 * KB, "uid-broken")
    answer = (await review(server, broken[:-40]))["response"]
    assert answer["uid"] == "uid-broken" and answer["allowed"] is True and "patch" not in answer
    # A body that stops arriving: answered at read_timeout, uid from what did arrive.
    slow, _ = sized_review(20 * KB, "uid-slow")

    def stalled() -> tuple[int, bytes]:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with client_tls().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(
                f"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(slow)}\r\n\r\n".encode()
                + slow[: len(slow) // 2]
            )
            data = sock.recv(65536)
            return int(data.split()[1]), data.partition(b"\r\n\r\n")[2]

    status, body = await asyncio.to_thread(stalled)
    assert status == 200 and json.loads(body)["response"]["uid"] == "uid-slow"
    # A review of something else: unchanged, no patch.
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}}
    plain = json.dumps({"request": {"uid": "uid-service", "object": service}}).encode()
    answer = (await review(server, plain))["response"]
    assert answer == {"uid": "uid-service", "allowed": True}
    assert server.webhook.counts == {"too_large": 1, "error": 1, "timeout": 1, "unchanged": 1}
    text = server.webhook.metrics_text().decode()
    assert 'dynamo_sidecar_webhook_reviews_total{outcome="too_large"} 1.0' in text
    assert "dynamo_sidecar_webhook_review_duration_seconds_count 4.0" in text


async def test_review_bytes_in_hand_are_bounded(make_webhook) -> None:
    """Bodies held at once share a budget: a review that finds no room in time is answered
    `busy` (without a uid: nothing of it was read)."""
    server = await make_webhook(body_budget_bytes=64 * KB, read_timeout=5.0, budget_wait=0.3)
    holder, _ = sized_review(60 * KB, "uid-holder")

    def stalled() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock = client_tls().wrap_socket(raw, server_hostname="127.0.0.1")
        sock.sendall(f"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(holder)}\r\n\r\n".encode())
        return sock

    sock = await asyncio.to_thread(stalled)  # reserves 60 KB and sends nothing more
    await wait_for(lambda: server.webhook.budget.used == len(holder), what="budget reserved")
    second, _ = sized_review(20 * KB, "uid-second")
    answer = (await review(server, second))["response"]
    assert answer == {"uid": "", "allowed": True, "warnings": ["dynamo-sidecar: webhook busy; not injected"]}
    sock.close()
    await wait_for(lambda: server.webhook.budget.used == 0, what="budget given back")
    assert server.webhook.counts == {"busy": 1, "error": 1}  # the first: its client went away
    third, pod = sized_review(20 * KB, "uid-third")
    expect_patched(await review(server, third), pod, "uid-third")


@pytest.mark.parametrize("namespace", sorted(PROTECTED_NAMESPACES))
async def test_never_injects_into_kube_system(make_webhook, namespace) -> None:
    server = await make_webhook()
    body, _ = sized_review(2 * KB, "uid-ks", namespace=namespace)
    answer = (await review(server, body))["response"]
    assert answer["uid"] == "uid-ks" and "patch" not in answer
    assert answer["warnings"] == [f"dynamo-sidecar: never injects into {namespace}"]
    assert server.webhook.counts == {"skipped": 1}


async def test_a_small_review_does_not_wait_behind_large_ones(make_webhook) -> None:
    """Large reviews are worked on a lane of their own, off the event loop: four 3 MB
    reviews in flight do not hold a small one (before, they made it wait 3.5 s)."""
    server = await make_webhook()
    large, _ = sized_review(3 * MB, "uid-large")
    small, pod = sized_review(2 * KB, "uid-small")
    large_tasks = [asyncio.create_task(review(server, large)) for _ in range(4)]
    await wait_for(lambda: server.webhook.budget.used >= 3 * MB, timeout=30, what="a large review read")
    expect_patched(await review(server, small), pod, "uid-small")
    assert not all(task.done() for task in large_tasks)  # answered while large ones were in hand
    for answer in await asyncio.gather(*large_tasks):
        assert answer["response"]["uid"] == "uid-large" and "patch" in answer["response"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text("ab/~", max_size=3),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text("ab/~", max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_json_patch_turns_one_document_into_the_other(source: Any, target: Any) -> None:
    assert jsonpatch.apply_patch(source, json_patch(source, target)) == target


# --- certificates ------------------------------------------------------------------------


async def test_a_replaced_certificate_is_served_without_dropping_connections(make_webhook, tmp_path) -> None:
    cert, key = make_pair(tmp_path / "a", "first")
    server = await make_webhook(cert_file=str(cert), key_file=str(key))
    assert await asyncio.to_thread(served_certificate, server.port) == file_certificate(cert)
    connector = aiohttp.TCPConnector(ssl=client_tls(), limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"https://127.0.0.1:{server.port}/healthz"
        async with session.get(url) as response:  # a keep-alive connection from before
            assert response.status == 200
        new_cert, new_key = make_pair(tmp_path / "b", "second")
        # In place, as `kubectl create secret ... | kubectl apply` with a hostPath would.
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(new_cert.read_bytes())
        await wait_for(lambda: server.certificates.reloads == 1, timeout=10, what="reload")
        assert await asyncio.to_thread(served_certificate, server.port) == file_certificate(new_cert)
        # The connection opened before the reload is still there and still answers.
        async with session.get(url) as response:
            assert response.status == 200
        assert connector._conns and sum(len(c) for c in connector._conns.values()) == 1
    assert server.certificates.errors == 0
    expiry = server.certificates.expiry
    assert expiry is not None and 0 < expiry - time.time() <= 86400 + 60


def _kubelet_volume(directory: Path, version: str, source: tuple[Path, Path]) -> None:
    """Lay out a Secret volume as the kubelet's atomic writer does: the files live in a
    timestamped directory, `..data` points at it, and `tls.crt` -> `..data/tls.crt`."""
    target = directory / f"..{version}"
    target.mkdir()
    (target / "tls.crt").write_bytes(source[0].read_bytes())
    (target / "tls.key").write_bytes(source[1].read_bytes())
    link = directory / "..data_tmp"
    link.symlink_to(target.name)
    os.replace(link, directory / "..data")  # the swap: one rename
    for name in ("tls.crt", "tls.key"):
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


async def test_a_secret_volume_update_is_served(make_webhook, tmp_path) -> None:
    volume = tmp_path / "tls"
    volume.mkdir()
    first = make_pair(tmp_path / "a", "first")
    _kubelet_volume(volume, "2026_01_01_00_00_00.1", first)
    server = await make_webhook(cert_file=str(volume / "tls.crt"), key_file=str(volume / "tls.key"))
    assert await asyncio.to_thread(served_certificate, server.port) == file_certificate(first[0])
    second = make_pair(tmp_path / "b", "second")
    _kubelet_volume(volume, "2026_02_01_00_00_00.2", second)
    await wait_for(lambda: server.certificates.reloads == 1, timeout=10, what="reload")
    assert await asyncio.to_thread(served_certificate, server.port) == file_certificate(second[0])


async def test_a_broken_pair_keeps_the_old_certificate_and_is_counted_once(
    make_webhook, tmp_path, capsys
) -> None:
    cert, key = make_pair(tmp_path / "a", "first")
    original = file_certificate(cert)
    server = await make_webhook(cert_file=str(cert), key_file=str(key))
    other_cert, other_key = make_pair(tmp_path / "b", "second")
    cert.write_bytes(other_cert.read_bytes())  # a new certificate with the old key: a mismatch
    await wait_for(lambda: server.certificates.errors == 1, timeout=10, what="reload error")
    assert await asyncio.to_thread(served_certificate, server.port) == original
    # Still broken a while later: still counted once, logged once.
    polls = 5
    checked = time.monotonic()
    await wait_for(lambda: time.monotonic() - checked > polls * 0.2, timeout=5, what="more polls")
    assert server.certificates.errors == 1 and server.certificates.reloads == 0
    logged = [line for line in capsys.readouterr().out.splitlines() if "certificate not reloaded" in line]
    assert len(logged) == 1, logged
    # Half written: a truncated certificate is no better.
    cert.write_bytes(other_cert.read_bytes()[:200])
    await wait_for(lambda: server.certificates.errors == 2, timeout=10, what="second reload error")
    assert await asyncio.to_thread(served_certificate, server.port) == original
    text = server.webhook.metrics_text().decode()
    assert "dynamo_sidecar_webhook_certificate_reload_errors_total 2.0" in text
    # The matching key arrives: the new pair is served.
    key.write_bytes(other_key.read_bytes())
    cert.write_bytes(other_cert.read_bytes())
    await wait_for(lambda: server.certificates.reloads == 1, timeout=10, what="reload")
    assert await asyncio.to_thread(served_certificate, server.port) == file_certificate(other_cert)


# --- connections -------------------------------------------------------------------------


async def _probe(url: str, count: int) -> int:
    """Answers out of `count` GETs on fresh connections from 127.0.0.1, 2 s each (a kubelet
    probe's budget is 1 s by default, a scrape's 10 s)."""
    answered = 0
    for _ in range(count):
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0), force_close=True, ssl=client_tls())
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


@pytest.mark.slow
async def test_one_peer_holding_the_cap_does_not_lock_out_probes_and_scrapes(make_webhook) -> None:
    """127.0.0.2 holds more TLS connections than the cap and re-opens each one closed;
    /healthz and /metrics from 127.0.0.1 still answer (the check: >= 90 %)."""
    server = await make_webhook(max_connections=64, idle_timeout=30)
    limiter = server.webhook.limiters["https"]
    async with holding(server.port, 80, tls=True) as counts:
        assert counts["held_at_start"] > limiter.per_peer // 2
        url = f"https://127.0.0.1:{server.port}"
        healthz = await _probe(url + "/healthz", 20)
        held = len(limiter.by_peer.get("127.0.0.2", {}))
        metrics = await _probe(url + "/metrics", 20)
        assert 0 < held <= limiter.per_peer and limiter.active <= limiter.limit
    assert healthz >= 18 and metrics >= 18, (healthz, metrics)
    assert limiter.refused > 0  # the holder did push past its share


async def test_idle_connections_are_shed_oldest_first_and_busy_ones_kept(make_webhook) -> None:
    server = await make_webhook(max_connections=8, idle_timeout=30)
    limiter = server.webhook.limiters["https"]  # a peer's share: 6

    def open_tls(source: str = "127.0.0.1") -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
        return client_tls().wrap_socket(raw, server_hostname="127.0.0.1")

    def closed(sock: socket.socket, within: float = 5) -> bool:
        sock.settimeout(within)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    # Busy: a review whose body has not all arrived is in the middle of a request.
    busy = []
    for _ in range(limiter.per_peer):
        sock = await asyncio.to_thread(open_tls)
        sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        busy.append(sock)
    await wait_for(lambda: limiter.active == limiter.per_peer, what="busy connections")
    # At its share, a peer's next connection is refused before its TLS handshake.
    extra = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", server.port), 10)
    assert await asyncio.to_thread(closed, extra)
    assert limiter.refused == 1 and limiter.shed == 0
    # Another peer fills the cap; at the cap, nothing idle to shed: refused as well.
    others = [await asyncio.to_thread(open_tls, "127.0.0.2") for _ in range(limiter.limit - limiter.per_peer)]
    for sock in others:
        sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await wait_for(lambda: limiter.active == limiter.limit, what="cap reached")
    third = await asyncio.to_thread(
        socket.create_connection, ("127.0.0.1", server.port), 10, ("127.0.0.3", 0)
    )
    assert await asyncio.to_thread(closed, third)
    assert limiter.refused == 2 and limiter.shed == 0  # none of the busy ones was shed
    for sock in busy + others:
        sock.close()
    await wait_for(lambda: limiter.active == 0, what="busy ones closed")

    # Idle ones: at the cap a newcomer sheds the oldest idle connection of the peer holding most.
    idle = [await asyncio.to_thread(open_tls) for _ in range(limiter.per_peer)]
    others = [await asyncio.to_thread(open_tls, "127.0.0.2") for _ in range(limiter.limit - limiter.per_peer)]
    await wait_for(lambda: limiter.active == limiter.limit, what="cap reached")
    newcomer = await asyncio.to_thread(open_tls, "127.0.0.3")
    assert await asyncio.to_thread(closed, idle[0]) and limiter.shed == 1
    assert not await asyncio.to_thread(closed, idle[1], 0.2)
    assert not await asyncio.to_thread(closed, others[0], 0.2)  # not the peer holding most
    assert set(limiter.by_peer) == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
    for sock in [*idle, *others, newcomer]:
        sock.close()


# --- the command -------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5, context=client_tls()) as response:
        return response.status, response.read().decode()


def test_the_webhook_command_reloads_its_certificate_and_stops_on_sigterm(tmp_path) -> None:
    """The check of issue 24: files replaced under a running `dynamo-sidecar webhook` are
    served within a minute, without a restart; /metrics also on the plain-HTTP port."""
    volume = tmp_path / "tls"
    volume.mkdir()
    first = make_pair(tmp_path / "a", "first")
    _kubelet_volume(volume, "v1", first)
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "agent.cli", "webhook", "--image=registry.test/dynamo-sidecar:test", f"--tls-cert-file={volume / 'tls.crt'}",
         f"--tls-key-file={volume / 'tls.key'}", "--listen-host=127.0.0.1", f"--listen-port={port}",
         f"--metrics-port={metrics_port}", "--tls-reload-interval=1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_sync(lambda: _can_connect(port), timeout=30, what="webhook listening")
        assert served_certificate(port) == file_certificate(first[0])
        second = make_pair(tmp_path / "b", "second")
        replaced = time.monotonic()
        _kubelet_volume(volume, "v2", second)
        wait_for_sync(
            lambda: served_certificate(port) == file_certificate(second[0]),
            timeout=60,
            what="new certificate",
        )
        assert time.monotonic() - replaced < 60 and proc.poll() is None
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and "dynamo_sidecar_webhook_certificate_reloads_total 1.0" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in out + err
    assert any(json.loads(line).get("message") == "webhook certificate reloaded" for line in out.splitlines())


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_the_webhook_command_refuses_a_missing_certificate(tmp_path) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "agent.cli", "webhook", "--image=registry.test/dynamo-sidecar:test", f"--tls-cert-file={tmp_path / 'no.crt'}",
         f"--tls-key-file={tmp_path / 'no.key'}", "--listen-port=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 64 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--tls-cert-file" in result.stderr and "Traceback" not in result.stderr


def test_uid_from_head_takes_only_the_requests_uid() -> None:
    assert uid_from_head(b'{"kind":"AdmissionReview","request":{"uid":"a-1","object":{"uid":"x"}}}') == "a-1"
    assert uid_from_head(b'{"request":{"kind":{},"uid":"late"}}') == ""  # not first: not trusted
    assert uid_from_head(b'{"request":{"uid":"bad\\"quote"}}') == ""
