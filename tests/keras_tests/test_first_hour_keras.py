"""Issue 11, Keras side: the printed reproduce call and the shrunk batch's plain lines run."""

from __future__ import annotations

import os
from itertools import takewhile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")

from pytest_padaudit import audit

from support.keras_zoo import seed_model


def _findings(report) -> list[tuple[str, str, str, float]]:
    return [(f.check, f.layer, f.cause, round(f.value, 6)) for f in report.findings]


def test_the_reproduce_call_names_a_keras_optimizer_that_builds_and_keeps_its_rate():
    model = seed_model(masked=False)
    optimizer = keras.optimizers.Adam(learning_rate=0.05)
    report = audit(model, optimizer=optimizer, checks=("grad", "update"))
    line = report.reproduce
    assert "optimizer=keras.optimizers.Adam(learning_rate=0.05)" in line, line
    assert "keras.src" not in line
    again = eval(line, {"audit": audit, "model": model, "keras": keras})
    assert _findings(again) == _findings(report) and not again.passed
    assert "Adam" in again.findings[-1].message  # the update stepped with Adam again


def test_the_shrunk_batch_reproduces_in_plain_keras():
    model = seed_model(masked=False)
    report = audit(model, checks=("grad",))
    small = report.smallest
    assert small is not None and small["sequences"] == 1 and small["runs"] <= 12
    after = report.failure_message().split("plain keras reproduction:\n")[1].split("\n")
    code = list(takewhile(lambda line: line.startswith("    "), after))  # the indented lines
    printed = []
    exec(
        "\n".join(line.strip() for line in code),
        {"tf": tf, "np": np, "model": model, "print": printed.append},
    )
    assert float(printed[0]) > 0
    # ground truth, plain TensorFlow: the densified pad-row gradient of the shrunk ids
    ids = np.array(small["ids"])
    with tf.GradientTape() as tape:
        out = model(ids)
        loss = tf.reduce_sum(out * tf.random.uniform(tf.shape(out)))
    grad = tape.gradient(loss, model.get_layer("tok").embeddings)
    rows = tf.math.unsorted_segment_sum(grad.values, grad.indices, grad.dense_shape[0])
    assert float(tf.reduce_max(tf.abs(rows[0]))) > 0


def test_the_reproduce_call_keeps_a_tf_keras_optimizers_rate():
    """tf_keras keeps the rate as a NumPy float32 in get_config(): it was dropped once."""
    tf_keras = pytest.importorskip("tf_keras")
    from support.tf_keras_zoo import seed_model as tf_keras_seed_model

    model = tf_keras_seed_model(masked=False)
    optimizer = tf_keras.optimizers.Adam(learning_rate=0.05)
    report = audit(model, optimizer=optimizer, checks=("grad", "update"))
    line = report.reproduce
    assert "optimizer=tf_keras.optimizers.Adam(learning_rate=0.05" in line, line
    again = eval(line, {"audit": audit, "model": model, "tf_keras": tf_keras})
    assert _findings(again) == _findings(report) and not again.passed
