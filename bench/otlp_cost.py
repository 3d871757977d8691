"""What each OTLP transport costs the sidecar: import + exporter construction time and resident
memory, in fresh processes, gRPC (grpcio) against OTLP/HTTP (requests) against no exporter.

The sidecar imports a transport only when it is selected (exporters/otlp.py), so these are the
costs a pod pays for the protocol it uses, on top of the OpenTelemetry SDK every sidecar loads.

    python bench/otlp_cost.py            # 7 runs per transport, medians
    python bench/otlp_cost.py --smoke    # 1 run each, for CI
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys, threading, time

def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

started = time.perf_counter()
from agent.config import load_config
from exporters.otlp import OtlpSettings, make_exporter
base_seconds, base_rss = time.perf_counter() - started, rss_mib()
protocol = sys.argv[1]
mark = time.perf_counter()
if protocol != "none":
    endpoint = "http://127.0.0.1:9" + ("/v1/traces" if protocol == "http/protobuf" else "")
    exporter = make_exporter(OtlpSettings(endpoint=endpoint, protocol=protocol, timeout=0.2))
    exporter.export([])  # the first call sets up the transport (channel, session) as at run time
print(json.dumps({
    "base_seconds": base_seconds,
    "base_rss_mib": base_rss,
    "transport_seconds": time.perf_counter() - mark,
    "transport_rss_mib": rss_mib() - base_rss,
    "grpc_loaded": "grpc" in sys.modules,
    "requests_loaded": "requests" in sys.modules,
}))
"""


def measure(protocol: str) -> dict[str, float | bool]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, protocol],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"probe for {protocol} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="one run per transport")
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    print(f"{'transport':14} {'import+setup':>13} {'RSS added':>10}   (base: SDK import, RSS)")
    for protocol in ("none", "http/protobuf", "grpc"):
        samples = [measure(protocol) for _ in range(runs)]
        seconds = statistics.median(float(s["transport_seconds"]) for s in samples)
        rss = statistics.median(float(s["transport_rss_mib"]) for s in samples)
        base = statistics.median(float(s["base_seconds"]) for s in samples)
        base_rss = statistics.median(float(s["base_rss_mib"]) for s in samples)
        print(
            f"{protocol:14} {seconds * 1000:10.0f} ms {rss:7.1f} MiB   ({base * 1000:.0f} ms, {base_rss:.1f} MiB)"
        )
        loaded = samples[0]
        # The point of the lazy import: nothing of gRPC unless gRPC is chosen.
        if (protocol == "grpc") != loaded["grpc_loaded"]:
            print(f"error: grpc loaded={loaded['grpc_loaded']} for {protocol}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
