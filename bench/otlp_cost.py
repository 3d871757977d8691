"""What each OTLP transport costs the sidecar, gRPC (grpcio) against OTLP/HTTP (requests)
against traces off:

1. import + exporter set-up time and resident memory, in fresh processes;
2. a running sidecar (`dynamo-sidecar run` watching the simulated Dynamo, canaries every
   0.5 s) exporting to a real collector (rotel): resident memory, OS threads, spans received.

The sidecar imports a transport only when it is selected (exporters/otlp.py), so these are the
costs a pod pays for the protocol it uses, on top of the OpenTelemetry SDK every sidecar loads.

    python bench/otlp_cost.py            # 7 fresh-process runs and 3 sidecar runs per transport
    python bench/otlp_cost.py --smoke    # 1 fresh-process run each, 1 gRPC sidecar: for CI
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.otlp_receiver import Rotel, rotel_binary  # noqa: E402
from tests.procs import ENV, spawn_sidecar, start_sim  # noqa: E402

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
from exporters.otlp import make_exporter
from exporters.otlp_settings import OtlpSettings
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


def proc_status(pid: int) -> tuple[float, int]:
    """(resident MiB, OS threads) of a process."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def running_sidecars(runs: int, seconds: float, only: tuple[str, ...] = ()) -> int:
    binary = rotel_binary()
    if binary is None:
        print("running sidecar: skipped, rotel not installed (pip install -e '.[test]')")
        return 0
    rotel = Rotel(binary, Path(tempfile.mkdtemp(prefix="otlp-cost-")))
    rotel.start()
    sim, ports = start_sim()
    base = {k: v for k, v in ENV.items() if not k.startswith("OTEL_")}
    transports = {
        "none": {},
        "http/protobuf": {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": rotel.http_url,
        },
        # Dynamo's documented setup: export on, a gRPC traces endpoint, no protocol.
        "grpc": {"OTEL_EXPORT_ENABLED": "true", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rotel.grpc_url},
    }
    print(
        f"\n{'running sidecar':16} {'RSS':>9} {'threads':>8} {'spans received':>15}   ({seconds:g} s, canaries every 0.5 s)"
    )
    try:
        for protocol, env in transports.items():
            if only and protocol not in only:
                continue
            samples = []
            received = len(rotel.spans())
            for _ in range(runs):
                proc, _url = spawn_sidecar(
                    f"http://127.0.0.1:{ports['frontend']}",
                    f"http://127.0.0.1:{ports['worker']}",
                    "--canary-wait",
                    "0.5",
                    pid=ports["pid"],
                    env={**base, **env},
                )
                time.sleep(seconds)  # the measurement window itself: canaries run, spans export
                samples.append(proc_status(proc.pid))
                proc.kill()
                proc.wait(timeout=10)
            received = len(rotel.spans()) - received
            rss = statistics.median(s[0] for s in samples)
            threads = statistics.median(s[1] for s in samples)
            print(f"{protocol:16} {rss:5.1f} MiB {threads:8.0f} {received:15d}")
            if (protocol == "none") != (received == 0):
                print(f"error: {received} spans received with traces {protocol}", file=sys.stderr)
                return 1
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        rotel.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=4.0, help="how long each running sidecar runs")
    parser.add_argument("--smoke", action="store_true", help="one run of each")
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
    if args.smoke:  # CI: one sidecar on Dynamo's default transport, delivering to the collector
        return running_sidecars(1, 2.0, only=("grpc",))
    return running_sidecars(3, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
