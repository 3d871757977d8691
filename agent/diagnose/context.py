"""What a rule may look at: the state (latest samples, history, events, collector status),
the config and the derived signals. Nothing here touches the network."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agent.config import Config
from agent.signals import DynamoNames, Signals
from agent.state import State


@dataclass
class Context:
    state: State
    config: Config
    signals: Signals
    now: float = field(default_factory=time.time)
    window: float = 900.0  # ?since= narrows what "recent" means
    names: DynamoNames = field(default_factory=DynamoNames)

    @property
    def uptime(self) -> float:
        return self.now - self.state.started

    @property
    def in_startup_grace(self) -> bool:
        return self.uptime < self.config.startup_grace

    def health_endpoints(self) -> dict[str, dict[str, Any]]:
        return self.state.facts("dynamo_health").get("endpoints", {})

    def scrape_endpoints(self) -> dict[str, dict[str, Any]]:
        return self.state.facts("dynamo_metrics").get("endpoints", {})

    def probe(self, endpoint: str, probe: str = "health") -> dict[str, Any]:
        return self.health_endpoints().get(endpoint, {}).get("probes", {}).get(probe, {})

    def events(self, kind: str | None = None) -> list[Any]:
        return self.state.recent_events(since=self.now - self.window, kind=kind)

    def extra(self, key: str) -> Any:
        return self.state.extra.get(key)
