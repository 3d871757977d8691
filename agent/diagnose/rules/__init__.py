"""The rule catalogue, one module per category. Each rule is one record (metadata, thresholds,
the pod predicate, the fleet PromQL and the alert) declared over its predicate with its
module's `rule` decorator; rules never read the network. The order here is the order rules are
evaluated and documented."""

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
