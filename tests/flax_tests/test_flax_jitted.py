"""The jitted passes (default forward and loss) give the eager passes' reports.

``forward=lambda model, batch: model(batch.ids)`` makes the same audit run eagerly (a
user's callable may have side effects), so each model is audited both ways and every
verdict, table and value must agree (values to float32 rounding). A second audit of the
same structure reuses the compiled passes.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")

from test_flax_lookups_ahead import Dropping, WithPositions

from pytest_padaudit.core.engine import adapt, run_audit
from pytest_padaudit.core.options import AuditOptions

from flax_zoo import PAD, ZOO, Attention, TiedHead
from support.reports import assert_same_report

MODELS: dict[str, Any] = {
    **ZOO,
    "tied_head": TiedHead,
    "dropout": Dropping,
    "positions": WithPositions,
}
SKIP = {"options", "reproduce"}  # these name the forward= the eager run is given


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(
    "extra", [{}, {"steps": 2, "optimizer": optax.adam(1e-2)}], ids=["one", "adam"]
)
def test_jitted_and_eager_passes_give_the_same_report(name: str, extra: dict) -> None:
    from pytest_padaudit.adapters.flax import jitted

    eager = AuditOptions.from_kwargs(
        pad_idx=PAD, forward=lambda model, batch: model(batch.ids), **extra
    )
    fast = AuditOptions.from_kwargs(pad_idx=PAD, **extra)
    slow = run_audit(adapt(MODELS[name](), eager), eager).to_dict()
    before = len(jitted._CACHE)
    quick = run_audit(adapt(MODELS[name](), fast), fast).to_dict()
    assert len(jitted._CACHE) > before or any(e.run for e in jitted._CACHE.values())
    assert not any(e.failed for e in jitted._CACHE.values())  # every zoo model traces
    assert_same_report(slow, quick, skip=SKIP, abs_tol=1e-7)


def test_a_second_audit_of_the_structure_compiles_nothing() -> None:
    from pytest_padaudit.adapters.flax import jitted

    opts = AuditOptions.from_kwargs(pad_idx=PAD)
    first = run_audit(adapt(ZOO["attention_masked"](), opts), opts)
    runs = {k: e.run for k, e in jitted._CACHE.items()}
    assert runs and all(runs.values())
    sizes = {k: e.run._cache_size() for k, e in jitted._CACHE.items() if e.run is not None}
    other = AuditOptions.from_kwargs(pad_idx=PAD, seed=5)
    again = run_audit(adapt(Attention(masked=True, seed=3), other), other)
    assert {k: e.run for k, e in jitted._CACHE.items() if k in runs} == runs
    assert {k: e.run._cache_size() for k, e in jitted._CACHE.items() if k in sizes} == sizes
    assert first.passed == again.passed
