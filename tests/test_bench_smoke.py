"""Every bench script runs in smoke mode in CI, so benchmarks cannot rot."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

BENCH = sorted((ROOT / "bench").glob("*.py"))
NEEDS = {
    "quantile_agreement.py": "prometheus",
    "gpu.py": "gcc",
    "scrape.py": "wrk",
    "exporter_stack.py": "prometheus-blackbox-exporter",  # and the process exporter (.ci/run)
}


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCH, ids=[p.name for p in BENCH])
def test_bench_smoke(script) -> None:
    tool = NEEDS.get(script.name)
    if tool and shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    result = subprocess.run(
        [sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
