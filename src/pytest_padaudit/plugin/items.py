"""The audits of marked tests and of the ``padaudit`` fixture, imported on first use.

The plugin's hooks (``__init__.py``) call in here only for a test that is audited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from ..core.errors import PadAuditError, PadLeakError
from . import CALLED, DEFAULTS, MARKER, MODELS, REPORTS, SEED

if TYPE_CHECKING:
    from ..core.handle import ModelHandle
    from ..core.options import AuditOptions
    from ..core.result import AuditReport

#: the options of an item (defaults and marker merged, validated), resolved once at setup.
ITEM_OPTIONS: pytest.StashKey[AuditOptions] = pytest.StashKey()
#: the marker's ``model=`` (fixture names), read with the item's options.
ITEM_MODELS: pytest.StashKey[str | list[str] | tuple[str, ...] | None] = pytest.StashKey()
#: the marker's ``batch=`` when it names a fixture (the batch is read from it at call time).
ITEM_BATCH: pytest.StashKey[str | None] = pytest.StashKey()


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


def check_marker(item: pytest.Item) -> None:
    """Resolve a marked test's options before its fixtures run: a bad marker fails it."""
    _usage(item_options, item)


def find_models(item: pytest.Item) -> list[tuple[str, object, ModelHandle]]:
    """Return the marked test's models with their handles; a test without one fails."""
    models: list[tuple[str, object, ModelHandle]] = _usage(_marked_models, item)
    return models


def audit_marked(item: pytest.Item) -> None:
    """Audit a marked test's models after its body passed; fail it on a leak."""
    models = item.stash.get(MODELS, [])
    if not models:  # requested the fixture, never called it
        models = _usage(_marked_models, item)
    failures = [
        report.failure_message()
        for _, model, handle in models
        if not (report := audit_for(item, model, {}, handle)).passed
    ]
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


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
