"""What the GPU collector emits over a fixed sequence of fake-NVML states, normalised for time
and pid: every sample in emission order, events and facts (one JSON line per collection), then
the text exposition of each collection. Run it on two trees and diff, to show a refactor of
collectors/gpu.py changed nothing a scraper or a rule sees:

    python tests/fake_nvml/dump_exposition.py TREE OUT   (TREE: a checkout; builds the fake)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def steps(good: str) -> list[dict[str, Any]]:
    """A healthy pair of GPUs, the slow readings' cache, NVML errors and NOT_SUPPORTED, a lost
    GPU and its return, an XID burst, every clock reason, NVLink and a Dynamo process."""
    errors = (
        "gpu0.err.nvmlDeviceGetPowerUsage 999\nerr.nvmlDeviceGetTemperature 3\n"
        "gpu1.err.nvmlDeviceGetMemoryInfo 2\n"
    )
    burst = "".join(f"{i % 2} {xid}\n" for i, xid in enumerate([79, 48, 13, 94, 119, 31] * 3))
    busy = good.replace("gpu0.throttle 36", "gpu0.throttle 511")
    return [
        {"state": good},
        {},
        {"state": good + errors},
        {},
        {"state": good + "gpu1.lost 1\n"},
        {},
        {"state": good, "events": burst, "sleep": 1.2},
        {"state": busy + "gpu1.nvlinks 3\ngpu1.nvlink_crc 9\ngpu1.procs SELF_PID:5\n"},
    ]


def _normalise(out: dict[str, Any]) -> dict[str, Any]:
    out.pop("cpu_seconds", None)
    for event in out.get("events", []):
        event.pop("time", None)
        event.pop("timestamp", None)
        event.get("attributes", {}).pop("time", None)
    if out.get("facts"):
        out["facts"].pop("time", None)
        for xid in out["facts"].get("recent_xids") or []:
            xid.pop("time", None)
    return out


def main(tree: Path, target: Path) -> None:
    sys.path.insert(0, str(tree))
    from tests.fake_nvml.build import build_fake_nvml
    from tests.test_gpu import GOOD

    with tempfile.TemporaryDirectory() as work:
        lib = Path(work) / "lib"
        lib.mkdir()
        build_fake_nvml(lib)
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        env.update(
            FAKE_NVML_STATE=f"{work}/state", FAKE_NVML_EVENTS=f"{work}/events", LD_LIBRARY_PATH=str(lib)
        )
        Path(work, "events").write_text("")
        ran = subprocess.run(
            [sys.executable, str(tree / "tests" / "gpu_driver.py"), json.dumps(steps(GOOD))],
            capture_output=True, text=True, env=env, timeout=120, cwd=tree,
        )  # fmt: skip
    if ran.returncode != 0:
        raise SystemExit(ran.stderr)
    lines = [line for line in ran.stdout.splitlines() if line.startswith("{")]
    render = (
        f"import json, sys\nsys.path.insert(0, {str(tree)!r})\n"
        "from agent.core.samples import sample\nfrom exporters.prometheus import OwnText\n"
        "for line in sys.stdin:\n"
        "    out = json.loads(line)\n"
        "    found = [sample(n, v, **labels) for n, labels, v in out.get('samples', [])]\n"
        "    print(OwnText().render(found, set()))\n"
    )
    text = subprocess.run(
        [sys.executable, "-c", render],
        input="\n".join(lines),
        capture_output=True,
        text=True,
        cwd=tree,
        timeout=60,
    )
    if text.returncode != 0:
        raise SystemExit(text.stderr)
    dump = "".join(json.dumps(_normalise(json.loads(line))) + "\n" for line in lines) + text.stdout
    for pid in set(re.findall(r'pid="(\d+)",process="dynamo.mocker"', dump)):  # the driver's own pid
        dump = re.sub(rf"\b{pid}\b", "DRIVER_PID", dump)
    target.write_text(dump)
    print(f"{target}: {len(lines)} collections")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
