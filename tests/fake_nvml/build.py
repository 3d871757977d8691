"""Builds the fake libnvidia-ml.so.1 (tests and bench/gpu.py load it via LD_LIBRARY_PATH)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "fake_nvml.c"


def build_fake_nvml(out_dir: Path) -> Path:
    """Compile the fake into out_dir/libnvidia-ml.so.1 (soname as the real one) and return it."""
    library = out_dir / "libnvidia-ml.so.1"
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libnvidia-ml.so.1",
            "-o",
            str(library),
            str(SOURCE),
            "-lpthread",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return library
