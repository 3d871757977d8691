"""What the tests and bench/webhook_reviews.py need to talk to the webhook as the API server
does: AdmissionReviews of a chosen size built from an operator-shaped pod, sent over real
TLS in one write or in slow pieces, and the served certificate read back."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "k8s"


def worker_pod() -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all((FIXTURES / "worker_pod.yaml").read_text()) if d)


def review_of(pod: dict[str, Any], uid: str, namespace: str = "dynamo") -> dict[str, Any]:
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:dynamo:dynamo-operator"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
        },
    }


def sized_review(size: int, uid: str, namespace: str = "dynamo") -> tuple[bytes, dict[str, Any]]:
    """(the review's JSON, its pod) about `size` bytes long: the operator's worker pod with
    env vars added to `main` until it is that big, as an operator-rendered pod with many
    env vars and volumes is."""
    pod = worker_pod()
    empty = len(json.dumps(review_of(pod, uid, namespace)).encode())
    main = pod["spec"]["containers"][0]
    env = main.setdefault("env", [])
    filler = max(0, size - empty)
    index = 0
    while filler > 0:
        entry = {"name": f"APP_SETTING_{index:06d}", "value": "x" * min(200, max(1, filler - 60))}
        env.append(entry)
        filler -= len(json.dumps(entry)) + 2
        index += 1
    return json.dumps(review_of(pod, uid, namespace)).encode(), pod


def client_tls(cafile: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _recv_response(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the headers: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def post_review(
    port: int,
    body: bytes,
    *,
    pieces: int = 1,
    pause: float = 0.0,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """POST /mutate as the API server does (Content-Length, one TLS connection), the body in
    one write or in `pieces` writes `pause` seconds apart. Blocking: run it in a thread."""
    raw = socket.create_connection((host, port), timeout=timeout)
    with client_tls().wrap_socket(raw, server_hostname=host) as sock:
        sock.settimeout(timeout)
        headers = (
            f"POST /mutate?timeout=10s HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        if pieces <= 1:
            sock.sendall(headers + body)
        else:
            sock.sendall(headers)
            step = -(-len(body) // pieces)
            for offset in range(0, len(body), step):
                sock.sendall(body[offset : offset + step])
                time.sleep(pause)
        return _recv_response(sock)


def patched_pod(pod: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any] | None:
    """The pod with the answer's patch applied; None when the answer carries no patch."""
    response = answer["response"]
    if "patch" not in response:
        return None
    assert response["patchType"] == "JSONPatch"
    return jsonpatch.apply_patch(copy.deepcopy(pod), json.loads(base64.b64decode(response["patch"])))


def served_certificate(port: int, host: str = "127.0.0.1") -> str:
    """SHA-256 of the certificate a new TLS connection is handshaken with."""
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        client_tls().wrap_socket(raw, server_hostname=host) as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_certificate(cert_file: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert_file.read_text())
    return hashlib.sha256(der).hexdigest()


def make_pair(directory: Path, name: str = "tls", days: int = 1) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as `<name>.crt` / `<name>.key`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", str(days), "-subj", f"/CN=127.0.0.1/O={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key
