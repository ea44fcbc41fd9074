"""Shared test helpers: the CLI runner, small files, and skipping of `cuda`-marked tests on
machines without a GPU (or with a core built without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigxctl import core
from aigxctl.cli import app


def cuda_usable() -> bool:
    """True when torch sees a GPU and the compiled core has CUDA kernels to run on it."""
    import torch

    return bool(torch.cuda.is_available() and core.build_info()["cuda_built"])


def devices() -> list:
    """The devices a test written once runs on: the CPU, and a GPU as a ``cuda``-marked case
    (skipped where no GPU and CUDA core are; ``scripts/gpu-check`` runs them with -m cuda).
    Use as ``@pytest.mark.parametrize("device", devices())``."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("cuda") for item in items) and not cuda_usable():
        skip = pytest.mark.skip(reason="needs a CUDA GPU and a core built with CUDA")
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(skip)


@pytest.fixture
def run():
    """Invoke the CLI: run("allocate", "--gains", ...) -> Result (stdout and stderr apart)."""
    runner = CliRunner()

    def invoke(*args: object, input: str | None = None):
        return runner.invoke(app, [str(a) for a in args], input=input)

    return invoke


@pytest.fixture
def write(tmp_path: Path):
    """write("name.csv", text) -> path of a new file in a temporary folder."""

    def make(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return make


@pytest.fixture
def torch_one_thread():
    """Tiny models run fastest on one thread, and much faster than on two when the machine is
    shared (two OpenMP threads then wait on each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """600 expert-labelled T1 samples (seed 0), shared by the training tests."""
    from aigxctl import data, scenarios

    path = tmp_path_factory.mktemp("data") / "t1.npz"
    data.collect_to_file(scenarios.get("t1"), 600, 0, path)
    return path


@pytest.fixture(autouse=True)
def _private_tmpdir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Temporary files the code under test makes (rescued weights, libraries' scratch) land
    in pytest's own temporary tree, for this process and the CLI subprocesses it starts."""
    import tempfile

    scratch = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))


@pytest.fixture
def restore_isa():
    """Puts back the ISA level the core ran at before the test (tests that set levels)."""
    before = core.isa()
    yield
    core.set_isa(before)
