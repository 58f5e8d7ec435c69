"""Flax: the lookups recorded in the train pass give the plain way's report, value for value.

See tests/torch_tests/test_lookups_ahead.py: ``ahead=False`` runs the quiet lookups pass
first; the default classifies the tables from the ids its first train pass recorded, so it
runs one forward fewer, or starts again the plain way when its guess was wrong.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import pytest

pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")

from flax import nnx

from pytest_padaudit.core.engine import adapt, run_audit
from pytest_padaudit.core.options import AuditOptions

from flax_zoo import DIM, OUT, PAD, VOCAB, ZOO, TiedHead


class WithPositions(nnx.Module):
    """Token and position tables; with pad_idx=0 both get pad id 0, one is a token table."""

    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.tokens = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.positions = nnx.Embed(128, DIM, rngs=rngs)
        self.head = nnx.Linear(DIM, OUT, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        where = jnp.zeros_like(ids) + jnp.arange(ids.shape[1], dtype=ids.dtype)
        return jnp.mean(self.head(self.tokens(ids) + self.positions(where)), axis=1)


class Dropping(nnx.Module):
    """Embed -> Dropout -> Linear -> mean: the train pass draws from the model's Rngs."""

    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.head = nnx.Linear(DIM, OUT, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.mean(self.head(self.drop(self.embed(ids))), axis=1)


CASES: dict[str, tuple[Any, dict[str, Any], bool]] = {  # name: (model, options, guess holds)
    "masked_mean": (ZOO["masked_mean"], {}, True),
    "unmasked_mean-two-steps": (ZOO["unmasked_mean"], {"steps": 2}, True),
    "attention_masked": (ZOO["attention_masked"], {}, True),
    "rnn_seq_lengths": (ZOO["rnn_seq_lengths"], {}, True),
    "dropout-adam": (Dropping, {"optimizer": optax.adam(1e-2)}, True),
    "tied-head": (TiedHead, {}, True),
    "positions-pad-given": (WithPositions, {}, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_report_is_the_plain_ways_value_for_value(name: str) -> None:
    build, options, holds = CASES[name]
    modes: list[bool] = []

    def forward(model: Any, batch: Any) -> Any:
        modes.append(batch.training)
        return model(batch.ids)

    opts = AuditOptions.from_kwargs(pad_idx=PAD, forward=forward, **options)
    handle = adapt(build(), opts)
    plain = run_audit(handle, opts, ahead=False).to_dict()
    plain_modes = list(modes)
    modes.clear()
    ahead = run_audit(handle, opts).to_dict()
    assert ahead == plain
    assert plain_modes[0] is False  # the plain way's quiet lookups pass
    if holds:  # the same passes without the lookups pass
        assert modes == plain_modes[1:]
        assert handle.recorded_lookups() is not None
    else:  # one train pass per step spent on the guess, then the plain way
        steps = options.get("steps", 1)
        assert modes[:steps] == [True] * steps and modes[steps:] == plain_modes
        assert any(t["skipped"] for t in plain["tables"])


@pytest.mark.parametrize("jit", [True, False], ids=["jitted", "eager"])
def test_only_the_first_train_pass_on_a_batch_records_its_lookups(
    monkeypatch: pytest.MonkeyPatch, jit: bool
) -> None:
    """Later steps look up the same ids: they run without recording; the ids match the
    plain lookups pass on the same batch. Jitted (no forward=) and eager passes alike."""
    import numpy as np

    from pytest_padaudit.adapters.flax import jitted, passes

    made: list[str] = []
    for module, name in ((passes, "distinct"), (jitted, "ids_of")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _n=name: made.append(_n) or _r(*a))
    forward = None if jit else (lambda model, batch: model(batch.ids))
    opts = AuditOptions.from_kwargs(
        pad_idx=PAD, steps=3, checks=("grad", "update"), forward=forward
    )
    handle = adapt(ZOO["unmasked_mean"](), opts)
    assert not run_audit(handle, opts).passed
    assert made == ["ids_of" if jit else "distinct"]  # three train passes, one record
    seen, batch = handle.recorded_lookups(), handle._seen_of
    assert seen is not None and batch is not None
    plain = handle.lookups(batch)
    assert seen.keys() == plain.keys()
    for path, ids in plain.items():
        np.testing.assert_array_equal(seen[path], ids)
    made.clear()
    run_audit(handle, opts)  # a new batch: recorded again, once
    assert len(made) == 1 and handle._seen_of is not batch
