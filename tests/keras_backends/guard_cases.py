"""KerasPadGuard in a real ``model.fit`` on whichever backend KERAS_BACKEND names.

Not collected by a plain ``pytest`` run (no ``test_`` prefix): tests/guards/
test_keras_guard.py runs this file once per backend in a subprocess (Keras picks its
backend at import). Each case checks the pad row with plain Keras, never with padaudit, and
appends a verdict record to the file PADAUDIT_VERDICTS names.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from keras_backend_runs import record
from pytest_padaudit import PadLeakError
from pytest_padaudit.guards import KerasPadGuard, PadLeakWarning

VOCAB, DIM = 50, 8


def model(optimizer: keras.optimizers.Optimizer) -> keras.Model:
    """mask_zero=True, then a mask-honouring mean: pad positions give row 0 no gradient."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, DIM, mask_zero=True, name="tok")(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(3)(x)
    built = keras.Model(ids, out)
    built.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(True))
    return built


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = np.zeros((16, 8), np.int32)
    for i in range(16):
        length = 3 + i % 5
        ids[i, :length] = rng.integers(1, VOCAB, length)
    return ids, (np.arange(16) % 3).astype(np.int32)


def row0(built: keras.Model) -> np.ndarray:
    return keras.ops.convert_to_numpy(built.get_layer("tok").embeddings)[0].copy()


def fit(built: keras.Model, callbacks=()) -> None:
    ids, labels = data()
    built.fit(ids, labels, batch_size=4, epochs=1, verbose=0, callbacks=list(callbacks))


def done(case: str, **entry) -> None:
    record({"case": case, "backend": keras.backend.backend(), "passed": True, **entry})


def test_adamw_moves_row_0_and_the_guard_raises() -> None:
    plain = model(keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0.1))
    before = row0(plain)
    assert np.any(before)  # Keras initialises row 0 randomly
    fit(plain)
    truth = float(np.max(np.abs(row0(plain) - before)))
    assert truth > 0  # plain Keras: weight decay moved row 0

    guarded = model(keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0.1))
    with pytest.raises(PadLeakError) as err:
        fit(guarded, [KerasPadGuard(every_n_batches=2)])
    message = str(err.value)
    assert "the pad row of tok (pad id 0) changed" in message
    assert "optimizer step 2 " in message
    assert "(weight_decay)" in message and "AdamW(weight_decay=0.1)" in message
    assert "exclude_from_weight_decay(var_list=[model.get_layer('tok').embeddings])" in message
    done("adamw", truth=truth)


def test_adam_with_a_masking_model_leaves_row_0_and_the_guard_passes() -> None:
    plain = model(keras.optimizers.Adam(learning_rate=1e-2))
    before = row0(plain)
    fit(plain)
    assert np.array_equal(row0(plain), before)  # plain Keras: row 0 did not move

    guarded = model(keras.optimizers.Adam(learning_rate=1e-2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PadLeakWarning)
        fit(guarded, [KerasPadGuard(every_n_batches=1)])
    assert np.array_equal(row0(guarded), before)
    done("adam", truth=0.0)


def test_excluding_the_table_from_weight_decay_is_the_fix() -> None:
    optimizer = keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0.1)
    built = model(optimizer)
    optimizer.exclude_from_weight_decay(var_list=[built.get_layer("tok").embeddings])
    before = row0(built)
    fit(built, [KerasPadGuard()])
    assert np.array_equal(row0(built), before)
    done("adamw_excluded", truth=0.0)


def test_on_leak_warn_trains_on() -> None:
    built = model(keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0.1))
    with pytest.warns(PadLeakWarning, match="pad row of tok"):
        fit(built, [KerasPadGuard(on_leak="warn")])
    assert int(keras.ops.convert_to_numpy(built.optimizer.iterations)) == 4
    done("warn", truth=1.0)


def test_a_table_without_mask_zero_is_a_lookup_leak() -> None:
    keras.utils.set_random_seed(0)
    ids = keras.Input((8,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, DIM, name="tok")(ids)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    built = keras.Model(ids, out)
    built.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(True))
    with pytest.raises(PadLeakError) as err:
        fit(built, [KerasPadGuard(pad_idx=0)])
    message = str(err.value)
    assert "(lookup)" in message and "tok has no mask_zero" in message
    assert "(weight_decay)" not in message
    done("lookup", truth=1.0)
