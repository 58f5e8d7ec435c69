"""The pytest face of padaudit: the ``pytest11`` entry point, and all of it start-up needs.

pytest registers this one module: it declares every ``--padaudit-*`` option and ini twin,
the marker, the ``padaudit`` fixture and the hooks. Each hook decides on its own whether
padaudit has anything to do; only then does it import the module that does it: ``settings``
(a setting is given), ``items`` (a test is audited), ``reporting`` (a report is asked for or
an audit ran), ``zeroitems`` (``--padaudit-model`` or ``--padaudit-checkpoint``). It imports
no framework and no NumPy: a session that runs no audit pays for this module alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from ..core.errors import PadAuditError, PadLeakError

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

    from ..core.handle import ModelHandle
    from ..core.options import AuditOptions
    from ..core.result import AuditReport
    from .items import Auditor

MARKER = "padaudit"
#: the audit options settable for a whole session, as ``--padaudit-NAME`` and ini
#: ``padaudit_NAME``: (name, kind, metavar, help text, a valid value for the error of a bad
#: one). ``kind`` says how to read the text form: int, float, str or list (commas, spaces or
#: a TOML list). Plain tuples: ``settings.SETTINGS`` makes them records when one is read.
OPTIONS = (
    ("seed", "int", "N", "seed of the synthetic batch, loss weights and RNG (default 0)", "0"),
    ("checks", "list", "NAMES", "checks to run: grad,update,invariance (default all)", ""),
    ("allow", "list", "CAUSES", "finding causes reported as allowed, e.g. tied", ""),
    ("steps", "int", "N", "optimizer steps of the update check (default 1)", "3"),
    ("seq_len", "int", "N", "columns of the synthetic batch (default 16)", "16"),
    ("batch_size", "int", "N", "sequences in the synthetic batch (default 4)", "4"),
    ("rtol", "float", "X", "relative tolerance of the invariance check (default 1e-4)", "1e-4"),
    ("atol", "float", "X", "tolerance of the grad and update checks (default 0.0)", "0.0"),
    ("loss", "str", "all|masked", "loss over the outputs: all or masked (default all)", ""),
    ("padding_side", "str", "right|left", "where the batch pads (default right)", ""),
    (
        "optimizer",
        "str",
        "PATH",
        "optimizer class by dotted path, e.g. 'torch.optim.AdamW(weight_decay=0.1)'",
        "",
    ),
)
MODEL_OPTION = "--padaudit-model"
CHECKPOINT_OPTION = "--padaudit-checkpoint"
#: node-id prefixes of the generated items; a node id given as an argument reruns its item.
MODEL_PREFIX = "padaudit["
CHECKPOINT_PREFIX = "padaudit-checkpoint["
#: the report kinds of ``--padaudit-report``.
KINDS = ("term", "json", "json-pretty", "md")
_HINT = (
    "pass term, json, json:PATH, json-pretty[:PATH] (indented), md or md:PATH (repeat the "
    "option for several reports; none drops the reports given before it)"
)

# The keys carry their types as annotations only: a subscripted StashKey costs at import.
#: the session's options (ini < command line), the record each item's marker lays over;
#: None when none is set (options.py is then imported only by the first audited item).
DEFAULTS: pytest.StashKey[AuditOptions | None] = pytest.StashKey()
SEED: pytest.StashKey[int | None] = pytest.StashKey()
#: the audits an item ran (items.py appends; reporting.py reads).
REPORTS: pytest.StashKey[list[AuditReport]] = pytest.StashKey()
#: the item uses the ``padaudit`` fixture but carries no marker of its own.
IMPLICIT: pytest.StashKey[bool] = pytest.StashKey()
#: the test called the ``padaudit`` fixture: the hooks audit nothing more.
CALLED: pytest.StashKey[bool] = pytest.StashKey()
#: the marked test's models, each with the handle built for it with the item's options.
MODELS: pytest.StashKey[list[tuple[str, object, ModelHandle]]] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("padaudit", "pad-row gradient audits (pytest-padaudit)")
    unions = True  # pytest 9.2+ takes int | str as an ini type (TOML numbers)
    for name, kind, metavar, text, _ in OPTIONS:
        flag, ini = "--padaudit-" + name.replace("_", "-"), "padaudit_" + name
        extra = ", overridden by this option in every audit" if name == "seed" else ""
        number = int if kind == "int" else float if kind == "float" else None
        group.addoption(
            flag,
            dest=ini,
            type=number or str,  # argparse says a bad number
            default=None,
            metavar=metavar,
            help=f"{text}; ini {ini}{extra}",
        )
        shown = f"{text}; {flag}"
        if kind == "list":  # a TOML list, or text split as in a shell
            parser.addini(ini, shown, type="args")
            continue
        if number is not None and unions:
            try:
                # a union built at run time: a type form pytest 9.2 takes, mypy cannot see
                parser.addini(ini, shown, type=number | str, default="")  # type: ignore[arg-type]
                continue
            except (AssertionError, TypeError, ValueError):  # an older pytest: text only
                unions = False
        parser.addini(ini, shown, default="")
    _addoption_zerocode(group)
    group.addoption(
        "--padaudit-report",
        action="append",
        nargs="?",
        const="term",
        default=None,
        metavar="TYPE",
        dest="padaudit_report",
        help="after the run, report every audit: term (the default), json[:PATH] (compact), "
        "json-pretty[:PATH] (indented), md[:PATH] "
        "(paths default to padaudit-report.json/.md; md alone appends to "
        "$GITHUB_STEP_SUMMARY when set); repeatable; none: no report (ini: padaudit_report)",
    )
    parser.addini(
        "padaudit_report",
        "reports written after every run, as for --padaudit-report (e.g. term json:a.json)",
        type="args",
        default=[],
    )


def _addoption_zerocode(group: Any) -> None:
    """Add ``--padaudit-model`` and ``--padaudit-checkpoint`` (their items: zeroitems.py)."""
    group.addoption(
        MODEL_OPTION,
        action="append",
        default=[],
        metavar="MODULE:FACTORY[?OPTIONS]",
        help="audit the model a factory returns, as a generated test item; repeatable. "
        "OPTIONS: name=value pairs joined by &, values as Python literals "
        "(e.g. 'mypkg.models:build?pad_idx=0&seq_len=32')",
    )
    group.addoption(
        CHECKPOINT_OPTION,
        action="append",
        default=[],
        metavar="PATH[?OPTIONS]",
        help="check the pad rows of saved weights (state_dict, .safetensors, .weights.h5, "
        ".keras) as a generated test item; repeatable. OPTIONS as for audit_checkpoint: "
        "expect, pad_idx, keys, baseline, atol, allow (e.g. 'ft.pt?baseline=base.pt&pad_idx=1')",
    )


class _Hookspecs:
    """padaudit's pytest hook, declared in ``pytest_addhooks`` as pytest-xdist does.

    A ``conftest.py`` or a pytest plugin implements it natively, like any pytest hook.
    pytest takes unmarked hook functions only with the ``pytest_`` prefix, so the hook is
    ``pytest_padaudit_report_json`` (as xdist's are ``pytest_xdist_*``);
    ``padaudit_report_json`` in a conftest keeps working through padaudit's own hooks.
    """

    @staticmethod
    @pytest.hookspec
    def pytest_padaudit_report_json(config: pytest.Config, data: dict[str, Any]) -> None:
        """Adjust the ``--padaudit-report=json`` data in place before it is written.

        :param config: the pytest config of the session (the controller under pytest-xdist).
        :param data: ``{"version", "generator", "summary", "audits"}``; each audit is
            ``AuditReport.to_dict()`` as JSON primitives. Add keys (CI metadata), drop what
            you do not want kept (``audit["batch"]["ids"]``); values must stay JSON primitives.

        Called on the process that writes the report only, once per JSON file, before
        padaudit's own ``padaudit_report_json``.
        """


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Declare ``pytest_padaudit_report_json``; bridge padaudit's own hooks from conftests."""
    from ..core.hooks import Bridge  # imported with the package already

    pluginmanager.add_hookspecs(_Hookspecs)
    pluginmanager.register(Bridge(), "padaudit-bridge")


def _report_word(value: str) -> bool:
    """Say whether ``value`` is a report (term, json, json:PATH, md, md:PATH, none)."""
    return value == "none" or value.partition(":")[0] in KINDS


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Read ``--padaudit-report tests/`` as the terminal report and the path ``tests/``.

    The option's value is optional, so argparse would take the next argument as it.
    """
    changed = False
    for i, arg in enumerate(args[:-1]):
        if arg == "--padaudit-report" and not _report_word(args[i + 1]):
            args[i] = "--padaudit-report=term"
            changed = True
    if changed:  # conftests are found from the paths: read them again
        import copy

        cut = early_config.known_args_namespace.confcutdir
        early_config.known_args_namespace = parser.parse_known_args(
            args, namespace=copy.copy(early_config.option)
        )
        early_config.known_args_namespace.confcutdir = cut


def parse_targets(values: Sequence[str], source: str) -> list[tuple[str, str | None]]:
    """Turn ``--padaudit-report`` values into (kind, path or None); raise UsageError if bad."""
    targets: list[tuple[str, str | None]] = []
    for value in values:
        if value == "none":
            targets.clear()
            continue
        kind, colon, path = value.partition(":")
        if kind not in KINDS or (colon and not path) or (kind == "term" and colon):
            raise pytest.UsageError(f"{source}={value!r} is not a padaudit report: {_HINT}")
        targets.append((kind, path or None))
    return list(dict.fromkeys(targets))


def pytest_configure(config: pytest.Config) -> None:
    """Check every padaudit option now (a bad value fails start-up); wire what is asked for."""
    config.addinivalue_line(
        "markers",
        "padaudit(**options, model=None): audit the test's model arguments for padding "
        "leaks after the test passes (options as for pytest_padaudit.audit)",
    )
    if not hasattr(config, "workerinput"):  # an xdist worker: its audits travel in reports
        values, source = config.getoption("padaudit_report"), "--padaudit-report"
        if values is None:
            values, source = config.getini("padaudit_report"), "ini padaudit_report"
        targets = parse_targets(values, source)
        if targets:
            from .reporting import ReportSession

            config.pluginmanager.register(ReportSession(config, targets), "padaudit-report")
    defaults: AuditOptions | None = None
    seed = None
    for name, *_ in OPTIONS:
        ini = "padaudit_" + name
        if config.getini(ini) not in ("", [], None) or config.getoption(ini) is not None:
            from .settings import session_settings  # a setting is given: read and check all

            defaults, seed = session_settings(config)
            break
    config.stash[DEFAULTS] = defaults
    config.stash[SEED] = seed
    if (
        config.getoption("padaudit_model", default=None)
        or config.getoption("padaudit_checkpoint", default=None)
        or any(arg.startswith((MODEL_PREFIX, CHECKPOINT_PREFIX)) for arg in config.args)
    ):
        from .zeroitems import configure  # the item generator, imported only when asked for

        configure(config)


@pytest.fixture
def padaudit(request: pytest.FixtureRequest) -> Auditor:
    """Audit a model inline: ``padaudit(model, pad_idx=0)``; fails the test on a leak."""
    from .items import Auditor

    return Auditor(request.node)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use the ``padaudit`` fixture, so ``-m padaudit`` selects them."""
    for item in items:
        uses = "padaudit" in getattr(item, "fixturenames", ())
        if uses and item.get_closest_marker(MARKER) is None:
            item.add_marker(MARKER)
            item.stash[IMPLICIT] = True


def explicitly_marked(item: pytest.Item) -> bool:
    """Say whether a test function carries the marker itself (zero-code items audit alone)."""
    return (
        isinstance(item, pytest.Function)
        and not item.stash.get(IMPLICIT, False)
        and item.get_closest_marker(MARKER) is not None
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    if explicitly_marked(item):  # before any fixture runs: a bad marker is said up front
        from .items import check_marker

        check_marker(item)
    result = yield
    if explicitly_marked(item) and "padaudit" not in getattr(item, "fixturenames", ()):
        from .items import find_models

        item.stash[MODELS] = find_models(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    result = yield  # a failing test body raises here, and is not audited
    if item.stash.get(CALLED, False):
        return result
    if item.stash.get(MODELS, None) or explicitly_marked(item):
        from .items import audit_marked

        audit_marked(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the audits run since the last report; show padaudit's errors at the user's line.

    The common case (no audit ran, no padaudit error) imports nothing.
    """
    ours = call.excinfo is not None and isinstance(call.excinfo.value, PadAuditError | PadLeakError)
    if not ours and REPORTS not in item.stash:
        return (yield)
    from .reporting import makereport

    return (yield from makereport(item, call))
