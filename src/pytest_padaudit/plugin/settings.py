"""Session settings: read and check the ``--padaudit-*`` options and ``padaudit_*`` ini twins.

The plugin declares them (``OPTIONS`` in ``__init__.py``); it imports this module only
when one of them is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from ..core.errors import PadAuditError
from . import OPTIONS

if TYPE_CHECKING:
    from ..core.options import AuditOptions


class Setting(NamedTuple):
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


#: the settings as records, from the plugin's table of them.
SETTINGS = tuple(Setting(*row) for row in OPTIONS)
PRECEDENCE = (
    "precedence: a padaudit(...) call > @pytest.mark.padaudit > command line > ini; "
    "--padaudit-seed overrides every audit's seed"
)


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
