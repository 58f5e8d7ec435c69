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

from pytest_padaudit import PadLeakError
from pytest_padaudit.guards import KerasPadGuard, PadLeakWarning

from support.keras_backend_runs import record

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


def dict_model(steps_per_execution: int = 1) -> keras.Model:
    """keras-hub style inputs: token ids and a padding mask, the mask used in the pooling."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    weights = keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    x = keras.layers.Embedding(VOCAB, DIM, name="tok")(ids) * weights
    pooled = keras.ops.sum(x, axis=1) / keras.ops.sum(weights, axis=1)
    built = keras.Model({"token_ids": ids, "padding_mask": mask}, keras.layers.Dense(3)(pooled))
    built.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(True),
        steps_per_execution=steps_per_execution,
    )
    return built


def dict_data(pad_with: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    ids, labels = data()
    mask = (ids != 0).astype(np.int32)
    return {"token_ids": np.where(mask == 1, ids, pad_with), "padding_mask": mask}, labels


def dict_fit(built: keras.Model, pad_with: int, callbacks=()) -> None:
    x, y = dict_data(pad_with)
    built.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=list(callbacks))


def table(built: keras.Model) -> np.ndarray:
    return keras.ops.convert_to_numpy(built.get_layer("tok").embeddings).copy()


def test_a_first_batch_padded_with_another_id_stops_fit_after_its_first_step() -> None:
    x, _ = dict_data(pad_with=3)
    first = {k: v[:4] for k, v in x.items()}  # shuffle=False: the first batch is rows 0-3
    wrong = int(np.sum((first["padding_mask"] == 0) & (first["token_ids"] != 0)))
    assert wrong > 0  # plain NumPy: pad positions of the first batch hold 3, not 0

    stepped = dict_model()  # plain Keras: the table after one step on the first batch
    stepped.train_on_batch(first, data()[1][:4])
    built = dict_model()
    with pytest.raises(PadLeakError) as err:
        dict_fit(built, 3, [KerasPadGuard(pad_idx=0)])
    message = str(err.value)
    assert "KerasPadGuard: in the first training batch" in message
    assert f"{wrong} pad positions (attention_mask 0) hold id 3, not the model's pad id 0" in (
        message
    )
    assert "keras.utils.pad_sequences(sequences, padding='post'" in message
    assert int(keras.ops.convert_to_numpy(built.optimizer.iterations)) == 1
    np.testing.assert_allclose(table(built), table(stepped), atol=1e-6)  # one step, kept
    assert getattr(built.train_function, "__name__", "") != "first_call"
    done("first_batch_mismatch", truth=float(wrong))


def test_a_well_padded_first_batch_trains_as_without_the_guard() -> None:
    steps = 1 if keras.backend.backend() == "torch" else 2  # torch takes 1 step per call
    plain = dict_model(steps)
    dict_fit(plain, 0)
    guarded = dict_model(steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PadLeakWarning)
        dict_fit(guarded, 0, [KerasPadGuard(pad_idx=0)])
    iterations = int(keras.ops.convert_to_numpy(guarded.optimizer.iterations))
    assert iterations == int(keras.ops.convert_to_numpy(plain.optimizer.iterations)) == 4
    for a, b in zip(plain.weights, guarded.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-6
        )
    assert getattr(guarded.train_function, "__name__", "") != "first_call"
    dict_fit(guarded, 0, [KerasPadGuard(pad_idx=0)])  # a second fit: the guard peeks again
    assert int(keras.ops.convert_to_numpy(guarded.optimizer.iterations)) == 8
    done("first_batch_clean", truth=0.0)
