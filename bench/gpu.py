"""CPU cost of one GPU collection over 8 GPUs, through the real pynvml binding and the fake
libnvidia-ml.so.1 the tests build (no GPU is needed).

    python bench/gpu.py            # 200 collections
    python bench/gpu.py --smoke    # 20
Reports CPU per collection for the whole process (the sidecar's Python plus the fake NVML,
which only reads a small file), so the sidecar's own share is below the number shown.
Target: under 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_nvml.build import build_fake_nvml  # noqa: E402


def state(gpus: int) -> str:
    lines = [f"count {gpus}"]
    for i in range(gpus):
        lines += [
            f"gpu{i}.util_gpu {50 + i}",
            f"gpu{i}.mem_used {i * 2**30}",
            f"gpu{i}.throttle 4",
            f"gpu{i}.nvlinks 4",
            f"gpu{i}.procs {os.getpid()}:{2**30},{100000 + i}:{2**20}",
        ]
    return "\n".join(lines) + "\n"


def fake_gpu_env(workdir: Path, gpus: int = 8) -> dict[str, str]:
    """The environment that makes a sidecar process load the tests' fake NVML with `gpus`
    GPUs (built in `workdir`); the plain environment when there is no C compiler."""
    import shutil

    env = {**os.environ}
    if shutil.which("gcc"):
        build_fake_nvml(workdir)
        (workdir / "state").write_text(state(gpus))
        env.update(LD_LIBRARY_PATH=str(workdir), FAKE_NVML_STATE=str(workdir / "state"))
    return env


async def measure(runs: int) -> dict:
    from collectors.gpu import GpuCollector

    collector = GpuCollector(1, 5, dynamo_pids=lambda: {os.getpid(): "dynamo.mocker"})
    first = await collector.collect()
    samples = len(first.samples)
    timings = []
    for _ in range(runs):
        started = time.process_time()
        await collector.collect()
        timings.append(time.process_time() - started)
    await collector.close()
    timings.sort()
    return {
        "gpus": 8,
        "samples_per_collection": samples,
        "runs": runs,
        "cpu_ms_p50": round(statistics.median(timings) * 1000, 3),
        "cpu_ms_p99": round(timings[int(len(timings) * 0.99) - 1] * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if "FAKE_NVML_STATE" not in os.environ:
        # Build the fake and re-run with the loader pointed at it, as the tests do.
        workdir = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
        build_fake_nvml(workdir)
        (workdir / "state").write_text(state(8))
        env = {**os.environ, "LD_LIBRARY_PATH": str(workdir), "FAKE_NVML_STATE": str(workdir / "state")}
        sys.exit(subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode)
    result = asyncio.run(measure(20 if args.smoke else args.runs))
    print(json.dumps(result, indent=1))
    sys.exit(0 if args.smoke or result["cpu_ms_p50"] < 5 else 1)


if __name__ == "__main__":
    main()
