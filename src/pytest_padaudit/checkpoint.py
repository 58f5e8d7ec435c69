"""Audit saved weights without running the model: is each embedding's pad row zero, unchanged?

Reads PyTorch ``state_dict`` files (``torch.load(weights_only=True)``, never a full
unpickle), ``.safetensors``, Keras ``.weights.h5`` and ``.keras`` archives, or an in-memory
mapping of names to arrays. Frameworks and h5py are imported only for the file that needs
them; only the pad row of each table is read where the format allows it.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PadAuditError, PadLeakError

EXPECTS = ("zero", "unchanged")
#: a key names a token table when one of its parts contains "embed" or is one of these.
_TOKEN_PARTS = ("wte", "shared", "emb", "tok_embeddings", "word_emb")
#: ... and none of its parts names positions, segments or the output head.
_NOT_TOKENS = ("position", "pos_emb", "wpe", "token_type", "segment", "relative", "norm", "_out")

Row = Callable[[int], np.ndarray]


@dataclass
class CheckpointTable:
    """One embedding table of a checkpoint and what its pad row looks like."""

    key: str
    shape: tuple[int, ...]
    pad_idx: int
    norm: float
    zero: bool
    #: max |Δ| of the pad row against the baseline (None: no baseline or no such key).
    change: float | None = None


@dataclass
class CheckpointReport:
    """The outcome of :func:`audit_checkpoint`; ``passed`` is False on any finding."""

    source: str
    baseline: str | None
    expect: tuple[str, ...]
    atol: float
    tables: list[CheckpointTable] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    def raise_if_leaking(self) -> CheckpointReport:
        """Raise :class:`PadLeakError` with the failure message when a check failed."""
        __tracebackhide__ = True
        if not self.passed:
            raise PadLeakError(self.failure_message(), self)  # type: ignore[arg-type]
        return self

    def failure_message(self) -> str:
        """Return every finding with its likely cause and fix."""
        lines = [f"padaudit found {len(self.findings)} problem(s) in checkpoint {self.source}", ""]
        lines += self.findings
        lines += [str(self)]
        return "\n".join(lines)

    def __str__(self) -> str:
        head = ("key", "shape", "pad id", "pad-row norm", "zero", "max|Δ| vs baseline")
        rows = [
            (
                t.key,
                "x".join(map(str, t.shape)),
                str(t.pad_idx),
                f"{t.norm:.3g}",
                "yes" if t.zero else "NO",
                "-" if t.change is None else f"{t.change:.3g}",
            )
            for t in self.tables
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        against = f" against {self.baseline}" if self.baseline else ""
        lines = [
            f"padaudit checkpoint {self.source}{against} (expect {', '.join(self.expect)}): "
            + ("passed" if self.passed else f"{len(self.findings)} finding(s)"),
            "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(line.rstrip() for line in lines)


def audit_checkpoint(
    path_or_state: str | os.PathLike[str] | Mapping[str, Any],
    *,
    expect: str | Iterable[str] | None = None,
    pad_idx: int | Mapping[str, int] | None = None,
    keys: str | Iterable[str] | None = None,
    baseline: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    atol: float = 0.0,
) -> CheckpointReport:
    """Check the pad row of every embedding table in saved weights; never raise for a leak.

    ``expect``: ``"zero"`` (every pad row is zero within ``atol``), ``"unchanged"`` (every
    pad row equals the ``baseline`` checkpoint's), or both; default ``"unchanged"`` when a
    ``baseline`` is given, else ``"zero"``. ``pad_idx``: the pad id (an int, or a mapping
    of key to id); default ``pad_token_id`` of a ``config.json`` beside the file, or 0 for a
    ``.keras`` model whose embedding has ``mask_zero=True``. ``keys``: the tables to check
    (default: 2-D keys naming a token embedding, e.g. ``*embed*``, ``wte``, ``shared``).
    """
    wanted = _expect(expect, baseline is not None)
    if not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0:
        raise PadAuditError(f"atol={atol!r} is not valid: pass a float >= 0")
    source, rows, shapes = load(path_or_state)
    chosen = _select(shapes, keys, source)
    report = CheckpointReport(source, None, wanted, float(atol))
    base_rows: dict[str, Row] = {}
    base_shapes: dict[str, tuple[int, ...]] = {}
    if baseline is not None:
        report.baseline, base_rows, base_shapes = load(baseline)
    pads = _pads(pad_idx, path_or_state, chosen, shapes)
    for key in chosen:
        pad = pads[key]
        row = rows[key](pad).astype(np.float64)
        norm = float(np.linalg.norm(row)) if np.isfinite(row).all() else float("nan")
        table = CheckpointTable(
            key, shapes[key], pad, norm, bool(np.abs(row).max(initial=0.0) <= atol)
        )
        if (
            key in base_rows
            and base_shapes[key][1:] == shapes[key][1:]
            and pad < base_shapes[key][0]
        ):
            table.change = float(
                np.abs(row - base_rows[key](pad).astype(np.float64)).max(initial=0.0)
            )
        elif report.baseline is not None:
            report.notes.append(f"{key}: not comparable with the baseline (missing or reshaped)")
        report.tables.append(table)
        _judge(report, table)
    return report


def _expect(expect: str | Iterable[str] | None, has_baseline: bool) -> tuple[str, ...]:
    if expect is None:
        return ("unchanged",) if has_baseline else ("zero",)
    items = (expect,) if isinstance(expect, str) else tuple(expect)
    if not items or any(e not in EXPECTS for e in items):
        raise PadAuditError(
            f"expect={expect!r} is not valid: pass 'zero', 'unchanged' or ('zero', 'unchanged')"
        )
    if "unchanged" in items and not has_baseline:
        raise PadAuditError(
            "expect='unchanged' needs a checkpoint to compare with: pass baseline= the "
            "earlier checkpoint (path or state dict)"
        )
    return tuple(dict.fromkeys(items))


def _judge(report: CheckpointReport, t: CheckpointTable) -> None:
    where = f"{t.key} (pad id {t.pad_idx}, shape {list(t.shape)})"
    if "zero" in report.expect and not t.zero:
        report.findings.append(
            f"[zero] {where}: the pad row is not zero: norm {t.norm:.3g} (atol {report.atol:g})\n"
            "    cause: the row trained or was initialised non-zero: a table without "
            "padding_idx, tied input/output embeddings, weight decay or max_norm on the "
            "embedding, or an init that overwrote the zero row\n"
            "    fix:   audit the training model with padaudit(model) to find which; zero "
            f"the row before release (state_dict[{t.key!r}][{t.pad_idx}] = 0) when the model "
            "never reads it; expect='unchanged' with baseline= when a non-zero row is by design"
        )
    if "unchanged" in report.expect and t.change is not None and t.change > report.atol:
        report.findings.append(
            f"[unchanged] {where}: the pad row changed against {report.baseline}: "
            f"max|Δ| = {t.change:.3g} (atol {report.atol:g})\n"
            "    cause: training moved the pad row: it received gradient (no padding_idx, "
            "tied LM head) or the optimizer moved it (weight decay, momentum)\n"
            "    fix:   run padaudit(model, optimizer=...) on the training model: its "
            "findings name the layer, the cause and the fix"
        )


# -- loading --------------------------------------------------------------------------
def load(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, dict, dict]:
    """Return (name, key -> row reader, key -> shape) for a checkpoint or a mapping."""
    if isinstance(source, Mapping):
        flat = _flatten(source)
        return "(state dict)", *_readers(flat)
    if not isinstance(source, (str, os.PathLike)):
        raise PadAuditError(
            f"cannot read a checkpoint from a {type(source).__name__}: pass a file path or "
            "a mapping of names to arrays (a state_dict)"
        )
    path = Path(source)
    if not path.is_file():
        raise PadAuditError(f"checkpoint {str(path)!r} does not exist: pass the path of a file")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return str(path), *_safetensors(path)
    if name.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise PadAuditError(f"{path} holds no model.weights.h5: pass a Keras 3 .keras file")
            data = io.BytesIO(archive.read("model.weights.h5"))
        return str(path), *_h5(data)
    if name.endswith((".h5", ".hdf5")):
        return str(path), *_h5(path)
    return str(path), *_readers(_flatten(_torch_load(path)))


def _torch_load(path: Path) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError:
        raise PadAuditError(
            f"reading {path} needs PyTorch: install torch, or save the weights as "
            ".safetensors or .weights.h5"
        ) from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PadAuditError(
            f"torch.load({str(path)!r}, weights_only=True) refused the file ({first}): padaudit "
            "never unpickles arbitrary objects. Save the weights alone: "
            "torch.save(model.state_dict(), path), or save_file() from safetensors"
        ) from None
    if not isinstance(state, Mapping):
        raise PadAuditError(
            f"{path} holds a {type(state).__name__}, not a state_dict: save "
            "model.state_dict(), or pass the mapping of names to tensors"
        )
    return state


def _safetensors(path: Path) -> tuple[dict, dict]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise PadAuditError(f"reading {path} needs safetensors: pip install safetensors") from None
    try:
        import torch  # noqa: F401  (bf16 tensors need it)

        framework = "pt"
    except ImportError:
        framework = "numpy"
    rows, shapes = {}, {}
    with safe_open(str(path), framework=framework) as f:
        for key in f.keys():  # noqa: SIM118  (safe_open is not iterable)
            shapes[key] = tuple(f.get_slice(key).get_shape())

    def reader(key: str) -> Row:
        def row(pad: int) -> np.ndarray:
            with safe_open(str(path), framework=framework) as f:
                return _numpy(f.get_slice(key)[pad])

        return row

    for key in shapes:
        rows[key] = reader(key)
    return rows, shapes


def _h5(source: Path | io.BytesIO) -> tuple[dict, dict]:
    try:
        import h5py
    except ImportError:
        raise PadAuditError("reading Keras weights needs h5py: pip install h5py") from None
    data = source.read_bytes() if isinstance(source, Path) else source.getvalue()
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(data), "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
                arrays[name] = obj[()]

        f.visititems(visit)
    return _readers(arrays)


def _flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings ({"model": {...}}) into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif hasattr(value, "shape"):
            flat[name] = value
    return flat


def _readers(arrays: Mapping[str, Any]) -> tuple[dict, dict]:
    rows = {k: (lambda pad, v=v: _numpy(v[pad])) for k, v in arrays.items()}
    return rows, {k: tuple(int(s) for s in v.shape) for k, v in arrays.items()}


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: bf16 and friends have no NumPy twin
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return np.asarray(value)


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
