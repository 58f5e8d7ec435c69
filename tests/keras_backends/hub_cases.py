"""keras-hub models on whichever backend KERAS_BACKEND names: audit verdicts vs plain autodiff.

Not collected by a plain ``pytest`` run (no ``test_`` prefix): tests/keras_tests/
test_keras_hub_backends.py runs this file explicitly, once per backend, in a subprocess.
Tiny configs, built offline (no preset, no preprocessor): vocab 100, hidden 32, one layer.
Each model is built after ``keras.utils.set_random_seed(0)``, called once, then ``seeded``
so every backend holds the same weights. The BERT truth is the backend's own autodiff
(tests/support/keras_backend_truth.py) on the dict the backbone takes; the GPT-2 tied split is
compared across backends only (its TF truth: tests/support/zoo_keras_hub.py). When
PADAUDIT_VERDICTS names a file, each test appends its verdict record there as a JSON line.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from typing import Any

import keras
import numpy as np
import pytest

from pytest_padaudit import audit

from support.keras_backend_runs import record
from support.keras_backend_truth import batch_of, close, gradients, snapshot, stepped_change
from support.keras_backend_zoo import seeded

keras_hub = pytest.importorskip("keras_hub")

TRAIN = ("grad", "update")
PAD = 0
SMALL = dict(
    vocabulary_size=100,
    num_layers=1,
    num_heads=2,
    hidden_dim=32,
    intermediate_dim=64,
    max_sequence_length=64,
    dropout=0.0,
)
NOT_TOKEN = "not a token table"


def built(model: keras.Model, segments: bool) -> keras.Model:
    """Call ``model`` once on a (2, 4) batch of ones, then set its weights with ``seeded``."""
    ids = np.ones((2, 4), "int32")
    inputs = {"token_ids": ids, "padding_mask": ids > 0}
    if segments:
        inputs["segment_ids"] = 0 * ids
    model(inputs)
    return seeded(model)


def bert() -> keras.Model:
    keras.utils.set_random_seed(0)
    return built(keras_hub.models.BertBackbone(**SMALL), segments=True)


def gpt2_causal_lm() -> keras.Model:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(**SMALL)
    return built(keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None), False)


def output_order(model: keras.Model, feed: dict[str, Any]) -> list[str]:
    """Return the keys of the model's output dict in the order the model declares them.

    ``model.output`` is the declared structure; a call on torch returns the same dict in
    another order, and the audit weighs the outputs in the declared order on every backend.
    """
    assert set(model(feed, training=False)) == set(model.output)
    return list(model.output)


class Ordered(keras.Model):
    """``model`` with its dict output returned as a list, in the declared order.

    The audit weighs the float outputs in that order (output number i gets stream i);
    ``keras.tree.flatten`` would sort the keys instead.
    """

    def __init__(self, model: keras.Model, order: list[str]) -> None:
        super().__init__()
        self.inner, self.order = model, order

    def call(self, inputs: Any, training: bool = False) -> Any:
        out = self.inner(inputs, training=training)
        return [out[k] for k in self.order]


def table_of(report: Any, name: str) -> Any:
    (found,) = [t for t in report.tables if t.layer.rsplit(".", 1)[-1] == name]
    return found


def pad_row_truth(model: keras.Model, report: Any, masked: bool) -> tuple[float, float, list[str]]:
    """Return (max|g| of the token table's pad row, its SGD(1) step, the output order).

    The loss is the audit's documented one: each float output weighed with its seeded
    stream, in the order the model declares them, zero at pads with ``loss="masked"``.
    """
    ids, mask = batch_of(report)
    seed = int(report.batch["seed"])
    feed = {"token_ids": ids, "padding_mask": mask, "segment_ids": np.zeros_like(ids)}
    order = output_order(model, feed)
    wrapped = Ordered(model, order)
    wrapped(feed)  # built: jax's stateless_call needs it
    variable = model.token_embedding.embeddings
    grads = gradients(wrapped, feed, seed, mask if masked else None)
    (grad,) = [g for v, g in zip(model.trainable_variables, grads, strict=True) if v is variable]
    change = stepped_change(keras.optimizers.SGD(learning_rate=1.0), variable, grad, PAD)
    return float(np.abs(grad[PAD]).max()), change, order


def findings_of(report: Any) -> list[list[Any]]:
    return sorted([f.check, f.layer, f.cause] for f in report.findings)


def run(name: str, model: keras.Model, **options: Any) -> Any:
    """Audit ``model`` (restoring it bitwise is asserted); record an error if it raises."""
    before = snapshot(model)
    try:
        report = audit(model, pad_idx=PAD, checks=TRAIN, **options)
    except Exception as exc:
        record({"case": name, "backend": keras.config.backend(), "error": repr(exc)})
        raise
    after = snapshot(model)
    assert len(after) == len(before)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), name
    return report


@pytest.mark.parametrize("loss", [None, "masked"])
def test_bert_backbone_matches_plain_autodiff(loss: str | None) -> None:
    name = "bert" if loss is None else f"bert_loss_{loss}"
    model = bert()
    report = run(name, model, **({"loss": loss} if loss else {}))
    token = table_of(report, "token_embedding")
    truth_grad, truth_update, order = pad_row_truth(model, report, masked=loss == "masked")
    record(
        {
            "case": name,
            "backend": keras.config.backend(),
            "passed": report.passed,
            "findings": findings_of(report),
            "grad": token.grad,
            "update": token.update,
            "head_grad": token.head_grad,
            "truth_grad": truth_grad,
            "truth_update": truth_update,
            "output_order": order,
            "not_token": sorted(t.layer for t in report.tables if NOT_TOKEN in (t.skipped or "")),
        }
    )
    atol = report.options.get("atol", 0.0)
    leaks = {"grad": truth_grad > atol, "update": truth_update > atol}
    assert report.passed == (not any(leaks.values())), (name, truth_grad, str(report))
    assert close(token.grad, truth_grad), (name, "grad", token.grad, truth_grad, order)
    assert close(token.update, truth_update), (name, "update", token.update, truth_update)
    # pad positions reach the loss only through the unmasked default loss: cause "unmasked"
    expected = sorted([c, "token_embedding", "unmasked"] for c, leak in leaks.items() if leak)
    assert findings_of(report) == expected, (name, str(report))
    for other in ("position_embedding", "segment_embedding"):
        assert NOT_TOKEN in (table_of(report, other).skipped or ""), (other, str(report))


def test_gpt2_causal_lm_tied_head() -> None:
    name = "gpt2_causal_lm_tied"
    model = gpt2_causal_lm()
    report = run(name, model)
    token = table_of(report, "token_embedding")
    record(
        {
            "case": name,
            "backend": keras.config.backend(),
            "passed": report.passed,
            "findings": findings_of(report),
            "grad": token.grad,
            "update": token.update,
            "head_grad": token.head_grad,
            "not_token": sorted(t.layer for t in report.tables if NOT_TOKEN in (t.skipped or "")),
        }
    )
    grads = {f.cause: f.value for f in report.findings if f.check == "grad"}
    assert grads.get("tied", 0.0) > 0 and grads.get("unmasked", 0.0) > 0, str(report)
    assert np.isclose(grads["tied"], token.head_grad) and np.isclose(grads["unmasked"], token.grad)
    assert not report.passed
