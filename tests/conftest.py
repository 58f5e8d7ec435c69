"""Shared test set-up."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, distribution

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_configure() -> None:
    """Run one audit per installed framework before any test.

    pytester's in-process runs drop every module they imported when they end; torch
    imports ~300 modules lazily (torch._dynamo on a user's first optimizer step, which the
    audit's own steps skip), and refuses to register its operator libraries twice.
    Importing them once here keeps them across pytester runs.
    """
    if _installed("torch"):
        import torch

        from pytest_padaudit import audit

        audit(torch.nn.Embedding(4, 2, padding_idx=0), seq_len=2, batch_size=2)
        table = torch.nn.Parameter(torch.zeros(2))
        table.grad = torch.ones(2)
        torch.optim.SGD([table], lr=0.1).step()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Run the suite on every core: pytest-xdist's ``-n auto --dist loadfile`` unless ``-n``.

    Set here rather than in ``addopts`` so that ``pytest examples`` (no pytest-xdist in the
    quickstart's install) and the inner pytest runs are left alone: this conftest is loaded
    only when ``tests/`` is what runs. ``-p no:xdist`` or ``-n 0`` runs in one process.
    Runs before xdist's own ``pytest_cmdline_main`` (registered later, so called first).
    ``loadfile``: one worker runs a whole file, so the module-scoped fixtures (the Keras
    backend runs, each starting a pytest per backend) and the zoo's per-model rows are
    computed once, not once per worker. (``loadgroup`` would not group: pytest-xdist 3.8
    tags the grouped tests through ``item._nodeid``, which pytest 9 no longer reads.)
    """
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a pytest started by a worker's test
        return
    if config.option.numprocesses is None and config.option.dist == "no":
        config.option.numprocesses = "auto"
        config.option.dist = "loadfile"


def _installed(name: str) -> bool:
    """Say whether the distribution ``name`` is installed (without importing it)."""
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


@pytest.fixture(params=[False, True], ids=["local", "on-CI"])
def ci(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the test as on a developer's machine and as on CI, where pytest prints more."""
    for name in ("CI", "BUILD_NUMBER"):  # what pytest's running_on_ci() reads
        monkeypatch.delenv(name, raising=False)
    if request.param:
        monkeypatch.setenv("CI", "true")
    return bool(request.param)
