"""The rule catalogue, one module per category. Each module declares its rules with its
own `rule` decorator; the order here is the order rules are evaluated and documented."""

from __future__ import annotations

from agent.diagnose.model import Rule
from agent.diagnose.rules import connections, gpu, performance, resources, shutdown, sidecar, startup

RULES: tuple[Rule, ...] = (
    *startup.RULES,
    *connections.RULES,
    *shutdown.RULES,
    *performance.RULES,
    *sidecar.RULES,
    *resources.RULES,
    *gpu.RULES,
)
