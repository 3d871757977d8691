"""The repository's own checks: ruff clean, README tables generated from the code."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from agent.config import reference_markdown
from agent.core.catalogue import markdown_table
from agent.tools.docs import rules_reference
from tests.helpers import ROOT


def _ruff() -> list[str]:
    found = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    if found:
        return [found]
    return [sys.executable, "-m", "ruff"]


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [*_ruff(), "check", "--quiet", str(ROOT)], capture_output=True, text=True, timeout=120
    )
    if "No module named ruff" in result.stderr:
        pytest.skip("ruff is not installed (it is in the [test] extra)")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_is_clean() -> None:
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed (it is in the [test] extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _section(readme: str, start: str) -> str:
    begin = readme.index(f"<!-- {start} -->")
    end = readme.index(f"<!-- /{start} -->")
    return readme[begin:end]


def test_reference_tables_are_generated_from_the_code() -> None:
    metrics = (ROOT / "docs" / "metrics.md").read_text()
    assert markdown_table() in _section(metrics, "metrics-table"), "run: python -m agent.tools.docs"
    config = (ROOT / "docs" / "configuration.md").read_text()
    assert reference_markdown() in _section(config, "config-table"), "run: python -m agent.tools.docs"


def test_readme_is_short_and_its_links_resolve() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)\)", readme):
        assert (ROOT / target).exists(), target
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([a-z_]+\.md)\)", page.read_text()):
            assert (ROOT / "docs" / target).exists(), f"{page.name} -> {target}"


def test_readme_starts_with_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```")
    first_commands = [b.strip().removeprefix("sh").strip() for b in blocks[1:4:2]]
    assert "dynamo-sidecar demo" in first_commands[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_commands[1] in ci, "the README's test command must be what .ci/run runs"


def test_rules_reference_is_generated_from_the_records() -> None:
    assert (ROOT / "docs" / "rules.md").read_text() == rules_reference(), "run: python -m agent.tools.docs"


def test_metric_handles_are_generated_from_the_catalogue() -> None:
    from agent.core.handles import MODULE, generate_module

    assert MODULE.read_text() == generate_module(), "run: python -m agent.tools.docs"


def test_alerts_yaml_is_generated_from_the_records() -> None:
    from agent.diagnose.alerts import ALERT_FILES, alerts_yaml

    for relative in ALERT_FILES:
        assert (ROOT / relative).read_text() == alerts_yaml(), "run: python -m agent.diagnose.alerts --write"


def test_the_charts_dashboard_is_the_dashboard() -> None:
    chart_copy = ROOT / "packaging" / "helm" / "dynamo-sidecar" / "files" / "dynamo-sidecar.json"
    assert chart_copy.read_bytes() == (ROOT / "packaging" / "grafana" / "dynamo-sidecar.json").read_bytes(), (
        "copy packaging/grafana/dynamo-sidecar.json into the chart's files/"
    )
