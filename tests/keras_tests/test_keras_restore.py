"""An audit leaves a Keras model, its optimizer and every RNG exactly as it found them."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")

from keras import layers
from keras.src.backend.common import global_state

from pytest_padaudit import audit

from support.keras_zoo import functional


class Noisy(layers.Layer):
    """Draw from Keras' and TF's global generators in training, as some models do."""

    def call(self, x, training=None):
        if training:
            noise = keras.random.normal(tf.shape(x)) + tf.random.get_global_generator().normal(
                tf.shape(x)
            )
            x = x + 1e-3 * noise
        return x

    def compute_mask(self, x, mask=None):
        return mask


def trained_model():
    """A leaky model with dropout and batch norm, compiled, after one real Adam step."""
    model = functional(
        lambda x: layers.Dense(1)(layers.BatchNormalization()(layers.Dropout(0.3)(Noisy()(x))))
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    ids = tf.constant(np.random.default_rng(1).integers(0, 50, (4, 6)), tf.int32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(ids, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return model


def state(model):
    """Everything an audit must not change, as NumPy (bitwise comparable)."""
    keras_gen = global_state.get_global_attribute("global_seed_generator")
    return {
        "variables": [np.array(v.numpy()) for v in model.variables],
        "optimizer": [np.array(v.numpy()) for v in model.optimizer.variables],
        "keras_rng": keras_gen.state.numpy().copy(),
        "tf_rng": tf.random.get_global_generator().state.numpy().copy(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "losses": [float(v) for v in model.losses],
        "call_context": global_state.get_global_attribute("current_call_ctx"),
        "shadowed": [layer.name for layer in model._flatten_layers() if "call" in vars(layer)],
    }


def assert_same(before, after):
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, list) and a and isinstance(a[0], np.ndarray):
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), key
        elif isinstance(a, np.ndarray):
            assert a.tobytes() == b.tobytes(), key
        else:
            assert a == b, key


@pytest.fixture
def model():
    keras.utils.set_random_seed(3)
    keras.random.normal((1,))  # make sure the global generators exist
    tf.random.get_global_generator()
    return trained_model()


def test_restore_is_bitwise_after_a_failing_audit(model):
    before = state(model)
    report = audit(model, optimizer=keras.optimizers.AdamW(1e-2), steps=3)
    assert not report.passed  # the audit really trained, stepped and failed
    assert report.tables[0].update > 0
    assert_same(before, state(model))


def test_restore_is_bitwise_after_an_interrupt(model):
    before = state(model)
    calls = []

    def forward(m, batch):
        calls.append(batch.training)
        if calls.count(True) == 3:  # after two SGD steps have moved the weights
            raise KeyboardInterrupt
        return m(batch.ids, training=batch.training)

    with pytest.raises(KeyboardInterrupt):
        audit(model, forward=forward, steps=3)
    assert calls == [True, True, True]  # three train passes (the first records the lookups)
    assert_same(before, state(model))


def test_audits_with_the_same_seed_agree(model):
    first = audit(model, checks=("grad", "update"), seed=5)
    second = audit(model, checks=("grad", "update"), seed=5)
    assert first.tables[0].grad == second.tables[0].grad > 0
    assert first.batch == second.batch


class CountingSGD(keras.optimizers.SGD):
    """Not a built-in element-wise class: the audit must step the real table with it."""

    applied = 0

    def apply_gradients(self, grads_and_vars):
        type(self).applied += 1
        return super().apply_gradients(grads_and_vars)


def test_other_optimizers_step_the_real_table_and_agree(model):
    before = state(model)
    options = {"learning_rate": 0.1, "weight_decay": 0.5}
    proxied = audit(model, optimizer=keras.optimizers.SGD(**options), checks=("update",))
    whole = audit(model, optimizer=lambda: CountingSGD(**options), checks=("update",))
    # one step in the audit, one in each shrink re-run (they step the audit's optimizer)
    assert whole.smallest and whole.smallest["optimizer"] == "CountingSGD"
    assert CountingSGD.applied == 1 + whole.smallest["runs"]
    assert proxied.tables[0].update > 0
    assert whole.tables[0].update == pytest.approx(proxied.tables[0].update, rel=1e-6)
    assert_same(before, state(model))


def test_no_table_sized_copy_unless_the_table_can_move(model, monkeypatch):
    table = model.get_layer("tok").embeddings.shape.num_elements()
    sizes = []
    identity = tf.identity

    def recording(value, *args, **kwargs):
        out = identity(value, *args, **kwargs)
        sizes.append(out.shape.num_elements())
        return out

    monkeypatch.setattr(tf, "identity", recording)
    audit(model, optimizer=keras.optimizers.AdamW(1e-2))
    assert sizes and table not in sizes  # pad rows and the small layers only
    sizes.clear()
    audit(model, optimizer=lambda: CountingSGD(0.1), checks=("update",))
    assert table in sizes  # a non-element-wise optimizer moves every row: saved whole


def test_an_audit_never_sends_the_table_into_copy_on_read(model, monkeypatch):
    """A gather, scatter or slice-assign on a variable makes TensorFlow copy it on every later
    read (about 30 ms for a 1M x 64 table): the audit must not do that to the user's table."""
    from tensorflow.python.ops import gen_array_ops, gen_resource_variable_ops

    variable = model.get_layer("tok").embeddings.value
    prefixes = ("resource_gather", "resource_scatter", "resource_strided_slice_assign")
    touched = []

    def guard(module, name):
        original = getattr(module, name)

        def call(resource, *args, **kwargs):
            if resource is variable.handle:
                touched.append(name)
            return original(resource, *args, **kwargs)

        monkeypatch.setattr(module, name, call)

    for module in (gen_resource_variable_ops, gen_array_ops):
        for name in dir(module):
            if name.startswith(prefixes) and not name.endswith("_eager_fallback"):
                guard(module, name)
    audit(model, optimizer=keras.optimizers.AdamW(1e-2), steps=2)
    audit(model, optimizer=lambda: CountingSGD(0.1), checks=("update",))
    assert touched == []
    tf.gather(variable, [0])  # the guard sees what it must: a gather from the table
    assert touched == ["resource_gather"]
