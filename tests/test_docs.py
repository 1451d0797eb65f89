"""The docs tell the truth: README's commands are CI's, every option and setting is documented."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from pydantic import AliasChoices

from rag.cli import cli
from rag.settings import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    command = [line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert len(command) == 1
    assert f"\n{command[0]}\n" in README
    # On a fresh machine the same command must bring what the browser tests drive.
    assert command[0].startswith("bash tests/install-chromium.sh && ")


def test_readme_shows_the_screenshot() -> None:
    assert "](docs/screenshot.png)" in README
    assert (REPO / "docs" / "screenshot.png").read_bytes().startswith(b"\x89PNG")


def test_readme_main_command_installs_and_starts_the_chat() -> None:
    assert re.search(r"pip install torch==2\.13\.0 && .*pip install -e \. && .*rag chat", README)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_and_option_is_documented(name: str) -> None:
    assert f"rag {name}" in README
    for param in cli.commands[name].params:
        for opt in param.opts:
            if opt.startswith("-"):
                assert opt in README, f"{opt} of rag {name} is not in README.md"


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_help_works(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_env_example_lists_every_setting() -> None:
    example = (REPO / ".env.example").read_text()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = alias.choices[0] if isinstance(alias, AliasChoices) else f"RAG_{name.upper()}"
        assert f"\n# {env}=" in example, env
