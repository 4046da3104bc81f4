"""Every `proofline` and `make` command line in the README and docs/ is still true: each
command exists, answers `--help`, and takes every option the docs give it."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from chalicelib.identity import access
from proofline.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_ENV = re.compile(r"^(?:[A-Z_]+=\S*\s+)+")


def command_lines() -> list[tuple[str, str]]:
    """(where, command) for each command line in a code block or an inline code span."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
        candidates = [line for block in blocks
                      for line in block.replace("\\\n", " ").splitlines()]
        candidates += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for line in candidates:
            line = _ENV.sub("", line.strip()).removeprefix(".venv/bin/")
            if line.startswith(("proofline ", "make ")) and line.split()[0] in ("proofline", "make"):
                found.append((f"{doc.relative_to(ROOT)}: {line}", line))
    return found


LINES = command_lines()


def _tokens(line: str) -> list[str]:
    line = re.sub(r"\s+#\s.*$", "", line)
    return shlex.split(line.replace("[", " ").replace("]", " "))


def _options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def test_the_docs_show_commands():
    assert sum(line.startswith("proofline") for _, line in LINES) >= 30
    assert {"make demo", "make test"} <= {line.split("  ")[0].strip() for _, line in LINES}


@pytest.mark.parametrize("where,line", [l for l in LINES if l[1].startswith("proofline")],
                         ids=[w for w, l in LINES if l.startswith("proofline")])
def test_each_proofline_command_exists_with_its_options(where, line):
    tokens = _tokens(line)[1:]
    paths: list[list[str]] = [[]]
    command: click.Command = main
    for token in tokens:
        if isinstance(command, click.Group) and not token.startswith("-"):
            names = token.split("|")
            if all(name in command.commands for name in names):
                for name in names[1:]:                      # `list|show`: every one is real
                    assert CliRunner().invoke(main, [*paths[0], name, "--help"]).exit_code == 0
                paths = [[*p, names[0]] for p in paths]
                command = command.commands[names[0]]
                continue
        if token.startswith("--"):
            for option in token.split("|"):
                name = option.split("=", 1)[0]
                assert name in _options(command) | _options(main), f"{where}: no option {name}"
    assert paths[0], f"{where}: names no command"
    result = CliRunner().invoke(main, [*paths[0], "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("where,line", [l for l in LINES if l[1].startswith("make")],
                         ids=[w for w, l in LINES if l.startswith("make")])
def test_each_make_target_exists(where, line):
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    target = _tokens(line)[1]
    assert target in targets, f"{where}: no make target {target}"


def test_the_readme_states_every_routes_owner_rule_as_the_code_does():
    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| `(GET|POST|DELETE) (\S+)` \| (\w+) \| (.+) \|$", readme,
                          re.MULTILINE))
    assert rows == {(m, p, r.proof.value, r.who) for (m, p), r in access.ROUTES.items()} | {
        (m, f"{p}?{q}=1", r.proof.value, r.who) for (m, p, q), r in access.QUERY_RULES.items()}
