"""README is true as typed: its first two commands are the two set-ups (and CI runs the second
verbatim), every command in its `sh` blocks names a program that exists, and every
`dynamo-sidecar` command line parses with the real CLI (subcommand and flags), so README
cannot drift from the code. No inline code is broken across lines."""

from __future__ import annotations

import itertools
import re
import shlex
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.tools.demo import verify_command
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()
SETUP = [
    "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/dynamo-sidecar demo",
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q",
]
# Programs from elsewhere that README's commands use: adding one here is a conscious choice.
OTHER_PROGRAMS = {"python3", "curl", "grep", "head", "podman", "helm", "kubectl"}
ACTIVATE = ". .venv/bin/activate"
# What a reader types for each <placeholder>.
PLACEHOLDERS = {
    "<control>": "http://127.0.0.1:38001",
    "<registry>": "registry.example.com",
    "<dynamo-namespace>": "dynamo",
    "<worker pid>": "4242",
    "<restart it>": "true",
}


def sh_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """Each simple command of a block: continuation lines joined, comments dropped, split at
    `&&`, `||`, `|`, `;` and before a redirection."""
    out: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        for placeholder, value in PLACEHOLDERS.items():
            line = line.replace(placeholder, value)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in {"&&", "||", "|", ";", ">", ">>"}:
                if words:
                    out.append(words)
                words = [] if token not in {">", ">>"} else ["<redirected>"]
            elif words != ["<redirected>"]:
                words.append(token)
            else:
                words = []  # the redirection's target
    return [c for c in out if c != ["<redirected>"]]


def test_the_first_two_commands_are_the_set_ups_and_ci_runs_the_second() -> None:
    blocks = sh_blocks()
    assert [b.strip() for b in blocks[:2]] == SETUP
    ci = (ROOT / ".ci" / "run").read_text()
    assert SETUP[1] in ci.splitlines()


def test_every_program_exists() -> None:
    activated_at = README.find(ACTIVATE)
    for block in sh_blocks():
        where = README.find(block)
        for words in commands(block):
            program = words[0]
            if program.startswith(".venv/bin/"):
                # The venv README's own commands make; the one running these tests in CI.
                assert (Path(sys.prefix) / "bin" / program.removeprefix(".venv/bin/")).exists(), program
            elif program == "dynamo-sidecar":
                assert 0 <= activated_at < where, f"bare dynamo-sidecar before README says `{ACTIVATE}`"
            else:
                assert program in OTHER_PROGRAMS, f"{program}: not a program README's reader has"


def cli_lines() -> list[list[str]]:
    return [
        words[1:]
        for block in sh_blocks()
        for words in commands(block)
        if words[0] in {"dynamo-sidecar", ".venv/bin/dynamo-sidecar"}
    ]


@pytest.mark.parametrize("argv", cli_lines(), ids=lambda argv: " ".join(argv)[:60])
def test_every_dynamo_sidecar_command_parses(argv: list[str]) -> None:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # the CLI's own one-line usage error is on stderr
        pytest.fail(f"README's `dynamo-sidecar {' '.join(argv)}` does not parse (exit {exc.code})")
    assert args.command == argv[0]


def test_readme_shows_every_kind_of_command_it_claims() -> None:
    shown = {argv[0] for argv in cli_lines()}
    assert {"demo", "run", "check-config", "diagnose", "alerts", "verify", "audit", "inject"} <= shown


def test_the_demos_verify_command_parses() -> None:
    """README sends the reader to the `verify` command the demo prints."""
    line = verify_command("http://127.0.0.1:38000", "http://127.0.0.1:9469", "http://127.0.0.1:38001")
    words = shlex.split(line)
    argv = words[words.index("verify") :]
    args = build_parser().parse_args(argv)
    assert args.fault_cmd == "curl -s -X POST http://127.0.0.1:38001/worker/kill"
    assert "verify" in README and "prints a `verify` command" in README


def test_no_inline_code_is_broken_across_lines() -> None:
    prose = re.sub(r"^```.*?^```", "", README, flags=re.MULTILINE | re.DOTALL)
    broken = [span for span in re.findall(r"`[^`]+`", prose) if "\n" in span]
    assert broken == []


def test_the_helm_install_renders_with_readmes_values() -> None:
    """README's `helm install` passes what the chart's schema requires."""
    helm = pytest.importorskip(
        "helm_python", reason="helm-python-sdk is not installed (it is in the [test] extra)"
    )
    (install,) = [
        words for block in sh_blocks() for words in commands(block) if words[:2] == ["helm", "install"]
    ]
    chart_dir = ROOT / install[3]
    values: dict[str, object] = {}
    for flag, value in itertools.pairwise(install):
        if flag == "--set":
            key, _, text = value.partition("=")
            *parents, leaf = key.split(".")
            node = values
            for parent in parents:
                node = node.setdefault(parent, {})  # type: ignore[assignment]
            node[leaf] = text
    chart = helm.Chart.load(str(chart_dir))
    try:
        rendered = chart.render(values, name=install[2], namespace="dynamo-system")
    finally:
        chart.close()
    assert "registry.example.com/dynamo-sidecar:0.1.0" in rendered["dynamo-sidecar/templates/deployment.yaml"]
