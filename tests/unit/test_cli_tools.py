"""The tools on the command line: `exchange bench` and `exchange demo` are listed and
documented, loaded only when used, and explain a missing `[tools]` extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from exchange.cli import main
from exchange.cli_support import LazyCommand, LazyGroup


def test_the_command_list_names_the_tools_without_loading_them() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from exchange.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "print(result.output)\n"
        "print('loaded:', sorted(m for m in sys.modules if m.startswith('exchange.tools')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "bench " in result.stdout
    assert "demo " in result.stdout
    assert "loaded: []" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bench", "--help"], "--seconds"),
        (["bench", "settlement", "--help"], "--postings"),
        (["demo", "--help"], "--members"),
    ],
)
def test_the_tools_show_their_help(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert expected in result.output


def test_a_tool_whose_extra_is_missing_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_extra_tool.py").write_text(
        "import not_an_installed_package_xyz\n"
        "import click\n"
        "@click.command()\n"
        "def tool() -> None: ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    @click.group(
        cls=LazyGroup, lazy={"tool": LazyCommand("needs_extra_tool:tool", "A tool.", "tools")}
    )
    def cli() -> None:
        pass

    result = CliRunner().invoke(cli, ["tool", "--anything"])
    assert result.exit_code == 1
    assert "needs the optional 'tools' dependencies" in result.output
    assert "not_an_installed_package_xyz" in result.output
    assert "pip install 'coalition-exchange[tools]'" in result.output
