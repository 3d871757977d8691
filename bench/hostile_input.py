"""What hostile input costs the command-line tools (issue 26 items 7 and 8), run as users run
them (their own process):

- `audit -f` and `inject -f` on a List of Dynamo Deployments just under the 8 MiB input
  limit: seconds and peak RSS;
- `verify` against a frontend that streams ~1 MB of tokens for every request (it asked for
  16): requests sent and peak RSS.

    python bench/hostile_input.py                 # 8 MiB list; 10 s verify phases
    python bench/hostile_input.py --smoke         # 0.5 MiB list; 1 s phases
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability import test_hostile_frontend as frontend  # noqa: E402

ITEM = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "w", "labels": {"nvidia.com/dynamo-component-type": "worker"}},
    "spec": {
        "replicas": 1,
        "template": {
            "metadata": {"labels": {"nvidia.com/dynamo-component-type": "worker"}},
            "spec": {
                "terminationGracePeriodSeconds": 60,
                "containers": [
                    {
                        "name": "main",
                        "image": "x",
                        "command": ["python3", "-m", "dynamo.vllm"],
                        "env": [{"name": f"E{i}", "value": "v" * 20} for i in range(20)],
                        "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "40Gi"}},
                    }
                ],
            },
        },
    },
}


def timed(args: list[str]) -> tuple[int, float, int]:
    """(exit code, seconds, peak RSS in MB) of one CLI run (its rusage, through a wrapper)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import resource, subprocess, sys; "
         "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)",
         sys.executable, "-m", "agent.cli", *args],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=900)
    return proc.returncode, time.monotonic() - started, int(out.strip() or 0) // 1024


def manifests(target_bytes: int) -> None:
    one = len(yaml.safe_dump(ITEM))
    count = max(1, target_bytes // (one + 200))
    items = []
    for index in range(count):
        item = json.loads(json.dumps(ITEM))
        item["metadata"]["name"] = f"w{index}"
        items.append(item)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "list.yaml"
        path.write_text(
            yaml.dump({"apiVersion": "v1", "kind": "List", "items": items}, Dumper=yaml.CSafeDumper)
        )
        size = path.stat().st_size
        for command in (["audit", "-f", str(path)], ["inject", "-f", str(path), "--image", "x"]):
            code, seconds, peak = timed(command)
            print(
                f"{command[0]:6} {count} Deployments, {size / 2**20:.1f} MiB: exit {code}, {seconds:.1f} s, peak {peak} MB"
            )
            assert code in {0, 1, 2}, code


async def flood(phase_seconds: str) -> None:
    server = frontend.HostileFrontend()
    await server.start()
    server.mode = "flood"
    frontend.FLOOD_EVENTS = 18_000  # ~1 MB, under verify's 1 MiB answer limit
    try:
        with tempfile.TemporaryDirectory() as tmp:
            output = Path(tmp) / "report.json"
            code, _, peak_kb = await frontend.run_verify(
                server.url, "--phase-seconds", phase_seconds, "--concurrency", "4",
                "--overload-concurrency", "8", "--format", "json", "--output", str(output),
            )  # fmt: skip
            report = json.loads(output.read_text())
    finally:
        assert server.runner is not None
        await server.runner.cleanup()
    requests = sum(report["phases"][p]["requests"] for p in ("standard", "overload", "recovery"))
    print(
        f"verify vs a token flood, {phase_seconds} s phases: exit {code}, {requests} requests, peak {peak_kb // 1024} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    manifests((1 << 19) if args.smoke else (8 << 20) - (300 << 10))
    asyncio.run(flood("1" if args.smoke else "10"))


if __name__ == "__main__":
    main()
