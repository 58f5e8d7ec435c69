"""Zero-code audits: ``--padaudit-model`` and ``--padaudit-checkpoint`` become test items.

``--padaudit-model=pkg.mod:factory?pad_idx=0&seq_len=32`` imports ``pkg.mod``, takes
``factory`` (a model, or a callable that returns one when called with no arguments) and
audits it with the options after ``?`` (``name=value`` pairs joined by ``&``; each value is
read as a Python literal, else kept as a string; ``a,b`` is a tuple of strings).
``--padaudit-checkpoint=PATH?pad_idx=0&baseline=old.pt`` runs ``audit_checkpoint``.

The plugin declares the options and imports this module only when one is given (or a
generated item's node id is). It imports no framework.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from ..core.errors import PadAuditError, PadLeakError
from . import CHECKPOINT_OPTION, CHECKPOINT_PREFIX, MODEL_OPTION, MODEL_PREFIX


def configure(config: pytest.Config) -> None:
    """Register the item generator for the zero-code specs given, if any.

    ``pytest 'padaudit[pkg.mod:factory]'`` (the node id of a generated item, as the
    rerun line prints it) is read as ``--padaudit-model=pkg.mod:factory`` and leaves
    nothing else to collect; pytest itself would reject it as a path.
    """
    models = list(config.getoption("padaudit_model", default=None) or [])
    checkpoints = list(config.getoption("padaudit_checkpoint", default=None) or [])
    ids = [a for a in config.args if _item_spec(a) is not None]
    for arg in ids:
        kind, spec = _item_spec(arg)  # type: ignore[misc]
        (models if kind == "model" else checkpoints).append(spec)
    if ids:
        config.args[:] = [a for a in config.args if a not in ids]
        models, checkpoints = list(dict.fromkeys(models)), list(dict.fromkeys(checkpoints))
        config.option.padaudit_model = models  # pytest-xdist workers read the options
        config.option.padaudit_checkpoint = checkpoints
    if models or checkpoints:
        config.pluginmanager.register(ZeroCode(models, checkpoints), "padaudit-zerocode")


def _item_spec(arg: str) -> tuple[str, str] | None:
    """Return ("model" | "checkpoint", spec) when ``arg`` is a generated item's node id."""
    for kind, prefix in (("checkpoint", CHECKPOINT_PREFIX), ("model", MODEL_PREFIX)):
        if arg.startswith(prefix) and arg.endswith("]") and len(arg) > len(prefix) + 1:
            return kind, arg[len(prefix) : -1]
    return None


def parse_spec(text: str, flag: str) -> tuple[str, dict[str, Any]]:
    """Split ``target?name=value&...`` into the target and its options."""
    target, _, query = text.partition("?")
    options: dict[str, Any] = {}
    for pair in filter(None, query.split("&")):
        name, eq, raw = pair.partition("=")
        if not eq or not name.strip():
            raise PadAuditError(
                f"{flag}={text}: option {pair!r} has no value: write name=value pairs joined "
                "by &, e.g. ?pad_idx=0&seq_len=32"
            )
        value = _value(raw.strip())
        if name.strip() in _NAME_LISTS and isinstance(value, str):  # ?checks=grad
            value = (value,)
        options[name.strip()] = value
    if not target.strip():
        raise PadAuditError(f"{flag}={text}: nothing to audit before '?'")
    return target.strip(), options


#: options that take a tuple of names; a spec may give one name alone.
_NAME_LISTS = ("checks", "allow")


def _value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if "," in raw:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw


def resolve(target: str, flag: str, search: list[Path]) -> object:
    """Import ``module:attr.path`` and return the object; one clear error when it fails."""
    module_name, colon, attrs = target.partition(":")
    if not colon or not module_name or not attrs:
        raise PadAuditError(
            f"{flag}={target}: expected MODULE:FACTORY, e.g. {flag}=mypkg.models:build_model"
        )
    module = _import(module_name, flag, target, search)
    obj: Any = module
    for part in attrs.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")][:8]
            raise PadAuditError(
                f"{flag}={target}: {module_name} has no attribute {attrs!r}: pass one of "
                f"{', '.join(names) or 'its functions'}"
            )
        obj = getattr(obj, part)
    return obj


def _import(name: str, flag: str, target: str, search: list[Path]) -> Any:
    for attempt in range(2):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            ours = exc.name is not None and (name == exc.name or name.startswith(exc.name + "."))
            if not ours:
                raise PadAuditError(
                    f"{flag}={target}: importing {name} failed: {exc} "
                    "(install what it needs, or fix the module)"
                ) from None
            added = [str(p) for p in search if str(p) not in sys.path]
            if attempt or not added:
                raise PadAuditError(
                    f"{flag}={target}: no module named {name!r} (searched sys.path and "
                    f"{search[0]}): pass an importable module, e.g. mypkg.models:build_model"
                ) from None
            sys.path[:0] = added  # as `python -m pytest` would: the invocation directory
        except Exception as exc:
            raise PadAuditError(
                f"{flag}={target}: importing {name} raised {type(exc).__name__}: {exc}"
            ) from None
    raise AssertionError("unreachable")


class ZeroCode:
    """Generate one test item per ``--padaudit-model`` and ``--padaudit-checkpoint``."""

    def __init__(self, models: list[str], checkpoints: list[str]) -> None:
        self.models = models
        self.checkpoints = checkpoints

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        errors: list[str] = []
        made: list[pytest.Item] = []
        search = [config.invocation_params.dir, config.rootpath]
        for spec in self.models:
            try:
                made.append(_model_item(session, spec, search))
            except PadAuditError as exc:
                errors.append(str(exc))
        for spec in self.checkpoints:
            try:
                made.append(_checkpoint_item(session, spec, config.invocation_params.dir))
            except PadAuditError as exc:
                errors.append(str(exc))
        if errors:
            raise pytest.UsageError(*errors)
        for item in made:
            config.hook.pytest_itemcollected(item=item)
        result = cast("list[pytest.Item | pytest.Collector]", made)  # CollectReport's type
        report = pytest.CollectReport(session.nodeid, "passed", None, result)
        config.hook.pytest_collectreport(report=report)  # "collected N items" counts them
        items.extend(made)


def _model_item(session: pytest.Session, spec: str, search: list[Path]) -> pytest.Item:
    from ..core.engine import find_handle
    from ..core.options import AuditOptions, optimizer_options

    target, options = parse_spec(spec, MODEL_OPTION)
    for key in _NAMED:  # ?batch=pkg.data:train_batch&step=pkg.train:step
        if isinstance(options.get(key), str) and ":" in options[key]:
            options[key] = resolve(options[key], f"{MODEL_OPTION}={spec}: {key}", search)
    try:
        options = optimizer_options(options)  # ?optimizer=torch.optim.AdamW&lr=0.01
        AuditOptions.from_kwargs(**{k: v for k, v in options.items() if k != "batch"})
    except PadAuditError as exc:
        raise PadAuditError(f"{MODEL_OPTION}={spec}: {exc}") from None
    obj = resolve(target, MODEL_OPTION, search)
    if find_handle(obj) is None and not callable(obj):
        raise PadAuditError(
            f"{MODEL_OPTION}={spec}: {target} is a {type(obj).__name__}, neither a model nor "
            "a callable that returns one: pass a factory function, a model class or a model"
        )
    name = f"{MODEL_PREFIX}{spec}]"
    item = ModelItem.from_parent(
        session, name=name, nodeid=name, spec=spec, obj=obj, options=options
    )
    item.add_marker("padaudit")  # -m padaudit selects every audit
    return item


#: options a spec names as MODULE:ATTR (a batch may be a function that returns one).
_NAMED = ("batch", "step", "widen", "forward", "loss")


def _checkpoint_item(session: pytest.Session, spec: str, base: Path) -> pytest.Item:
    target, options = parse_spec(spec, CHECKPOINT_OPTION)
    known = {"expect", "pad_idx", "keys", "baseline", "atol", "allow"}
    unknown = sorted(set(options) - known)
    if unknown:
        from ..core.options import did_you_mean

        raise PadAuditError(
            f"{CHECKPOINT_OPTION}={spec}: unknown option {', '.join(unknown)}"
            f"{did_you_mean(unknown, sorted(known))}: pass {', '.join(sorted(known))}"
        )
    path = base / target
    if not path.is_file():
        raise PadAuditError(f"{CHECKPOINT_OPTION}={spec}: no file {str(path)!r}: pass a path")
    if isinstance(options.get("baseline"), str):
        options["baseline"] = str(base / options["baseline"])
    name = f"{CHECKPOINT_PREFIX}{spec}]"
    item = CheckpointItem.from_parent(session, name=name, nodeid=name, path_=path, options=options)
    item.add_marker("padaudit")
    return item


class _ZeroCodeItem(pytest.Item):
    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, PadAuditError | PadLeakError):  # the message, no frames
            shown = excinfo.getrepr(style="value")
            # str(error), split: a list (typed Sequence), its first line replaced below
            lines = cast("list[str]", shown.reprtraceback.reprentries[-1].lines)
            lines[0] = f"{type(excinfo.value).__name__}: {lines[0]}"
            return shown
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class ModelItem(_ZeroCodeItem):
    """Audit the model a ``--padaudit-model`` spec names."""

    def __init__(self, *, spec: str, obj: object, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.obj: Any = obj  # a model, or a factory that returns one
        self.options = options

    def runtest(self) -> None:
        from ..core.engine import find_handle

        model = self.obj if find_handle(self.obj) is not None else self.obj()
        if find_handle(model) is None:
            raise PadAuditError(
                f"{MODEL_OPTION}={self.spec}: the factory returned a "
                f"{type(model).__module__}.{type(model).__qualname__}, not a model padaudit "
                "can audit: return a torch.nn.Module or a keras.Model holding an embedding"
            )
        options = dict(self.options)
        batch = options.get("batch")
        if callable(batch) and not hasattr(batch, "shape"):
            options["batch"] = batch()  # a function that returns the batch
        from .items import audit_for

        report = audit_for(self, model, options)
        if not report.passed:  # the failure message holds the report: print it once
            raise PadLeakError(report.failure_message())
        self.add_report_section("call", "padaudit", str(report))  # shown by -rP


class CheckpointItem(_ZeroCodeItem):
    """Check the pad rows of the weights a ``--padaudit-checkpoint`` spec names."""

    def __init__(self, *, path_: Path, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.file = path_
        self.options = options

    def runtest(self) -> None:
        from ..core.checkpoint import audit_checkpoint

        report = audit_checkpoint(self.file, **self.options)
        report.test = self.nodeid  # reported like a model audit (--padaudit-report, JUnit)
        from .items import keep_report

        keep_report(self, report)
        if not report.passed:  # the failure message holds the report: print it once
            raise PadLeakError(report.failure_message())
        self.add_report_section("call", "padaudit", str(report))  # shown by -rP
