"""Find a Flax NNX model's ``nnx.Embed`` tables; instrument their copies during a pass.

NNX has no forward hooks. The audit never runs the user's model object: it runs a private
copy (``nnx.merge`` of the split state), and gives each module it must watch a subclass of
its own class (``instrument``) that records or redirects the call while a
:class:`Recorder` is active. The user's classes and objects are never patched.
"""

from __future__ import annotations

import contextvars
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ...core.errors import PadAuditError
from ...core.handle import ROOT, Table
from ...core.noise import PadNoise
from .noise import noisy


def path_str(path: tuple[Any, ...]) -> str:
    """Return a module path as padaudit names it: ``encoder.layers.0.embed``."""
    return ".".join(str(p) for p in path) or ROOT


@dataclass(frozen=True)
class Site:
    """Where a table lives: its Embed modules and its Param in ``nnx.state(model)``."""

    path: str
    state_path: tuple[Any, ...]
    modules: tuple[str, ...]


def find_tables(
    model: Any, pad_idx: int | Mapping[str, int] | None
) -> tuple[list[Table], dict[str, Site]]:
    """List each ``nnx.Embed`` weight once; resolve its pad id from ``pad_idx=``.

    Embeds sharing one weight are one table (the others are named in its notes); a weight
    also held by a module that is not an Embed is tied to it.
    """
    modules = [(path_str(p), m) for p, m in nnx.iter_modules(model)]
    owners: dict[int, list[str]] = defaultdict(list)
    for path, module in modules:
        for value in vars(module).values():
            if isinstance(value, nnx.Variable):
                owners[id(value)].append(path)
    state_paths = {id(v): p for p, v in nnx.to_flat_state(nnx.state(model))}
    embeds: dict[int, list[tuple[str, Any]]] = {}
    for path, module in modules:
        if isinstance(module, nnx.Embed):
            embeds.setdefault(id(module.embedding), []).append((path, module))
    if isinstance(pad_idx, Mapping):
        known = {path for group in embeds.values() for path, _ in group}
        unknown = sorted(set(pad_idx) - known)
        if unknown:
            raise PadAuditError(
                f"pad_idx= names {', '.join(map(repr, unknown))}, which hold no nnx.Embed of "
                f"{type(model).__qualname__}: pass a mapping over its tables "
                f"({', '.join(sorted(known)) or 'none'}) or one int"
            )
    tables, sites = [], {}
    for var_id, group in embeds.items():
        path, module = group[0]
        var = module.embedding
        rows, dim = int(module.num_embeddings), int(module.features)
        pad = _pad_for(pad_idx, [p for p, _ in group])
        if pad is not None and pad < 0 and pad + rows >= 0:
            pad += rows
        names = {p for p, _ in group}
        tied = tuple(o for o in owners[var_id] if o not in names)
        notes = tuple(f"shared with {p}" for p, _ in group[1:])
        if np.dtype(var.get_value().dtype) != np.float32:
            notes += (f"dtype={np.dtype(var.get_value().dtype)}",)
        tables.append(
            Table(
                path,
                rows,
                dim,
                type(module).__name__,
                pad,
                False,
                isinstance(var, nnx.Param),
                tied,
                notes,
            )
        )
        sites[path] = Site(path, state_paths[var_id], tuple(p for p, _ in group))
    return tables, sites


def _pad_for(pad_idx: int | Mapping[str, int] | None, paths: list[str]) -> int | None:
    if not isinstance(pad_idx, Mapping):
        return pad_idx
    for path in paths:
        if path in pad_idx:
            return int(pad_idx[path])
    return None


@dataclass
class Recorder:
    """What instrumented module copies do during one pass.

    ``probes``: table path -> the array its lookups read (a separate gradient input, so
    the lookups' part of the gradient is computed directly). ``noise``: the pass's
    :class:`PadNoise`: the vectors emitted at pad ids become seeded noise. ``ids``:
    the ids each table was looked up with; ``trace``: (path, inputs, outputs) per module.
    """

    probes: dict[str, Any] = field(default_factory=dict)
    noise: PadNoise | None = None
    record_ids: bool = False
    tracing: bool = False
    ids: dict[str, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    attended: set[str] = field(default_factory=set)
    #: some ids were read inside a transform (a callback reports them, maybe not all).
    traced: bool = False
    #: inside a jitted pass: table path -> the ids looked up, returned as outputs of the
    #: pass (``top``: a tracer of that pass; ids traced deeper are not collected).
    collect: dict[str, list[Any]] | None = None
    top: Any = None
    trace: list[tuple[str, list[np.ndarray], list[np.ndarray]]] = field(default_factory=list)


_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "padaudit_flax_recorder", default=None
)
_CLASSES: dict[tuple[type, str, str], type] = {}


@contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Make ``recorder`` the one instrumented copies report to (this thread only)."""
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def instrument(copy: Any, sites: Mapping[str, Site], trace: bool = False) -> None:
    """Give the Embed modules of ``copy`` (a private merge) classes that report lookups.

    ``trace``: also every other callable module, to record its inputs and outputs.
    """
    table_of = {m: s.path for s in sites.values() for m in s.modules}
    for path, module in nnx.iter_modules(copy):
        name = path_str(path)
        if name in table_of and isinstance(module, nnx.Embed):
            module.__class__ = _subclass(type(module), "embed", table_of[name])
        elif trace and callable(module):
            module.__class__ = _subclass(type(module), "trace", name)


def _subclass(cls: type, role: str, path: str) -> type:
    key = (cls, role, path)
    if key not in _CLASSES:
        call = _embed_call(cls, path) if role == "embed" else _traced_call(cls, path)
        namespace = {
            "__call__": call,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        }
        if role == "embed":
            namespace["attend"] = _attend(cast("type[nnx.Embed]", cls), path)  # an Embed's class
        _CLASSES[key] = type(cls)(cls.__name__, (cls,), namespace)
    return _CLASSES[key]


def _embed_call(cls: type, path: str) -> Any:
    def __call__(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        rec = _ACTIVE.get()
        if rec is None:
            return cls.__call__(self, inputs, *args, **kwargs)
        if rec.record_ids:
            _keep_ids(rec, path, inputs)
        probe = rec.probes.get(path)
        if probe is None:
            out = cls.__call__(self, inputs, *args, **kwargs)
        else:
            var = self.embedding
            saved = var.get_value()
            var.set_value(probe)
            try:
                out = cls.__call__(self, inputs, *args, **kwargs)
            finally:
                if var.get_value() is probe:  # a write by the call itself is kept
                    var.set_value(saved)
        if rec.noise is not None and path in {t.path for t in rec.noise.tables}:
            out = noisy(rec.noise, path, inputs, out)
        return out

    return __call__


def _attend(cls: type[nnx.Embed], path: str) -> Any:
    def attend(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        rec = _ACTIVE.get()
        if rec is not None:
            rec.attended.add(path)
        return cls.attend(self, query, *args, **kwargs)

    return attend


def _keep_ids(rec: Recorder, path: str, inputs: Any) -> None:
    if rec.collect is not None:
        if not isinstance(inputs, jax.core.Tracer):
            rec.collect.setdefault(path, []).append(jnp.asarray(np.asarray(inputs).ravel()))
        elif getattr(inputs, "_trace", None) is getattr(rec.top, "_trace", False):
            rec.collect.setdefault(path, []).append(jnp.ravel(inputs))
        else:  # inside a transform within the jitted pass
            rec.traced = True
        return
    if isinstance(inputs, jax.core.Tracer):  # inside a transform: read it when it runs
        rec.traced = True
        jax.debug.callback(lambda x: rec.ids[path].append(np.asarray(x).ravel()), inputs)
    else:
        rec.ids[path].append(np.asarray(inputs).ravel())


def floats(values: Any) -> list[np.ndarray]:
    """Return the concrete floating-point arrays in ``values`` (tracers are skipped)."""
    from ...core.handle import output_leaves

    leaves = output_leaves(values, lambda x: isinstance(x, (jax.Array, np.ndarray)))
    return [
        np.asarray(x, dtype=np.float32)
        for x in leaves
        if not isinstance(x, jax.core.Tracer) and jnp.issubdtype(x.dtype, jnp.floating)
    ]


def _traced_call(cls: type, path: str) -> Any:
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = cls.__call__(self, *args, **kwargs)
        rec = _ACTIVE.get()
        if rec is not None and rec.tracing:
            rec.trace.append((path, floats(args), floats(out)))
        return out

    return __call__
