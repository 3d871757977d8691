"""The state's memory budget, derived from the sidecar container's own memory limit.

The limit is the sidecar's cgroup (`memory.max` on v2, `memory.limit_in_bytes` on v1), read
once at start; the injector sets it (160Mi by default). A quarter of it goes to the series
and their history (agent/core/state.py charges each kept series its ring at full size), which
leaves the rest for the interpreter, the libraries, the HTTP server and transient work
(a render, a /history answer), so the finding `memory_budget` fires, and admission stops,
well before the container is OOM-killed.
"""

from __future__ import annotations

import os

BUDGET_SHARE = 4  # the budget is the limit divided by this
NO_LIMIT_BUDGET = 128 * 2**20
UNLIMITED = 2**60  # v1 reports "unlimited" as a page-rounded 2^63-1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(64 * 1024)
    except OSError:
        return None


def own_memory_limit(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of the cgroup this process is in; None when there is none (or it
    cannot be read)."""
    text = _read(os.path.join(proc_root, "self", "cgroup")) or ""
    candidates = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        path = path.strip().lstrip("/")
        if hierarchy == "0" and not controllers:  # v2
            candidates.append(os.path.join(cgroup_root, path, "memory.max"))
            candidates.append(os.path.join(cgroup_root, "memory.max"))  # a cgroup namespace
        elif "memory" in controllers.split(","):  # v1
            candidates.append(os.path.join(cgroup_root, "memory", path, "memory.limit_in_bytes"))
            candidates.append(os.path.join(cgroup_root, "memory", "memory.limit_in_bytes"))
    for candidate in candidates:
        raw = _read(candidate)
        if raw is None:
            continue
        try:
            limit = int(raw.strip())
        except ValueError:
            return None  # "max": no limit
        return limit if 0 < limit < UNLIMITED else None
    return None


def budget(configured: int | None, limit: int | None) -> int:
    """The budget in bytes: as configured, or a quarter of the limit, or 128 MiB."""
    if configured is not None:
        return configured
    return limit // BUDGET_SHARE if limit else NO_LIMIT_BUDGET
