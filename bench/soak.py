"""The reliability soak for longer: tests/reliability/test_soak.py (a flapping simulated Dynamo,
OTLP down, rotating logs, steady scrapes) for ten minutes, printing RSS, task and thread
counts at the baseline and the end, and the exit time after SIGTERM.

    python bench/soak.py              # 600 s
    python bench/soak.py --seconds 120
    python bench/soak.py --smoke      # 8 s: the wiring only; the suite runs the soak itself for 30 s
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    seconds = 8.0 if args.smoke else args.seconds
    env = {**os.environ, "DYN_SIDECAR_SOAK_SECONDS": str(seconds)}
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "tests/reliability/test_soak.py",
        ],
        cwd=ROOT,
        env=env,
        timeout=seconds + 300,
    )


if __name__ == "__main__":
    sys.exit(main())
