"""AdmissionReviews of every size against `dynamo-sidecar webhook` run as users run it (its
own process, real TLS): how many are patched with the right uid, in one write and in slow
pieces (40 writes 5 ms apart, as over a slow link), how long they take, how long a small
review waits while four 3 MiB ones are in hand, and the webhook's peak memory.

    python bench/webhook_reviews.py                # 10 of each size, both ways
    python bench/webhook_reviews.py --smoke        # 2 of three sizes
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.webhook_client import make_pair, patched_pod, post_review, sized_review  # noqa: E402

SIZES = [1_000, 16_000, 30_000, 60_000, 180_000, 1 << 20, 3 << 20]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def one(port: int, size: int, index: int, pieces: int) -> tuple[bool, float]:
    uid = f"bench-{size}-{index}-{pieces}"
    body, pod = sized_review(size, uid)
    started = time.monotonic()
    try:
        status, raw = post_review(port, body, pieces=pieces, pause=0.005 if pieces > 1 else 0.0)
    except OSError:
        return False, time.monotonic() - started
    elapsed = time.monotonic() - started
    if status != 200:
        return False, elapsed
    answer = json.loads(raw)
    return answer["response"].get("uid") == uid and patched_pod(pod, answer) is not None, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    sizes = SIZES
    if args.smoke:
        sizes, args.repeat = [1_000, 60_000, 1 << 20], 2
    if shutil.which("openssl") is None:
        print("openssl not installed: cannot make the webhook's certificate", file=sys.stderr)
        sys.exit(3)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_pair(Path(tmp))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "webhook", "--image=registry.test/dynamo-sidecar:test", f"--tls-cert-file={cert}", f"--tls-key-file={key}",
             "--listen-host=127.0.0.1", f"--listen-port={port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            rows = []
            for size in sizes:
                for pieces, way in ((1, "one write"), (40, "slow pieces")):
                    results = [one(port, size, i, pieces) for i in range(args.repeat)]
                    times = [t for _, t in results]
                    rows.append(
                        {
                            "size_bytes": size,
                            "way": way,
                            "patched": f"{sum(ok for ok, _ in results)}/{args.repeat}",
                            "median_s": round(statistics.median(times), 3),
                            "max_s": round(max(times), 3),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
            # A small review while four of the largest are in hand.
            large = 3 << 20 if not args.smoke else 1 << 20
            with ThreadPoolExecutor(5) as pool:
                big = [pool.submit(one, port, large, i, 1) for i in range(4)]
                time.sleep(0.3)  # let the large ones be sent first: this is pacing, not waiting on a result
                small_ok, small_s = pool.submit(one, port, 2_000, 99, 1).result()
                big_results = [f.result() for f in big]
            print(
                json.dumps(
                    {
                        "small_review_during_4_large": {"patched": small_ok, "seconds": round(small_s, 3)},
                        "large_reviews": {
                            "size_bytes": large,
                            "patched": f"{sum(ok for ok, _ in big_results)}/4",
                            "max_s": round(max(t for _, t in big_results), 3),
                        },
                        "webhook_peak_rss_mb": round(status_kb(proc.pid, "VmHWM") / 1024, 1),
                        "webhook_rss_mb": round(status_kb(proc.pid, "VmRSS") / 1024, 1),
                    }
                ),
                flush=True,
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
