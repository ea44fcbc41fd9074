"""Shared test helpers: the CLI runner and small files."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigxctl.cli import app


@pytest.fixture
def run():
    """Invoke the CLI: run("allocate", "--gains", ...) -> click Result (stdout, stderr split)."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, [str(a) for a in args], input=input)

    return invoke


@pytest.fixture
def write(tmp_path: Path):
    """write("name.csv", text) -> path of a new file in a temporary folder."""

    def make(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return make
