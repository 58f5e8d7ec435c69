"""Bad input to a Keras audit: one clear PadAuditError that says what to pass instead."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")

from keras import layers

from pytest_padaudit import PadAuditError, audit

from support.keras_zoo import MaskedDense, functional, seed_model

pytestmark = pytest.mark.filterwarnings("ignore:.*does not support masking")


def test_model_with_a_fixed_seq_len_says_which():
    model = functional(lambda x: layers.Dense(1)(layers.Flatten()(x)), seq_len=10)
    with pytest.raises(PadAuditError, match=r"exactly 10 tokens.*pass seq_len=10"):
        audit(model)
    assert audit(model, seq_len=10, checks=("grad",)).tables[0].grad > 0


def test_embedding_without_mask_zero_or_pad_idx():
    model = functional(lambda x: MaskedDense(1)(x), mask_zero=False)
    with pytest.raises(PadAuditError, match=r"Pass pad_idx=.*mask_zero=True in Keras"):
        audit(model)


def test_unbuilt_model_asks_to_be_built():
    model = keras.Sequential([layers.Embedding(50, 8, mask_zero=True), layers.Dense(1)])
    with pytest.raises(PadAuditError, match=r"not built yet.*call the model once"):
        audit(model)


def test_model_without_an_embedding():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(1)])
    with pytest.raises(PadAuditError, match="holds no embedding table"):
        audit(model)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (42, "optimizer=42 is not usable"),
        (lambda: 3, "optimizer= returned int"),
        ("no-such-optimizer", "could not build the optimizer"),
    ],
)
def test_bad_optimizer(spec, match):
    with pytest.raises(PadAuditError, match=match):
        audit(seed_model(), optimizer=spec)


def test_model_that_rejects_the_ids_gets_a_forward_hint():
    class TwoInputs(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = layers.Embedding(50, 8, mask_zero=True)

        def call(self, inputs):
            ids, scale = inputs
            return self.embed(ids) * scale

    model = TwoInputs()
    model((tf.ones((1, 2), tf.int32), tf.ones((1, 2, 1))))
    expected = r"(?s)raised ValueError on the synthetic.*unpack"
    with pytest.raises(PadAuditError, match=expected) as info:
        audit(model)
    assert "forward=lambda model, batch:" in str(info.value) and "seq_len" not in str(info.value)
    report = audit(model, forward=lambda m, b: m((b.ids, tf.ones((*b.ids.shape, 1)))))
    assert report.tables[0].grad > 0


def test_loss_that_is_not_a_scalar():
    with pytest.raises(PadAuditError, match="returns a scalar tensor"):
        audit(seed_model(), loss=lambda output, batch: output)


def test_frozen_model():
    model = seed_model()
    model.trainable = False
    with pytest.raises(PadAuditError, match="no trainable variables"):
        audit(model)


@pytest.mark.skipif(find_spec("torch") is None, reason="needs torch for Keras' torch backend")
def test_keras_on_a_backend_without_gradients_is_refused(tmp_path):
    script = textwrap.dedent(
        """
        import keras
        from pytest_padaudit import PadAuditError, audit
        model = keras.Sequential([keras.Input((None,), dtype="int32"),
                                  keras.layers.Embedding(50, 8, mask_zero=True)])
        try:
            audit(model)
        except PadAuditError as exc:
            print("PadAuditError:", exc)
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "numpy", "KERAS_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "PadAuditError:" in done.stdout
    assert "on the 'numpy' backend, which computes no gradients" in done.stdout
    assert "set KERAS_BACKEND to one of tensorflow, jax, torch" in done.stdout
