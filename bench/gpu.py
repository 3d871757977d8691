"""CPU cost of one GPU collection over 8 GPUs, through the real pynvml binding and the fake
libnvidia-ml.so.1 the tests build (no GPU is needed).

    python bench/gpu.py            # 200 collections of idle GPUs (the same values every time)
    python bench/gpu.py --busy     # the live readings change before every collection
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


def state(gpus: int, step: int = 0, idle: bool = False) -> str:
    """The fake's state; past step 0, what a busy GPU changes between two collections
    (utilisation, memory, temperature, power, clocks, PCIe throughput, its process's memory)
    differs at every step, while thresholds, ECC, NVLink and the rest stay. `idle`: the GPUs
    of an idle pod instead (the model's weights loaded, nothing running, clocks down for
    idleness, not throttled); the default is a busy, power-capped GPU (a warning finding)."""
    lines = [f"count {gpus}"]
    for i in range(gpus):
        lines += [
            f"gpu{i}.util_gpu {0 if idle else 50 + i}",
            f"gpu{i}.mem_used {60 * 2**30 if idle else i * 2**30}",
            f"gpu{i}.throttle {1 if idle else 4}",
            f"gpu{i}.nvlinks 4",
            f"gpu{i}.procs {100000 + i}:{60 * 2**30}"
            if idle
            else f"gpu{i}.procs {os.getpid()}:{2**30},{100000 + i}:{2**20}",
        ]
        if step:
            lines += [
                f"gpu{i}.util_gpu {step % 100}",
                f"gpu{i}.util_mem {(step * 7) % 100}",
                f"gpu{i}.mem_used {i * 2**30 + step * 2**20}",
                f"gpu{i}.temp {40 + step % 40}",
                f"gpu{i}.power_mw {300000 + step * 10}",
                f"gpu{i}.clock_sm {1000 + step % 900}",
                f"gpu{i}.clock_mem {2000 + step % 600}",
                f"gpu{i}.pcie_tx_kbs {step * 13}",
                f"gpu{i}.pcie_rx_kbs {step * 17}",
                f"gpu{i}.procs {os.getpid()}:{2**30 + step * 2**20},{100000 + i}:{2**20}",
            ]
    return "\n".join(lines) + "\n"


def fake_gpu_env(workdir: Path, gpus: int = 8, idle: bool = False) -> dict[str, str]:
    """The environment that makes a sidecar process load the tests' fake NVML with `gpus`
    GPUs (built in `workdir`); the plain environment when there is no C compiler."""
    import shutil

    env = {**os.environ}
    if shutil.which("gcc"):
        build_fake_nvml(workdir)
        (workdir / "state").write_text(state(gpus, idle=idle))
        env.update(LD_LIBRARY_PATH=str(workdir), FAKE_NVML_STATE=str(workdir / "state"))
    return env


async def measure(runs: int, busy: bool) -> dict:
    from collectors.gpu import GpuCollector

    collector = GpuCollector(1, 5, dynamo_pids=lambda: {os.getpid(): "dynamo.mocker"})
    first = await collector.collect()
    samples = len(first.samples)
    state_file = Path(os.environ["FAKE_NVML_STATE"])
    timings = []
    for run in range(1, runs + 1):
        if busy:  # outside the measured time; the fake reloads the file inside it
            state_file.write_text(state(8, run))
        started = time.process_time()
        await collector.collect()
        timings.append(time.process_time() - started)
    await collector.close()
    timings.sort()
    return {
        "gpus": 8,
        "readings": "busy" if busy else "idle",
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
    parser.add_argument("--busy", action="store_true", help="live readings change every collection")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if "FAKE_NVML_STATE" not in os.environ:
        # Build the fake and re-run with the loader pointed at it, as the tests do.
        workdir = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
        build_fake_nvml(workdir)
        (workdir / "state").write_text(state(8))
        env = {**os.environ, "LD_LIBRARY_PATH": str(workdir), "FAKE_NVML_STATE": str(workdir / "state")}
        sys.exit(subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=env).returncode)
    result = asyncio.run(measure(20 if args.smoke else args.runs, args.busy))
    print(json.dumps(result, indent=1))
    sys.exit(0 if args.smoke or result["cpu_ms_p50"] < 5 else 1)


if __name__ == "__main__":
    main()
