"""Session settings: ``--padaudit-*`` options and their ``padaudit_*`` ini twins, read once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from ..core.errors import PadAuditError
from . import zerocode

if TYPE_CHECKING:
    from ..core.options import AuditOptions


class Setting(NamedTuple):  # a NamedTuple: a dataclass costs 1 ms of start-up
    """One audit option settable for a whole session: ``--padaudit-NAME`` and ini ``padaudit_NAME``.

    ``text`` is the one help text both forms show; ``kind`` says how to read the text
    form: ``int``, ``float``, ``str`` or ``list`` (commas, spaces or a TOML list).
    """

    name: str
    kind: str
    metavar: str
    text: str
    #: a valid value, shown in the error for a bad one.
    example: str = ""

    @property
    def flag(self) -> str:
        return "--padaudit-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "padaudit_" + self.name


SETTINGS = (
    Setting(
        "seed", "int", "N", "seed of the synthetic batch, loss weights and RNG (default 0)", "0"
    ),
    Setting("checks", "list", "NAMES", "checks to run: grad,update,invariance (default all)"),
    Setting("allow", "list", "CAUSES", "finding causes reported as allowed, e.g. tied"),
    Setting("steps", "int", "N", "optimizer steps of the update check (default 1)", "3"),
    Setting("seq_len", "int", "N", "columns of the synthetic batch (default 16)", "16"),
    Setting("batch_size", "int", "N", "sequences in the synthetic batch (default 4)", "4"),
    Setting(
        "rtol", "float", "X", "relative tolerance of the invariance check (default 1e-4)", "1e-4"
    ),
    Setting("atol", "float", "X", "tolerance of the grad and update checks (default 0.0)", "0.0"),
    Setting("loss", "str", "all|masked", "loss over the outputs: all or masked (default all)"),
    Setting("padding_side", "str", "right|left", "where the batch pads (default right)"),
    Setting(
        "optimizer",
        "str",
        "PATH",
        "optimizer class by dotted path, e.g. 'torch.optim.AdamW(weight_decay=0.1)'",
    ),
)
PRECEDENCE = (
    "precedence: a padaudit(...) call > @pytest.mark.padaudit > command line > ini; "
    "--padaudit-seed overrides every audit's seed"
)
#: the session's options (ini < command line), the record each item's marker lays over;
#: None when none is set (options.py is then imported only by the first audited item).
DEFAULTS = pytest.StashKey["AuditOptions | None"]()
SEED = pytest.StashKey["int | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("padaudit", "pad-row gradient audits (pytest-padaudit)")
    for s in SETTINGS:
        text = f"{s.text}; ini {s.ini}"
        if s.name == "seed":
            text += ", overridden by this option in every audit"
        kind = {"int": int, "float": float}.get(s.kind, str)  # argparse says a bad number
        group.addoption(s.flag, dest=s.ini, type=kind, default=None, metavar=s.metavar, help=text)
        _addini(parser, s)
    zerocode.addoption(group)


def _addini(parser: pytest.Parser, s: Setting) -> None:
    """Register the ini twin; numbers also as TOML numbers where pytest takes unions (9.2+)."""
    text = f"{s.text}; {s.flag}"
    if s.kind == "list":
        parser.addini(s.ini, text, type="args")  # a TOML list, or text split as in a shell
        return
    kind = {"int": int, "float": float}.get(s.kind)
    if kind is not None:
        try:
            # a union built at run time: a type form pytest 9.2 takes, which mypy cannot see
            parser.addini(s.ini, text, type=kind | str, default="")  # type: ignore[arg-type]
            return
        except (AssertionError, TypeError, ValueError):  # an older pytest: text only
            pass
    parser.addini(s.ini, text, default="")


def session_settings(config: pytest.Config) -> tuple[AuditOptions | None, int | None]:
    """Read every setting from ini then command line; raise UsageError on a bad value.

    Return the session defaults (command line over ini), validated once into the record
    every item starts from (None when no setting is given), and the ``--padaudit-seed``
    override (None when not given). Every bad value is named in the one error.
    """
    defaults: dict[str, Any] = {}
    errors: list[str] = []
    for s in SETTINGS:
        ini = config.getini(s.ini)
        if ini not in ("", [], None):
            _read(s, ini, f"ini option {s.ini} = {ini!r}", defaults, errors)
        given = config.getoption(s.ini, default=None)
        if given is not None:
            _read(s, given, f"{s.flag}={given}", defaults, errors)
    if errors:
        head = "" if len(errors) == 1 else f"{len(errors)} padaudit settings are not valid: "
        raise pytest.UsageError(head + "; ".join(errors))
    seed = defaults.pop("seed", None) if config.getoption("padaudit_seed") is not None else None
    if not defaults:
        return None, seed
    from ..core.options import AuditOptions

    return AuditOptions(**defaults, given=frozenset(defaults)), seed


_KINDS = {"int": "an int", "float": "a number"}  # the kinds whose text can fail to convert


def _read(s: Setting, raw: Any, source: str, into: dict[str, Any], errors: list[str]) -> None:
    """Convert one text (or TOML list) value, validate it as the audit option, keep it.

    A bad value adds its message to ``errors`` instead.
    """
    from ..core.options import AuditOptions  # options.py imports no framework and no NumPy

    try:
        if s.kind == "list":
            items = raw if isinstance(raw, list) else [str(raw)]
            value: Any = tuple(p for item in items for p in str(item).replace(",", " ").split())
        else:
            text = str(raw).strip()
            value = int(text) if s.kind == "int" else float(text) if s.kind == "float" else text
        value = getattr(AuditOptions.from_kwargs(**{s.name: value}), s.name)  # as validated
    except ValueError:
        example = s.ini + " = " + s.example if source.startswith("ini") else f"{s.flag}={s.example}"
        errors.append(f"{source} is not valid: pass {_KINDS[s.kind]}, e.g. {example}")
        return
    except PadAuditError as exc:
        errors.append(f"{source}: {exc}")
        return
    into[s.name] = value
