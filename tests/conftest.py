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
