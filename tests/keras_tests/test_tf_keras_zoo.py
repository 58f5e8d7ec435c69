"""tf_keras (Keras 2): the Keras zoo's verdicts against plain TensorFlow, fixes in tf's idiom.

Ground truth never runs padaudit: the audit's batch is rebuilt from its report, a seeded
weighted sum of the outputs is backpropagated with ``tf.GradientTape``, the pad row is read
from the densified gradient; invariance appends pad columns and compares every variable's
gradient (the pad row left out).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
tf_keras = pytest.importorskip("tf_keras")

from pytest_padaudit import audit

from support.keras_backend_truth import batch_of
from support.keras_truth import pad_row_grad
from support.tf_keras_zoo import VOCAB, ZOO, seed_model, table

pytestmark = pytest.mark.filterwarnings("ignore:.*does not support masking")
TRAIN = ("grad", "update")


def found(report, check):
    return [f for f in report.findings if f.check == check]


def invariance_truth(model, ids: np.ndarray, mask: np.ndarray, extra: int = 8) -> float:
    """Relative change of every variable's gradient when ``extra`` pad columns are appended."""
    width = ids.shape[1]

    def grads(wide: bool) -> list[np.ndarray]:
        x = np.pad(ids, ((0, 0), (0, extra))) if wide else ids
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            total = tf.zeros(())
            for k, out in enumerate(tf.nest.flatten(model(tf.constant(x), training=False))):
                shape = tuple(out.shape)
                seq = len(shape) >= 2 and shape[1] == x.shape[1]
                base = (shape[0], width, *shape[2:]) if seq else shape
                w = np.random.default_rng(10 + k).random(base).astype(np.float32) + 0.5
                if seq:
                    w = w * mask.reshape(mask.shape + (1,) * (len(shape) - 2))
                    w = np.pad(w, [(0, 0), (0, shape[1] - width)] + [(0, 0)] * (len(shape) - 2))
                total += tf.reduce_sum(tf.cast(out, tf.float32) * w)
        out = []
        for var, g in zip(variables, tape.gradient(total, variables), strict=True):
            dense = np.zeros(var.shape, np.float32) if g is None else tf.convert_to_tensor(g)
            dense = np.asarray(dense)
            out.append(dense[1:] if dense.shape[0] == VOCAB else dense)
        return out

    narrow, wide = grads(False), grads(True)
    scale = max(float(np.abs(g).max()) for g in narrow) or 1.0
    return max(float(np.abs(a - b).max()) for a, b in zip(narrow, wide, strict=True)) / scale


@pytest.mark.parametrize("name", sorted(ZOO))
def test_tf_keras_zoo_grad_and_invariance_verdicts_match_plain_tensorflow(name):
    build, options = ZOO[name]
    model = build()
    before = [w.copy() for w in model.get_weights()]
    report = audit(model, pad_idx=0, **options)
    assert report.framework == "tf_keras"
    ids, mask = batch_of(report)
    masked = mask if options.get("loss") == "masked" else None
    truth = pad_row_grad(lambda: model(ids, training=True), table(model).embeddings, 0, masked)
    assert bool(found(report, "grad")) == (truth > 0), (name, truth, str(report))
    (row,) = [t for t in report.tables if t.layer == "tok"]
    assert (row.grad > 0) == (truth > 0)  # the audit weighs outputs its own way
    if model.inputs and model.inputs[0].shape[1] is not None:  # fixed width: noise, not wider
        assert report.invariance.value is not None
    else:
        inv = invariance_truth(model, ids, mask)
        assert bool(found(report, "invariance")) == (inv > 1e-4), (name, inv, str(report))
    assert all((a == b).all() for a, b in zip(before, model.get_weights(), strict=True))


EXPECTED = {  # the causes plain TF's verdicts above lead to
    "seed_plain_dense": {"grad": "unmasked", "update": "unmasked"},
    "mean_over_time": {"grad": "unmasked", "update": "unmasked", "invariance": "invariance"},
    "flatten": {"grad": "unmasked", "update": "unmasked", "invariance": "invariance"},
    "no_mask_zero": {"grad": "no_padding_idx", "update": "no_padding_idx"},
    "tied_lm_matmul": {"grad": "weight_reuse", "update": "weight_reuse"},
    "max_norm": {"update": "max_norm"},
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_tf_keras_findings_name_the_cause_and_fix_in_tf_idiom(name):
    build, options = ZOO[name]
    report = audit(build(), pad_idx=0, **options)
    assert {f.check: f.cause for f in report.findings} == EXPECTED.get(name, {}), str(report)
    for f in report.findings:
        assert "ops." not in f.fix + f.why and "keras.ops" not in f.fix, f.fix


def test_tf_keras_fix_texts_work_when_pasted():
    build, options = ZOO["max_norm"]
    model = build()
    (update,) = found(audit(model, pad_idx=0, **options), "update")
    zero_row = update.fix.split("zero the pad row once (")[1].rsplit(") or drop", 1)[0]
    assert zero_row == "layer.embeddings[0].assign(tf.zeros(8))"
    layer = table(model)
    exec(zero_row, {"tf": tf, "layer": layer})  # the text as the user pastes it
    assert not layer.embeddings.numpy()[0].any()
    assert audit(model, pad_idx=0, **options).passed  # a zero row stays zero under MaxNorm

    leaky = seed_model(masked=False)
    (grad,) = found(audit(leaky, checks=("grad",)), "grad")
    code = grad.fix.split("apply the mask in the layer: ")[1]
    assert code.startswith("def call(self, inputs, mask=None): inputs * tf.cast(mask,")
    namespace = {"tf": tf}
    exec(code.replace(": inputs", ":\n    return inputs"), namespace)
    x, m = tf.ones((1, 3, 2)), tf.constant([[True, True, False]])
    assert namespace["call"](None, x, m).numpy()[0, :, 0].tolist() == [1.0, 1.0, 0.0]


def test_tf_keras_adamw_decay_fix_is_an_exclusion_tf_keras_accepts():
    model = ZOO["seed_masked"][0]()
    report = audit(model, optimizer="adamw", checks=TRAIN)
    (update,) = found(report, "update")
    assert update.cause == "weight_decay"
    assert "exclude_from_weight_decay(var_names=['embeddings'])" in update.fix
    assert "layer.embeddings[0].assign(tf.zeros(8))" in update.fix

    def excluded():
        opt = tf_keras.optimizers.AdamW(1e-3)
        opt.exclude_from_weight_decay(var_names=["embeddings"])
        return opt

    assert audit(model, optimizer=excluded, checks=TRAIN).passed
