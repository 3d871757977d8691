"""GPU collector through the real pynvml binding over a fake libnvidia-ml.so.1 built here in
C and found through LD_LIBRARY_PATH, so the same Python code runs as in production."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.fake_nvml.build import build_fake_nvml
from tests.helpers import PYTHON, ROOT, free_port, wait_for_sync
from tests.procs import http_get, spawn_sidecar

DRIVER = ROOT / "tests" / "gpu_driver.py"

GOOD = """count 2
gpu0.name NVIDIA H100 80GB HBM3
gpu0.uuid GPU-aaaa
gpu0.busid 00000000:07:00.0
gpu0.util_gpu 55
gpu0.util_mem 20
gpu0.mem_total 85899345920
gpu0.mem_used 42949672960
gpu0.temp 61
gpu0.temp_slowdown 89
gpu0.temp_shutdown 92
gpu0.power_mw 350000
gpu0.power_limit_mw 700000
gpu0.clock_sm 1980
gpu0.clock_mem 2619
gpu0.throttle 36
gpu0.ecc_corr_vol 3
gpu0.ecc_unc_agg 1
gpu0.retired_dbe 2
gpu0.remap_pending 1
gpu0.pcie_replay 7
gpu0.pcie_tx_kbs 100
gpu0.nvlinks 2
gpu0.nvlink_replay 5
gpu0.procs SELF_PID:1073741824,99999:2048
gpu1.uuid GPU-bbbb
gpu1.fan 40
"""


@pytest.fixture(scope="session")
def fake_nvml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: cannot build the fake libnvidia-ml.so.1")
    out = tmp_path_factory.mktemp("fake_nvml")
    build_fake_nvml(out)
    return out


def run_steps(fake_dir: Path | None, tmp_path: Path, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["FAKE_NVML_STATE"] = str(tmp_path / "state")
    env["FAKE_NVML_EVENTS"] = str(tmp_path / "events")
    (tmp_path / "events").write_text("")
    if fake_dir is not None:
        env["LD_LIBRARY_PATH"] = str(fake_dir)
    result = subprocess.run(
        [PYTHON, str(DRIVER), json.dumps(steps)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def value(out: dict[str, Any], name: str, /, **labels: Any) -> float | None:
    wanted = {k: str(v) for k, v in labels.items()}
    for sample_name, sample_labels, sample_value in out["samples"]:
        if sample_name == "dynamo_sidecar_" + name and wanted.items() <= sample_labels.items():
            return sample_value
    return None


def test_normal_operation(fake_nvml_dir: Path, tmp_path: Path) -> None:
    (out,) = run_steps(fake_nvml_dir, tmp_path, [{"state": GOOD}])
    gpu0 = {"gpu": 0, "uuid": "GPU-aaaa"}
    assert value(out, "gpu_available", reason="ok") == 1
    assert value(out, "gpu_info", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:07:00.0", **gpu0) == 1
    assert value(out, "gpu_utilization_ratio", kind="gpu", **gpu0) == 0.55
    assert value(out, "gpu_memory_bytes", state="used", **gpu0) == 42949672960
    assert value(out, "gpu_memory_bytes", state="free", **gpu0) == 85899345920 - 42949672960
    assert value(out, "gpu_temperature_celsius", **gpu0) == 61
    assert value(out, "gpu_temperature_threshold_celsius", threshold="slowdown", **gpu0) == 89
    assert value(out, "gpu_power_watts", **gpu0) == 350
    assert value(out, "gpu_power_limit_watts", **gpu0) == 700
    assert value(out, "gpu_clock_hertz", clock="sm", **gpu0) == 1980e6
    # 36 = 0x4 (sw_power_cap) | 0x20 (sw_thermal_slowdown)
    assert value(out, "gpu_clock_event_reason", reason="sw_power_cap", **gpu0) == 1
    assert value(out, "gpu_clock_event_reason", reason="sw_thermal_slowdown", **gpu0) == 1
    assert value(out, "gpu_clock_event_reason", reason="hw_slowdown", **gpu0) == 0
    assert value(out, "gpu_ecc_errors_total", type="corrected", counter="volatile", **gpu0) == 3
    assert value(out, "gpu_ecc_errors_total", type="uncorrected", counter="aggregate", **gpu0) == 1
    assert value(out, "gpu_retired_pages", cause="double_bit", **gpu0) == 2
    assert value(out, "gpu_remapped_rows", kind="pending", **gpu0) == 1
    assert value(out, "gpu_pcie_replays_total", **gpu0) == 7
    assert value(out, "gpu_pcie_throughput_bytes_per_second", direction="tx", **gpu0) == 100 * 1024
    assert value(out, "gpu_nvlink_errors_total", link=1, counter="replay", **gpu0) == 5
    assert value(out, "gpu_persistence_mode", **gpu0) == 1
    assert value(out, "gpu_process_memory_bytes", process="dynamo.mocker", **gpu0) == 1073741824
    assert value(out, "gpu_process_memory_bytes", process="other", **gpu0) == 2048
    # Not supported is absent, not an error: GPU 0 has no fan, GPU 1 has no NVLink.
    assert value(out, "gpu_fan_speed_ratio", **gpu0) is None
    assert value(out, "gpu_fan_speed_ratio", gpu=1) == 0.4
    assert value(out, "gpu_nvlink_errors_total", gpu=1) is None
    assert value(out, "gpu_nvml_errors_total") is None


def test_changed_readings_show_at_the_next_collection(fake_nvml_dir: Path, tmp_path: Path) -> None:
    """The collector reuses the samples of readings that did not change (and stops asking for
    NVLinks past the board's last): what changed shows at once, what did not stays."""
    changed = GOOD + "gpu0.util_gpu 56\ngpu0.ecc_corr_vol 4\ngpu0.nvlink_replay 6\ngpu0.procs SELF_PID:2048\n"
    first, second, third = run_steps(
        fake_nvml_dir, tmp_path, [{"state": GOOD}, {"state": changed}, {"state": GOOD}]
    )
    gpu0 = {"gpu": 0, "uuid": "GPU-aaaa"}
    assert value(second, "gpu_utilization_ratio", kind="gpu", **gpu0) == 0.56
    assert value(second, "gpu_ecc_errors_total", type="corrected", counter="volatile", **gpu0) == 4
    assert value(second, "gpu_nvlink_errors_total", link=1, counter="replay", **gpu0) == 6
    assert value(second, "gpu_process_memory_bytes", process="dynamo.mocker", **gpu0) == 2048
    assert value(second, "gpu_process_memory_bytes", process="other", **gpu0) == 0
    assert value(second, "gpu_temperature_celsius", **gpu0) == 61
    assert value(third, "gpu_nvlink_errors_total", link=1, counter="replay", **gpu0) == 5
    assert third["samples"] == first["samples"]


@pytest.mark.parametrize(
    ("state", "reason"),
    [("init 9\n", "driver_not_loaded"), ("count 0\n", "no_devices"), ("init 4\n", "no_permission")],
)
def test_unavailable_is_a_state_not_a_failure(
    fake_nvml_dir: Path, tmp_path: Path, state: str, reason: str
) -> None:
    first, second = run_steps(fake_nvml_dir, tmp_path, [{"state": state}, {}])
    for out in (first, second):
        assert "error" not in out
        assert value(out, "gpu_available", reason=reason) == 0
    assert first["facts"]["reason"] == reason


def test_no_library_on_this_machine(tmp_path: Path) -> None:
    (out,) = run_steps(None, tmp_path, [{}])
    assert value(out, "gpu_available", reason="library_not_found") == 0


def test_function_errors_are_counted(fake_nvml_dir: Path, tmp_path: Path) -> None:
    state = (
        GOOD
        + "gpu0.err.nvmlDeviceGetPowerUsage 999\nerr.nvmlDeviceGetTemperature 3\ngpu1.err.nvmlDeviceGetMemoryInfo 2\n"
    )
    _first, second = run_steps(fake_nvml_dir, tmp_path, [{"state": state}, {}])
    assert (
        value(second, "gpu_nvml_errors_total", gpu=0, function="nvmlDeviceGetPowerUsage", error="unknown")
        == 2
    )
    assert (
        value(
            second, "gpu_nvml_errors_total", gpu=1, function="nvmlDeviceGetMemoryInfo", error="nvml_error_2"
        )
        == 2
    )
    assert value(second, "gpu_temperature_celsius") is None  # NOT_SUPPORTED everywhere: absent
    assert value(second, "gpu_nvml_errors_total", function="nvmlDeviceGetTemperature") is None
    assert value(second, "gpu_utilization_ratio", gpu=0, kind="gpu") == 0.55  # the rest still works


def test_gpu_lost_mid_run_and_back(fake_nvml_dir: Path, tmp_path: Path) -> None:
    outs = run_steps(
        fake_nvml_dir, tmp_path, [{"state": GOOD}, {"state": GOOD + "gpu1.lost 1\n"}, {}, {"state": GOOD}]
    )
    assert value(outs[0], "gpu_lost", gpu=1) == 0
    assert value(outs[1], "gpu_lost", gpu=1) == 1
    assert [e["kind"] for e in outs[1]["events"]] == ["gpu_lost"]
    assert outs[2]["events"] == []  # reported once
    assert value(outs[1], "gpu_utilization_ratio", gpu=0, kind="gpu") == 0.55  # GPU 0 unaffected
    assert value(outs[3], "gpu_lost", gpu=1) == 0  # after a reset it answers again


def test_xid_bursts_become_counters_and_events(fake_nvml_dir: Path, tmp_path: Path) -> None:
    sent = [(i % 2, xid) for i, xid in enumerate([79, 48, 13, 13, 13, 94, 119] * 5)]
    burst = "".join(f"{gpu} {xid}\n" for gpu, xid in sent)
    outs = run_steps(fake_nvml_dir, tmp_path, [{"state": GOOD}, {"events": burst, "sleep": 1.5}])
    last = outs[-1]
    counted = {
        (int(labels["gpu"]), int(labels["xid"])): v
        for name, labels, v in last["samples"]
        if name == "dynamo_sidecar_gpu_xid_errors_total"
    }
    # One series per GPU and XID, each counting exactly the events sent for it (35 in all).
    assert counted == Counter(sent)
    assert counted[(0, 79)] == 3
    kinds = {e["attributes"]["class"] for e in last["events"]}
    assert {"bus", "memory", "application", "firmware"} <= kinds
    assert any("fallen off the bus" in e["message"] for e in last["events"])


def test_slow_nvml_does_not_stack_calls(fake_nvml_dir: Path, tmp_path: Path) -> None:
    outs = run_steps(
        fake_nvml_dir,
        tmp_path,
        [
            {"state": GOOD + "delay_ms 200\n", "timeout": 0.3},
            {"timeout": 0.3},
        ],
    )
    assert "TimeoutError" in outs[0]["error"]
    assert "still running" in outs[1]["error"]


def _get(url: str) -> tuple[int, str]:
    status, body = http_get(url)
    return status, body.decode()


@pytest.mark.slow
def test_sidecar_end_to_end_with_fake_gpus(fake_nvml_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "state").write_text(GOOD.replace("SELF_PID", "1"))
    (tmp_path / "events").write_text("")
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(fake_nvml_dir),
        "FAKE_NVML_STATE": str(tmp_path / "state"),
        "FAKE_NVML_EVENTS": str(tmp_path / "events"),
    }
    closed = f"http://127.0.0.1:{free_port()}"
    proc, base = spawn_sidecar(
        closed,
        closed,
        "--role",
        "frontend",
        # Collected at start and then not for an hour: the XID below is seen because the
        # NVML event thread wakes the collector, not because its interval came round.
        "--gpu-interval",
        "3600",
        "--drain-timeout",
        "1",
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_sync(
            lambda: 'dynamo_sidecar_gpu_available{reason="ok"} 1.0' in _get(base + "/metrics")[1],
            timeout=20,
            what="GPU metrics",
        )
        with open(tmp_path / "events", "a") as handle:
            handle.write("1 79\n")
        wait_for_sync(
            lambda: 'dynamo_sidecar_gpu_xid_errors_total{gpu="1",xid="79"} 1.0' in _get(base + "/metrics")[1],
            timeout=20,
            what="XID counter",
        )

        def finding() -> dict | None:
            status, body = _get(base + "/diagnose")
            report = json.loads(body) if status == 200 else {}
            return next((f for f in report.get("findings", []) if f["rule"] == "gpu_xid"), None)

        found = wait_for_sync(finding, timeout=20, what="gpu_xid finding")
        assert found["category"] == "gpu_fault" and found["severity"] == "critical"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    _ = sys
