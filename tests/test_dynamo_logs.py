"""Log collector on real files: JSONL, CRI and Docker wrapping, rotation, truncation, the
per-cycle byte bound, error aggregation, and the request lookup endpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

from collectors.dynamo_logs import DynamoLogCollector
from tests.helpers import RECORDED, base_url, get_json, wait_for


def line(message: str, level: str = "INFO", **extra: str) -> str:
    return (
        json.dumps(
            {
                "time": "2026-11-25T00:31:23.560095Z",
                "level": level,
                "target": "dynamo_runtime::x",
                "message": message,
                **extra,
            }
        )
        + "\n"
    )


def counts(result) -> dict[tuple, float]:
    return {s.labels: s.value for s in result.samples if s.name == "dynamo_sidecar_log_lines_total"}


def scalar(result, name: str) -> float:
    return next(s.value for s in result.samples if s.name == "dynamo_sidecar_" + name)


async def test_recorded_dynamo_lines_and_request_index(tmp_path: Path) -> None:
    log = tmp_path / "frontend.log"
    log.write_text("")
    collector = DynamoLogCollector([str(log)], 1, 5)
    await collector.collect()  # first sight: starts at the end
    recorded = (RECORDED / "frontend_jsonl_log_lines_for_one_request.jsonl").read_text()
    with log.open("a") as handle:
        handle.write(recorded)
        handle.write("plain text, not json\n")
    result = await collector.collect()
    total = sum(counts(result).values())
    assert total == len([x for x in recorded.splitlines() if x.strip()])
    assert scalar(result, "log_lines_skipped_total") == 1
    lines = result.facts.requests.get("rec-0001")
    assert lines and all(item["x_request_id"] == "rec-0001" for item in lines)
    assert lines[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_rotation_truncation_and_cri_docker_formats(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_text("")
    collector = DynamoLogCollector([str(tmp_path / "*.log")], 1, 5)
    await collector.collect()
    with log.open("a") as handle:
        handle.write("2026-11-25T00:00:00.1Z stdout F " + line("cri full"))
        handle.write("2026-11-25T00:00:00.1Z stdout P " + line("cri split").rstrip("\n")[:20] + "\n")
        handle.write("2026-11-25T00:00:00.1Z stdout F " + line("cri split")[20:])
        handle.write(json.dumps({"log": line("docker wrapped"), "stream": "stdout", "time": "x"}) + "\n")
        handle.write(line("before rotation"))
    await collector.collect()
    os.rename(log, tmp_path / "0.log.20261125")  # rotated away: no longer matches *.log
    with (tmp_path / "0.log.20261125").open("a") as handle:
        handle.write(line("late line in the old file"))
    log.write_text("".join(line(f"new file line {i}") for i in range(10)))
    result = await collector.collect()
    # cri full, cri split (joined), docker, before rotation, late line, 10 new lines
    assert sum(counts(result).values()) == 15
    assert scalar(result, "log_rotations_total") == 1
    log.write_text(line("after truncation"))  # copytruncate: smaller file, same inode
    result = await collector.collect()
    assert sum(counts(result).values()) == 16
    assert scalar(result, "log_rotations_total") == 2
    assert scalar(result, "log_lines_skipped_total") == 0


async def test_same_path_rotation_reads_old_file_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "dynamo.log"
    log.write_text("")
    collector = DynamoLogCollector([str(log)], 1, 5)
    await collector.collect()
    with log.open("a") as handle:
        handle.write(line("one"))
    await collector.collect()
    with log.open("a") as handle:
        handle.write(line("two, written just before rotation"))
    os.rename(log, tmp_path / "dynamo.log.1")
    log.write_text(line("three, in the new file"))
    result = await collector.collect()
    assert sum(counts(result).values()) == 3
    assert scalar(result, "log_rotations_total") == 1


async def test_bounded_read_per_cycle(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("")
    collector = DynamoLogCollector([str(log)], 1, 5, max_bytes_per_cycle=64 * 1024)
    await collector.collect()
    with log.open("a") as handle:
        for i in range(5000):  # ~700 KB
            handle.write(line(f"line {i}"))
    first = sum(counts(await collector.collect()).values())
    assert 0 < first < 5000
    second = sum(counts(await collector.collect()).values())
    assert second > first  # the rest comes in later cycles


async def test_noisy_error_does_not_evict_others(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("")
    collector = DynamoLogCollector([str(log)], 1, 5)
    collector.errors.max_signatures = 5
    await collector.collect()
    with log.open("a") as handle:
        handle.write(line("disk on fire", level="ERROR"))
        for i in range(1000):
            handle.write(line(f"FileStore::keep_alive failed opening owned file /kv/{i}", level="ERROR"))
    result = await collector.collect()
    signatures = result.facts.errors.recent()
    messages = {s.message for s in signatures}
    assert "disk on fire" in messages
    noisy = next(s for s in signatures if "keep_alive" in s.message)
    assert noisy.count == 1000 and noisy.first_seen <= noisy.last_seen


async def test_request_lookup_endpoint(make_sidecar, http, tmp_path: Path) -> None:
    log = tmp_path / "frontend.log"
    log.write_text("")
    sidecar = await make_sidecar(log_files=str(log))
    await wait_for(lambda: sidecar.ready, what="ready")
    with log.open("a") as handle:
        handle.write((RECORDED / "frontend_jsonl_log_lines_for_one_request.jsonl").read_text())

    async def found():
        async with http.get(base_url(sidecar) + "/diagnose/request/rec-0001") as response:
            return await response.json() if response.status == 200 else None

    body = await wait_for(found, what="request lines")
    assert body["lines"][0]["message"] == "request received"
    async with http.get(base_url(sidecar) + "/diagnose/request/nope") as response:
        assert response.status == 404
    report = await get_json(http, base_url(sidecar) + "/status")
    assert "dynamo_logs" in report["collectors"]


def test_shutdown_lines_become_events(tmp_path) -> None:
    """Dynamo's own SIGTERM lines (recorded from 1.6.1) mark a deliberate shutdown, so a port
    that closes after them reads as a drain, not a crash."""
    from collectors.dynamo_logs import DynamoLogCollector

    log = tmp_path / "worker.log"
    collector = DynamoLogCollector([str(log)], 1, 1)
    log.write_text("")
    collector._collect_sync()
    lines = [
        '{"time":"2026-11-25T00:32:20.1Z","level":"INFO","target":"log","message":"Signal handlers set up for graceful shutdown"}',
        '{"time":"2026-11-25T00:32:25.7Z","level":"INFO","target":"log","message":"Received shutdown signal, shutting down DistributedRuntime instances"}',
        '{"time":"2026-11-25T00:32:25.8Z","level":"INFO","target":"dynamo_llm::http","message":"frontend service entering draining stage"}',
    ]
    log.write_text("\n".join(lines) + "\n")
    result = collector._collect_sync()
    shutdowns = [e for e in result.events if e.kind == "dynamo_shutdown"]
    assert [e.message[:24] for e in shutdowns] == ["Received shutdown signal", "frontend service enterin"]
    assert collector._collect_sync().events == []  # each is reported once
