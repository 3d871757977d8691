"""How the cost of one collection cycle's exposition work grows with the size of Dynamo's
exposition: split and check (agent/core/exposition.py), parse of the families rules read,
and the render of /metrics, at 1k, 10k and 50k series, first time (every family new) and
steady (nothing changed, and one family changed).

    python bench/scaling.py
    python bench/scaling.py --smoke
Target (issue 14): linear or better, the 50k case under the 4 s collector timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.samples import CollectResult
from agent.core.signals import DynamoNames
from agent.core.state import State
from agent.runtime.sidecar import wanted_families
from collectors.dynamo_health import Target
from collectors.dynamo_metrics import Budget, DynamoMetricsCollector
from exporters.prometheus import PrometheusExporter

RECORDED = Path(__file__).resolve().parent.parent / "agent" / "dynamo_sim" / "recorded"


def exposition(series: int, bump: int = 0) -> str:
    """Dynamo's recorded frontend exposition, plus worker-like families up to `series`."""
    base = (RECORDED / "frontend_metrics_after_traffic.prom").read_text()
    lines = [base]
    have = sum(1 for line in base.splitlines() if line and not line.startswith("#"))
    family = 0
    while have < series:
        lines.append(
            f"# HELP dynamo_component_bench_{family} bench family\n# TYPE dynamo_component_bench_{family} gauge\n"
        )
        for i in range(min(100, series - have)):
            value = i + (bump if family == 0 else 0)
            lines.append(
                f'dynamo_component_bench_{family}{{worker_id="{i:x}",dynamo_endpoint="generate"}} {value}\n'
            )
            have += 1
        family += 1
    return "".join(lines)


def one_cycle(
    collector: DynamoMetricsCollector, text: str, exporter: PrometheusExporter, state: State
) -> dict[str, float]:
    started = time.process_time()
    raw, families, _ = collector._split("frontend", text, Budget(30, 10_000_000))
    work = time.process_time() - started
    result = CollectResult(families=families)
    result.raw.append(raw)
    started = time.process_time()
    state.update("dynamo_metrics", result)
    exporter.render()
    render = time.process_time() - started
    return {"split_and_parse_ms": work * 1000, "state_and_render_ms": render * 1000}


def measure(series: int) -> dict[str, object]:
    names = DynamoNames()
    wanted = wanted_families(names)
    history = names.history_names()
    state = State(max_series=200_000, max_metric_names=10_000, max_series_per_metric=10_000,
                  history_filter=lambda n: n in history)  # fmt: skip
    exporter = PrometheusExporter(state)
    target = Target("frontend", "frontend", "http://127.0.0.1:0", "/health", "/live")
    collector = DynamoMetricsCollector([target], "/metrics", 5, 4, 2, 1 << 30, wanted=wanted)
    first = one_cycle(collector, exposition(series), exporter, state)
    unchanged = one_cycle(collector, exposition(series), exporter, state)
    changed = one_cycle(collector, exposition(series, bump=1), exporter, state)
    body, _ = exporter.body("text", False)
    return {
        "series": series,
        "body_kb": round(len(body) / 1024),
        "first": {k: round(v, 1) for k, v in first.items()},
        "unchanged": {k: round(v, 1) for k, v in unchanged.items()},
        "one_family_changed": {k: round(v, 1) for k, v in changed.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    for series in (1_000, 5_000) if args.smoke else (1_000, 10_000, 50_000):
        print(json.dumps(measure(series)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
