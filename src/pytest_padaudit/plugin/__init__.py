"""The pytest face of padaudit: the ``pytest11`` entry point.

pytest registers this module; it holds the hooks and the ``padaudit`` fixture. It imports
no framework and no NumPy: a session that runs no audit pays nothing.
"""

from __future__ import annotations

from .items import padaudit as padaudit
from .items import (
    pytest_addhooks,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_setup,
)
from .settings import pytest_addoption

__all__ = [
    "padaudit",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_runtest_call",
    "pytest_runtest_setup",
]
