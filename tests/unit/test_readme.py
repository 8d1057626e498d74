"""The README's commands: the Chinese section shows the English section's examples, and every
`loraflow` command and option either section uses exists in the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main

from loraflow.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"
CHINESE = "## 中文说明"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SHELL = ("loraflow ", ".venv/bin/loraflow ", "bash scripts/", "curl ")


def sections() -> tuple[str, str]:
    text = README.read_text("utf-8")
    english, found, chinese = text.partition(CHINESE)
    assert found, f"README.md has no {CHINESE!r} section"
    return english, chinese


def shell_commands(markdown: str) -> list[str]:
    """The shell lines of the fenced blocks, continuations joined, comments and spacing cut."""
    found = []
    for block in FENCE.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line)
            line = " ".join(line.split())
            if line.startswith(SHELL):
                found.append(line)
    return found


def loraflow_usages(markdown: str) -> list[str]:
    """`loraflow ...` in fenced blocks and in inline code spans."""
    lines = [c for c in shell_commands(markdown) if "loraflow " in c.split(" ", 1)[0] + " "]
    prose = FENCE.sub("", markdown)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]
    return lines + [s for s in spans if s.startswith("loraflow ") or s == "loraflow"]


def _subcommands(cmd: Any) -> dict[str, Any]:
    return getattr(cmd, "commands", None) or {}


def _options(cmd: Any) -> set[str]:
    names = {"--help"}
    for param in cmd.params:
        names.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return names


def _alternatives(tokens: list[str]) -> list[list[str]]:
    """`list | show ID | cancel ID`: split at the `|` tokens outside [optional] parts."""
    parts: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        if token == "|" and depth == 0:
            parts.append([])
            continue
        depth += token.count("[") - token.count("]")
        parts[-1].append(token)
    return parts


def problems(usage: str, root: Any) -> list[str]:
    """What in one usage line the CLI does not have: a command, a subcommand or an option."""
    words = shlex.split(usage.split("loraflow", 1)[1])
    found: list[str] = []
    parent, cmd = root, root
    for i, part in enumerate(_alternatives(words)):
        rest = list(part)
        if i > 0:
            # `adapters rollback prod | promote prod` is a sibling; `backup | restore F` a command.
            head = rest[0] if rest else ""
            cmd = parent if head in _subcommands(parent) else root
            parent = cmd
        while rest and rest[0] in _subcommands(cmd):
            parent, cmd = cmd, _subcommands(cmd)[rest.pop(0)]
        if _subcommands(cmd) and rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
            found.append(f"{usage!r}: no command {rest[0]!r} (known: {sorted(_subcommands(cmd))})")
        for token in rest:
            option = token.strip("[]().,").split("=", 1)[0]
            if option.startswith("--") and option not in _options(cmd):
                found.append(f"{usage!r}: {cmd.name!r} has no option {option}")
    return found


@pytest.fixture(scope="module")
def root() -> Any:
    return typer.main.get_command(app)


def test_the_chinese_section_shows_the_english_commands() -> None:
    english, chinese = sections()
    shown = shell_commands(chinese)
    # Install, start, train, serve and deploy: the section's parts are there as commands.
    for start in (
        "bash scripts/run.sh",
        "loraflow serve",
        "loraflow train",
        "loraflow inference",
        "loraflow status",
        "loraflow adapters deploy",
        "loraflow backup",
        "curl",
    ):
        assert any(c.startswith(start) for c in shown), f"no {start!r} in the Chinese section"
    assert any("--launcher" in c and "--num-processes" in c for c in shown)
    missing = sorted(set(shown) - set(shell_commands(english)))
    assert not missing, f"commands of the Chinese section not in the English one: {missing}"


@pytest.mark.parametrize("part", ["english", "chinese"])
def test_every_loraflow_command_and_option_exists(part: str, root: Any) -> None:
    text = dict(zip(("english", "chinese"), sections(), strict=True))[part]
    usages = loraflow_usages(text)
    assert len(usages) > 10
    found = [p for usage in usages for p in problems(usage, root)]
    assert not found, "\n".join(found)


def test_the_check_catches_a_wrong_command_and_option(root: Any) -> None:
    assert problems("loraflow adapters list | scan | register PATH [--name N]", root) == []
    assert problems("loraflow backup [--to FILE] | restore FILE [--force]", root) == []
    assert problems("loraflow adapters lst", root)
    assert problems("loraflow train --data a.json --epoch 3", root)
    assert problems("loraflow tasks list | show ID | resume ID --force", root)
