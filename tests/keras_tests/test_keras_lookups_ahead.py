"""Keras: the lookups recorded in the train pass give the plain way's report, value for value.

See tests/torch_tests/test_lookups_ahead.py: ``ahead=False`` runs the quiet lookups pass
first; the default classifies the tables from the ids its first train pass recorded.
"""

from __future__ import annotations

import keras
import pytest
from keras import layers, ops

from pytest_padaudit.core.engine import adapt, run_audit
from pytest_padaudit.core.options import AuditOptions

from support.keras_zoo import VOCAB, MaskedDense, TiedLM, built, seed_model


class WithPositions(keras.Model):
    """Token and position tables; with pad_idx=0 both get pad id 0, one is a token table."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = layers.Embedding(VOCAB, 8, name="tokens")
        self.positions = layers.Embedding(VOCAB // 2, 8, name="positions")
        self.head = layers.Dense(2, name="head")

    def call(self, ids: object) -> object:
        where = ops.zeros_like(ids) + ops.arange(ops.shape(ids)[1], dtype=ids.dtype)
        return self.head(self.tokens(ids) + self.positions(where))


def dropping() -> keras.Model:
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = layers.Embedding(VOCAB, 8, mask_zero=True, name="tok")(ids)
    return keras.Model(ids, MaskedDense(1, name="dense")(layers.Dropout(0.3)(x)))


CASES = {  # name: (model factory, options, the guess holds)
    "seed-masked": (seed_model, {}, True),
    "seed-unmasked": (lambda: seed_model(masked=False), {"steps": 2}, True),
    "dropout": (dropping, {"optimizer": keras.optimizers.Adam}, True),
    "tied-lm": (lambda: built(TiedLM()), {}, True),
    "positions-pad-given": (lambda: built(WithPositions()), {"pad_idx": 0}, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_report_is_the_plain_ways_value_for_value(name):
    build, options, holds = CASES[name]
    keras.utils.set_random_seed(0)
    model = build()
    modes: list[bool] = []

    def forward(m: keras.Model, batch: object) -> object:
        modes.append(batch.training)
        return m(batch.ids, training=batch.training)

    opts = AuditOptions.from_kwargs(forward=forward, **options)
    handle = adapt(model, opts)
    plain = run_audit(handle, opts, ahead=False).to_dict()
    plain_modes = list(modes)
    modes.clear()
    ahead = run_audit(handle, opts).to_dict()
    assert ahead == plain
    assert plain_modes[0] is False  # the plain way's quiet lookups pass
    if holds:
        assert modes == plain_modes[1:]  # the same passes without the lookups pass
    else:
        assert modes[0] is True and modes[options.get("steps", 1) :] == plain_modes


def test_only_the_first_train_pass_on_a_batch_records_its_lookups(monkeypatch):
    """Later steps look up the same ids: they run without the id recorder."""
    from pytest_padaudit.adapters.keras import passes

    made: list[object] = []

    class Counted(passes.SeenIds):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(passes, "SeenIds", Counted)
    counts = []
    for steps in (1, 3):
        keras.utils.set_random_seed(0)
        opts = AuditOptions.from_kwargs(steps=steps, pad_idx=0)
        handle = adapt(seed_model(masked=False), opts)
        made.clear()
        assert not run_audit(handle, opts).passed
        assert handle.recorded_lookups() is not None  # complete on this backend
        counts.append(len(made))
    assert counts[0] >= 1 and counts[1] == counts[0]
