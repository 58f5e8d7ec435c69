"""The marker, the fixture and the run-time hooks that audit a test's models."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from ..core.errors import PadAuditError, PadLeakError
from . import zerocode
from .reporting import REPORTS
from .settings import DEFAULTS, SEED, session_settings

if TYPE_CHECKING:
    from ..core.handle import ModelHandle
    from ..core.options import AuditOptions
    from ..core.result import AuditReport

MARKER = "padaudit"


#: the options of an item (defaults and marker merged, validated), resolved once at setup.
ITEM_OPTIONS = pytest.StashKey["AuditOptions"]()
#: the marker's ``model=`` (fixture names), read with the item's options.
ITEM_MODELS = pytest.StashKey["str | list[str] | tuple[str, ...] | None"]()
#: the marker's ``batch=`` when it names a fixture (the batch is read from it at call time).
ITEM_BATCH = pytest.StashKey["str | None"]()
#: the item uses the ``padaudit`` fixture but carries no marker of its own.
IMPLICIT = pytest.StashKey[bool]()
CALLED = pytest.StashKey[bool]()
#: the marked test's models, each with the handle built for it with the item's options.
MODELS = pytest.StashKey["list[tuple[str, object, ModelHandle]]"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "padaudit(**options, model=None): audit the test's model arguments for padding "
        "leaks after the test passes (options as for pytest_padaudit.audit)",
    )
    defaults, seed = session_settings(config)
    config.stash[DEFAULTS] = defaults
    config.stash[SEED] = seed
    models, checkpoints = zerocode.configure(config, audit=audit_for, keep=keep_report)
    if models or checkpoints:  # the item generator, imported only when asked for
        from .zeroitems import ZeroCode

        config.pluginmanager.register(ZeroCode(models, checkpoints), "padaudit-zerocode")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Declare ``padaudit_report_json`` as a pytest hook; bridge padaudit's own hooks.

    Also register ``--padaudit-report`` (reporting.py) here: a ``pytest_plugins`` list
    would make pytest scan every installed distribution's entry points once more.
    """
    from ..core.hooks import Bridge
    from . import newhooks, reporting  # reporting: --padaudit-report

    pluginmanager.add_hookspecs(newhooks)
    pluginmanager.register(Bridge(), "padaudit-bridge")
    if not pluginmanager.is_registered(reporting):
        pluginmanager.register(reporting, "pytest_padaudit.reporting")


def _marker_options(item: pytest.Item) -> dict[str, Any]:
    """Merge padaudit marker kwargs from module to class to function (closest wins)."""
    options: dict[str, Any] = {}
    for marker in reversed(list(item.iter_markers(MARKER))):
        if marker.args:
            raise PadAuditError(
                f"@pytest.mark.padaudit{marker.args!r} takes keyword options only: "
                "pass e.g. @pytest.mark.padaudit(steps=3, model='model')"
            )
        options.update(marker.kwargs)
    return options


def item_options(item: pytest.Item) -> AuditOptions:
    """Return the item's audit options (session defaults < marker), resolved once.

    Raise :class:`PadAuditError` naming the marker when a marker keyword is not valid.
    """
    if ITEM_OPTIONS in item.stash:
        return item.stash[ITEM_OPTIONS]
    marker = _marker_options(item)
    wanted = marker.pop("model", None)
    if wanted is not None and not (
        isinstance(wanted, str)
        or (isinstance(wanted, (list, tuple)) and all(isinstance(w, str) for w in wanted))
    ):
        raise PadAuditError(
            f"@pytest.mark.padaudit(model={wanted!r}) on {item.name}: pass the name of a "
            "fixture the test requests, or a list of names"
        )
    batch = marker.pop("batch") if isinstance(marker.get("batch"), str) else None
    if batch is not None and batch not in getattr(item, "fixturenames", ()):
        raise PadAuditError(
            f"@pytest.mark.padaudit(batch={batch!r}) on {item.name}: {batch!r} is not a "
            "fixture the test requests: pass the name of a fixture that returns the padded "
            f"batch, and request it (def {item.name.split('[')[0]}(model, {batch}): ...)"
        )
    from ..core.options import AuditOptions

    try:
        options = (item.config.stash[DEFAULTS] or AuditOptions()).merged(**marker)
    except PadAuditError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in marker.items())
        raise PadAuditError(f"@pytest.mark.padaudit({shown}) on {item.name}: {exc}") from None
    item.stash[ITEM_OPTIONS] = options
    item.stash[ITEM_MODELS] = wanted
    item.stash[ITEM_BATCH] = batch
    return options


def audit_for(
    item: pytest.Item,
    model: object,
    call_options: Mapping[str, Any],
    handle: ModelHandle | None = None,
) -> AuditReport:
    """Audit ``model`` for ``item`` (ini < command line < marker < call); keep the report.

    Only ``call_options`` are validated here (the item's were, at setup). ``handle`` is
    the one built for ``model`` with the item's options, reused when the call adds none.
    ``--padaudit-seed`` beats every layer.
    """
    from ..core.engine import adapt, audit_handle

    opts = item_options(item)
    named = item.stash.get(ITEM_BATCH, None)
    if named is not None and "batch" not in call_options:
        call_options = {**call_options, "batch": getattr(item, "funcargs", {})[named]}
    if call_options:
        opts, handle = opts.merged(**call_options), None
    seed = item.config.stash.get(SEED, None)
    if seed is not None:
        opts = dataclasses.replace(opts, seed=seed)
    report = audit_handle(handle or adapt(model, opts), opts, test=item.nodeid)
    keep_report(item, report)
    return report


def keep_report(item: pytest.Item, report: AuditReport) -> None:
    """Keep ``report`` with ``item``: reporting attaches it to the test report."""
    item.stash.setdefault(REPORTS, []).append(report)


class Auditor:
    """The ``padaudit`` fixture: ``padaudit(model, **options)`` audits and returns the report.

    A leak fails the test with :class:`PadLeakError`; bad input raises :class:`PadAuditError`.
    """

    def __init__(self, item: pytest.Item) -> None:
        self._item = item

    def __call__(self, model: object, **options: Any) -> AuditReport:
        __tracebackhide__ = True
        self._item.stash[CALLED] = True
        report = audit_for(self._item, model, options)
        if not report.passed:
            raise PadLeakError(report.failure_message(), report)
        return report

    def checkpoint(self, path_or_state: Any, **options: Any) -> AuditReport:
        """Audit saved weights (see ``audit_checkpoint``); reported like a model audit."""
        __tracebackhide__ = True
        from ..core.checkpoint import audit_checkpoint

        report = audit_checkpoint(path_or_state, **options)
        report.test = self._item.nodeid
        keep_report(self._item, report)
        if not report.passed:
            raise PadLeakError(report.failure_message(), report)
        return report

    @property
    def reports(self) -> list[AuditReport]:
        """Return the reports of every audit this test ran so far."""
        reports: list[AuditReport] = self._item.stash.get(REPORTS, [])
        return list(reports)


@pytest.fixture
def padaudit(request: pytest.FixtureRequest) -> Auditor:
    """Audit a model inline: ``padaudit(model, pad_idx=0)``; fails the test on a leak."""
    return Auditor(request.node)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use the ``padaudit`` fixture, so ``-m padaudit`` selects them."""
    for item in items:
        uses = "padaudit" in getattr(item, "fixturenames", ())
        if uses and item.get_closest_marker(MARKER) is None:
            item.add_marker(MARKER)
            item.stash[IMPLICIT] = True


def _explicitly_marked(item: pytest.Item) -> bool:
    """Say whether a test function carries the marker itself (zero-code items audit alone)."""
    return (
        isinstance(item, pytest.Function)
        and not item.stash.get(IMPLICIT, False)
        and item.get_closest_marker(MARKER) is not None
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    if _explicitly_marked(item):  # before any fixture runs: a bad marker is said up front
        _usage(item_options, item)
    result = yield
    if _explicitly_marked(item) and "padaudit" not in getattr(item, "fixturenames", ()):
        item.stash[MODELS] = _usage(_marked_models, item)
    return result


def _usage(function: Callable[[pytest.Item], Any], item: pytest.Item) -> Any:
    """Call ``function(item)``; fail the test with the message alone on a PadAuditError.

    ``pytest.fail`` is raised outside the ``except`` block, so the report shows the
    message once (no "During handling of the above exception" repeat) and no frames.
    """
    try:
        return function(item)
    except PadAuditError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    result = yield  # a failing test body raises here, and is not audited
    models = item.stash.get(MODELS, [])
    if item.stash.get(CALLED, False):
        return result
    if not models and _explicitly_marked(item):  # requested the fixture, never called it
        models = _usage(_marked_models, item)
    failures = [
        report.failure_message()
        for _, model, handle in models
        if not (report := audit_for(item, model, {}, handle)).passed
    ]
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)
    return result


def _marked_models(item: pytest.Item) -> list[tuple[str, object, ModelHandle]]:
    """Return the model-valued arguments a marked test should have audited, with handles."""
    from ..core.engine import adapt, find_handle

    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    own = getattr(getattr(item, "_fixtureinfo", None), "argnames", None) or tuple(funcargs)
    shown = ", ".join(own) or "none"  # the test's own arguments, not every fixture it pulls
    opts = item_options(item)  # resolved once per item: reads the marker's model= too
    wanted = item.stash[ITEM_MODELS]
    if wanted is not None:
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        missing = [n for n in names if n not in funcargs]
        if missing:
            raise PadAuditError(
                f"@pytest.mark.padaudit(model={wanted!r}): {', '.join(missing)} is not an "
                f"argument of {item.name}; its arguments are {shown}. "
                "Pass model= the name of a fixture the test requests"
            )
        return [(n, funcargs[n], adapt(funcargs[n], opts)) for n in names]
    found = [(n, v, find_handle(v, opts)) for n, v in funcargs.items()]
    models = [(n, v, h) for n, v, h in found if h is not None]
    if not models:
        raise PadAuditError(
            f"{item.name} is marked padaudit but none of its arguments is a model "
            f"(arguments: {shown}): request the model fixture, name "
            "it with @pytest.mark.padaudit(model='fixture_name'), or call the padaudit fixture"
        )
    return models
