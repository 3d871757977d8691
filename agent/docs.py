"""Regenerates README's generated sections from the code: `python -m agent.docs`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from agent.catalogue import markdown_table
from agent.config import reference_markdown


def rules_table() -> str:
    from agent.diagnose.engine import RULES

    rows = ["| rule | category | severity | says | first action |", "| --- | --- | --- | --- | --- |"]
    for rule in RULES:
        summary = rule.summary.replace("{subject}", "<subject>").replace("|", "\\|")
        summary = re.sub(r"\{(\w+)(:[^}]*)?\}", r"<\1>", summary)
        action = rule.actions[0].replace("|", "\\|") if rule.actions else ""
        rows.append(f"| `{rule.id}` | {rule.category} | {rule.severity} | {summary} | {action} |")
    return "\n".join(rows)


SECTIONS = {"metrics-table": markdown_table, "config-table": reference_markdown, "rules-table": rules_table}


def update(readme: Path) -> bool:
    text = readme.read_text()
    original = text
    for name, render in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
        text = pattern.sub(lambda m, r=render: m.group(1) + r() + "\n" + m.group(2), text)
    readme.write_text(text)
    return text != original


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print("updated" if update(path) else "up to date")
