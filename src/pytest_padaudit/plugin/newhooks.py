"""padaudit's pytest-facing hook, declared in ``pytest_addhooks`` as pytest-xdist does.

A ``conftest.py`` or a pytest plugin implements it natively, like any pytest hook. pytest
takes unmarked hook functions only with the ``pytest_`` prefix, so the pytest hook is
``pytest_padaudit_report_json`` (as xdist's are ``pytest_xdist_*``); ``padaudit_report_json``
in a conftest keeps working through padaudit's own hooks (``hookspecs.py``). The marker is
pluggy's own for the ``pytest`` project (what ``pytest.hookspec`` is), so this module
imports nothing of pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import pytest

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_padaudit_report_json(config: pytest.Config, data: dict[str, Any]) -> None:
    """Adjust the ``--padaudit-report=json`` data in place before it is written.

    :param config: the pytest config of the session (the controller under pytest-xdist).
    :param data: ``{"version", "generator", "summary", "audits"}``; each audit is
        ``AuditReport.to_dict()`` as JSON primitives. Add keys (CI metadata), drop what you
        do not want kept (``audit["batch"]["ids"]``); values must stay JSON primitives.

    Called on the process that writes the report only, once per JSON file, before
    padaudit's own ``padaudit_report_json``.
    """
