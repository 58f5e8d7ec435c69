"""Audit saved weights without running the model: is each embedding's pad row zero, unchanged?

Reads PyTorch ``state_dict`` files (``torch.load(weights_only=True)``, never a full
unpickle), ``.safetensors``, Keras ``.weights.h5`` and ``.keras`` archives, or an in-memory
mapping of names to arrays. Frameworks and h5py are imported only for the file that needs
them; only the pad row of each table is read where the format allows it.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..render import report as _text  # noqa: F401 -- installs the reports' text renderer
from .checkpoint_files import checkpoint_words, flatten, load
from .errors import PadAuditError
from .result import AuditReport, Finding, TableResult

EXPECTS = ("zero", "unchanged", "finite")
#: a key names a token table when one of its parts contains "embed" or is one of these.
_TOKEN_PARTS = ("wte", "shared", "emb", "tok_embeddings", "word_emb")
#: ... and none of its parts names positions, segments or the output head.
_NOT_TOKENS = ("position", "pos_emb", "wpe", "token_type", "segment", "relative", "norm", "_out")


def audit_checkpoint(
    path_or_state: str | os.PathLike[str] | Mapping[str, Any],
    *,
    expect: str | Iterable[str] | None = None,
    pad_idx: int | Mapping[str, int] | None = None,
    keys: str | Iterable[str] | None = None,
    baseline: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    atol: float = 0.0,
    allow: str | Iterable[str] = (),
) -> AuditReport:
    """Check the pad row of every embedding table in saved weights; never raise for a leak.

    Return the same :class:`AuditReport` as a model audit (``kind="checkpoint"``): one
    table per checked key, one finding per failed expectation, ``allow=`` as for audits.

    ``expect``: ``"zero"`` (every pad row is zero within ``atol``), ``"unchanged"`` (every
    pad row equals the ``baseline`` checkpoint's), ``"finite"`` (no nan/inf), or several;
    a non-finite pad row is always a finding. Default: ``"unchanged"`` with a ``baseline``;
    else ``"zero"``, or ``"finite"`` for Keras files (Keras initialises the pad row
    randomly and ``mask_zero`` keeps it out of training). ``pad_idx``: the pad id (an int,
    or a mapping of key to id); default ``pad_token_id`` of a ``config.json`` beside the
    file, or 0 for a ``.keras`` model whose embedding has ``mask_zero=True``. ``keys``: the
    tables to check (default: 2-D keys naming a token embedding, e.g. ``*embed*``, ``wte``).
    """
    framework = _framework(path_or_state)
    wanted = _expect(expect, baseline is not None, framework)
    if not isinstance(atol, numbers.Real) or isinstance(atol, bool) or not atol >= 0:
        raise PadAuditError(f"atol={atol!r} is not valid: pass a float >= 0")
    allowed = _allow(allow)
    source, rows, shapes = load(path_or_state)
    chosen = _select(shapes, keys, source)
    base_name, base_rows, base_shapes = load(baseline) if baseline is not None else (None, {}, {})
    pads = _pads(pad_idx, path_or_state, chosen, shapes)
    options = {
        "expect": list(wanted),
        "pad_idx": pad_idx if not isinstance(pad_idx, Mapping) else dict(pad_idx),
        "keys": chosen,
        "baseline": base_name,
        "atol": float(atol),
        "allow": list(allowed),
    }
    report = AuditReport(
        framework=framework,
        model=source,
        options=options,
        seed=None,
        reproduce=_reproduce(path_or_state, source, expect, pad_idx, keys, base_name, atol, allow),
        batch={},
        batch_text="",
        kind="checkpoint",
    )
    for key in chosen:
        pad = pads[key]
        row = rows[key](pad).astype(np.float64)
        finite = bool(np.isfinite(row).all())
        table = TableResult(key, "x".join(map(str, shapes[key])), pad, shapes[key][0])
        table.pad_norm = float(np.linalg.norm(row)) if finite else float("nan")
        change = None
        base = base_shapes.get(key)
        if key in base_rows and base[1:] == shapes[key][1:] and pad < base[0]:
            change = float(np.abs(row - base_rows[key](pad).astype(np.float64)).max(initial=0.0))
            table.update = change
        elif base_name is not None:
            report.notes.append(f"{key}: not comparable with the baseline (missing or reshaped)")
        report.tables.append(table)
        _judge(report, table, row, change, wanted, float(atol), framework)
    note = checkpoint_words(framework).finite_note
    if note and wanted == ("finite",):
        report.notes.append(note)
    for finding in report.findings:
        finding.allowed = finding.cause in allowed
    return report


def _allow(allow: str | Iterable[str]) -> tuple[str, ...]:
    from .options import _VALIDATORS

    return _VALIDATORS["allow"]((allow,) if isinstance(allow, str) else allow)


def _framework(source: object) -> str:
    """Name the framework whose words the findings use: keras, flax, torch or numpy."""
    if isinstance(source, (str, os.PathLike)):
        name = str(source).lower()
        if name.endswith(".msgpack"):
            return "flax"
        return "keras" if name.endswith((".keras", ".h5", ".hdf5")) else "torch"
    if isinstance(source, Mapping):
        flat = flatten(source)
        if any(hasattr(v, "detach") for v in flat.values()):
            return "torch"
        return "numpy"
    return "torch"


def _reproduce(
    source: object,
    name: str,
    expect: object,
    pad_idx: object,
    keys: object,
    baseline: str | None,
    atol: float,
    allow: object,
) -> str:
    parts = [repr(name) if isinstance(source, (str, os.PathLike)) else "state_dict"]
    given = {"expect": expect, "pad_idx": pad_idx, "keys": keys, "baseline": baseline}
    parts += [f"{k}={v!r}" for k, v in given.items() if v is not None]
    if allow:
        parts.append(f"allow={allow!r}")
    if atol:
        parts.append(f"atol={atol!r}")
    return f"audit_checkpoint({', '.join(parts)})"


def _expect(
    expect: str | Iterable[str] | None, has_baseline: bool, framework: str
) -> tuple[str, ...]:
    if expect is None:
        if has_baseline:
            return ("unchanged",)
        return checkpoint_words(framework).default_expect
    items = (expect,) if isinstance(expect, str) else tuple(expect)
    if not items or any(e not in EXPECTS for e in items):
        raise PadAuditError(
            f"expect={expect!r} is not valid: pass 'zero', 'unchanged', 'finite' or a tuple "
            "of them, e.g. ('zero', 'unchanged')"
        )
    if "unchanged" in items and not has_baseline:
        raise PadAuditError(
            "expect='unchanged' needs a checkpoint to compare with: pass baseline= the "
            "earlier checkpoint (path or state dict)"
        )
    return tuple(dict.fromkeys(items))


def _judge(
    report: AuditReport,
    t: TableResult,
    row: np.ndarray,
    change: float | None,
    expect: tuple[str, ...],
    atol: float,
    framework: str,
) -> None:
    """Add a finding for each expectation the pad row of ``t`` fails, in ``framework``'s words."""
    where = f"shape [{t.kind.replace('x', ', ')}]"
    words = checkpoint_words(framework)
    zero = words.zero_fix.format(key=t.layer, pad=t.pad_idx)
    if not np.isfinite(row).all():
        report.findings.append(
            Finding(
                "finite",
                t.layer,
                t.pad_idx,
                float("nan"),
                "nonfinite",
                f"the pad row holds nan/inf ({where})",
                "training diverged at the pad positions (a division by a zero pad count, "
                "log(0) at pad positions) or the row was overwritten",
                f"audit the training model (audit(model)) to find where nan/inf enters; {zero}",
            )
        )
        return
    peak = float(np.abs(row).max(initial=0.0))
    if "zero" in expect and peak > atol:
        why, fix = words.nonzero_why, words.nonzero_fix.format(zero=zero)
        report.findings.append(
            Finding(
                "zero",
                t.layer,
                t.pad_idx,
                float(t.pad_norm or 0.0),
                "pad_row_nonzero",
                f"the pad row is not zero: norm {t.pad_norm:.3g}, max|x| {peak:.3g} "
                f"(atol {atol:g}; {where})",
                why,
                fix,
            )
        )
    if "unchanged" in expect and change is not None and not change <= atol:
        why, fix = words.changed_why, words.changed_fix
        t.update_cause = "pad_row_changed"
        report.findings.append(
            Finding(
                "unchanged",
                t.layer,
                t.pad_idx,
                change,
                "pad_row_changed",
                f"the pad row changed against {report.options['baseline']}: max|Δ| = "
                f"{change:.3g} (atol {atol:g}; {where})",
                why,
                fix,
            )
        )


# -- selection ------------------------------------------------------------------------
def is_token_table(key: str) -> bool:
    """Say whether ``key`` looks like a token embedding (not positions, not a head)."""
    parts = re.split(r"[./]", key.lower())
    if any(bad in part for part in parts for bad in _NOT_TOKENS):
        return False
    return any("embed" in part or part in _TOKEN_PARTS for part in parts)


def _select(
    shapes: Mapping[str, tuple[int, ...]], keys: str | Iterable[str] | None, source: str
) -> list[str]:
    matrices = [k for k, s in shapes.items() if len(s) == 2]
    if keys is not None:
        chosen = [keys] if isinstance(keys, str) else list(keys)
        missing = [k for k in chosen if k not in shapes]
        if missing:
            raise PadAuditError(
                f"{source} has no key {', '.join(map(repr, missing))}: pass keys= from its "
                f"2-D tensors: {', '.join(matrices[:12]) or 'none'}"
            )
        return chosen
    chosen = [k for k in matrices if is_token_table(k)]
    if not chosen:
        raise PadAuditError(
            f"{source} holds no tensor named like a token embedding (*embed*, wte, shared): "
            f"pass keys= from its 2-D tensors: {', '.join(matrices[:12]) or 'none'}"
        )
    return chosen


def _pads(
    pad_idx: int | Mapping[str, int] | None,
    source: object,
    keys: list[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, int]:
    if pad_idx is None:
        pad_idx = _default_pad(source)
    if pad_idx is None:
        raise PadAuditError(
            "no pad id is known for this checkpoint (no config.json with pad_token_id beside "
            "it): pass pad_idx= the id your tokenizer pads with"
        )
    pads = dict(pad_idx) if isinstance(pad_idx, Mapping) else dict.fromkeys(keys, pad_idx)
    for key in keys:
        pad = pads.get(key)
        if isinstance(pad, bool) or not isinstance(pad, int):
            raise PadAuditError(f"pad_idx for {key} is {pad!r}: pass an int (or a key -> int map)")
        if not 0 <= pad < shapes[key][0]:
            raise PadAuditError(
                f"pad id {pad} is out of range for {key}, which has {shapes[key][0]} rows: "
                f"pass pad_idx= between 0 and {shapes[key][0] - 1}"
            )
    return pads


def _default_pad(source: object) -> int | None:
    """Return pad_token_id from config.json beside the file, or 0 for mask_zero Keras."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    if path.suffix.lower() == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                text = archive.read("config.json").decode()
        except (KeyError, OSError, zipfile.BadZipFile):
            return None
        return 0 if re.search(r'"mask_zero"\s*:\s*true', text) else None
    config = path.with_name("config.json")
    try:
        pad = json.loads(config.read_text()).get("pad_token_id")
    except (OSError, ValueError, AttributeError):
        return None
    return pad if isinstance(pad, int) and not isinstance(pad, bool) else None
