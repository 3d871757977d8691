"""The repository's own checks: ruff clean, README tables generated from the code."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from agent.catalogue import markdown_table
from agent.config import reference_markdown
from agent.docs import rules_reference, rules_table
from tests.conftest import ROOT


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


def _section(readme: str, start: str) -> str:
    begin = readme.index(f"<!-- {start} -->")
    end = readme.index(f"<!-- /{start} -->")
    return readme[begin:end]


def test_readme_tables_are_generated_from_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in _section(readme, "metrics-table"), (
        "run: python -m agent.docs > README tables (see README)"
    )
    assert reference_markdown() in _section(readme, "config-table")
    assert rules_table() in _section(readme, "rules-table")


def test_readme_starts_with_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```")
    first_commands = [b.strip().removeprefix("sh").strip() for b in blocks[1:4:2]]
    assert "dynamo-sidecar demo" in first_commands[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert first_commands[1] in ci, "the README's test command must be what .ci/run runs"


def test_rules_reference_is_generated_from_the_records() -> None:
    assert (ROOT / "docs" / "rules.md").read_text() == rules_reference(), "run: python -m agent.docs"


def test_alerts_yaml_is_generated_from_the_records() -> None:
    from agent.diagnose.alerts import alerts_yaml

    assert (ROOT / "packaging" / "prometheus" / "alerts.yaml").read_text() == alerts_yaml(), (
        "run: python -m agent.diagnose.alerts > packaging/prometheus/alerts.yaml"
    )
