"""The pytest face of padaudit: options, ini twins, the marker, the fixture.

This module imports no framework and no NumPy: a session that runs no audit pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from . import zerocode
from .errors import PadAuditError, PadLeakError

if TYPE_CHECKING:
    from .result import AuditReport

#: ``--padaudit-report``: the reports after the run, and audits carried in test reports.
pytest_plugins = ["pytest_padaudit.reporting"]
MARKER = "padaudit"
#: ini options that give audit defaults (call kwargs > marker kwargs > ini).
INI_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "seed": (int, "seed of the synthetic batch and loss weights (default 0)"),
    "batch_size": (int, "sequences in the synthetic batch (default 4)"),
    "seq_len": (int, "columns of the synthetic batch (default 16)"),
    "steps": (int, "optimizer steps of the update check (default 1)"),
    "checks": (str.split, "checks to run: grad update invariance (default all)"),
    "loss": (str, "loss over the outputs: all or masked (default all)"),
    "atol": (float, "tolerance of the grad and update checks (default 0.0)"),
    "rtol": (float, "relative tolerance of the invariance check (default 1e-4)"),
    "padding_side": (str, "right or left (default right)"),
    "allow": (str.split, "finding causes reported as allowed, e.g. tied"),
    "optimizer": (str, "optimizer class by dotted path, e.g. torch.optim.AdamW(weight_decay=0.1)"),
}
DEFAULTS = pytest.StashKey[dict[str, Any]]()
REPORTS = pytest.StashKey[list["AuditReport"]]()
CALLED = pytest.StashKey[bool]()
MODELS = pytest.StashKey[list[tuple[str, object]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("padaudit", "pad-row gradient audits (pytest-padaudit)")
    group.addoption(
        "--padaudit-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of every audit, overriding markers and calls (ini: padaudit_seed)",
    )
    zerocode.addoption(group)
    for name, (_, text) in INI_OPTIONS.items():
        parser.addini(f"padaudit_{name}", text, default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "padaudit(**options, model=None): audit the test's model arguments for padding "
        "leaks after the test passes (options as for pytest_padaudit.audit)",
    )
    config.stash[DEFAULTS] = _ini_defaults(config)
    zerocode.configure(config)


def _ini_defaults(config: pytest.Config) -> dict[str, Any]:
    defaults = {}
    for name, (convert, _) in INI_OPTIONS.items():
        raw = str(config.getini(f"padaudit_{name}")).strip()
        if not raw:
            continue
        try:
            defaults[name] = convert(raw)
        except ValueError:
            raise pytest.UsageError(
                f"ini option padaudit_{name} = {raw!r} is not valid: {INI_OPTIONS[name][1]}"
            ) from None
    return defaults


#: conftest modules registered with padaudit's own hooks, per pytest plugin manager.
_BRIDGED: dict[int, list[object]] = {}


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Let a conftest.py implement padaudit hooks by defining ``padaudit_*`` functions."""
    if not any(name.startswith("padaudit_") for name in dir(plugin)):
        return
    from .hooks import register

    register(plugin)
    _BRIDGED.setdefault(id(manager), []).append(plugin)


def pytest_unconfigure(config: pytest.Config) -> None:
    bridged = _BRIDGED.pop(id(config.pluginmanager), [])
    if bridged:
        from .hooks import unregister

        for plugin in bridged:
            unregister(plugin)


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


def audit_for(item: pytest.Item, model: object, call_options: dict[str, Any]) -> AuditReport:
    """Audit ``model`` for ``item`` with ini < marker < call options; keep the report."""
    from .engine import adapt, run_audit
    from .options import AuditOptions

    options = {**item.config.stash[DEFAULTS], **_marker_options(item), **call_options}
    options.pop("model", None)
    seed = item.config.getoption("padaudit_seed")
    if seed is not None:
        options["seed"] = seed
    opts = AuditOptions.from_kwargs(**options)
    report = run_audit(adapt(model, opts), opts, test=item.nodeid)
    item.stash.setdefault(REPORTS, []).append(report)
    return report


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
        from .checkpoint import audit_checkpoint

        report = audit_checkpoint(path_or_state, **options)
        report.test = self._item.nodeid
        self._item.stash.setdefault(REPORTS, []).append(report)
        if not report.passed:
            raise PadLeakError(report.failure_message(), report)
        return report

    @property
    def reports(self) -> list[AuditReport]:
        """Return the reports of every audit this test ran so far."""
        return list(self._item.stash.get(REPORTS, []))


@pytest.fixture
def padaudit(request: pytest.FixtureRequest) -> Auditor:
    """Audit a model inline: ``padaudit(model, pad_idx=0)``; fails the test on a leak."""
    return Auditor(request.node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    result = yield
    if item.get_closest_marker(MARKER) is not None and "padaudit" not in item.fixturenames:
        try:
            item.stash[MODELS] = _marked_models(item)
        except PadAuditError as exc:  # a usage error: say it once, without a traceback
            pytest.fail(str(exc), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    result = yield  # a failing test body raises here, and is not audited
    models = item.stash.get(MODELS, [])
    if item.stash.get(CALLED, False):
        return result
    if not models and item.get_closest_marker(MARKER) is not None:
        models = _marked_models(item)  # requested the fixture but never called it
    failures = [
        report.failure_message()
        for _, model in models
        if not (report := audit_for(item, model, {})).passed
    ]
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)
    return result


def _marked_models(item: pytest.Item) -> list[tuple[str, object]]:
    """Return the model-valued arguments a marked test should have audited."""
    from .engine import find_handle

    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    wanted = _marker_options(item).get("model")
    if wanted is not None:
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        missing = [n for n in names if n not in funcargs]
        if missing:
            raise PadAuditError(
                f"@pytest.mark.padaudit(model={wanted!r}): {', '.join(missing)} is not an "
                f"argument of {item.name}; its arguments are {', '.join(funcargs) or 'none'}. "
                "Pass model= the name of a fixture the test requests"
            )
        return [(n, funcargs[n]) for n in names]
    models = [(n, v) for n, v in funcargs.items() if find_handle(v) is not None]
    if not models:
        raise PadAuditError(
            f"{item.name} is marked padaudit but none of its arguments is a model "
            f"(arguments: {', '.join(funcargs) or 'none'}): request the model fixture, name "
            "it with @pytest.mark.padaudit(model='fixture_name'), or call the padaudit fixture"
        )
    return models
