"""Keras side of the real-library zoo: tiny keras-hub backbones and tasks, no preprocessor.

Every model is built offline from constructor arguments (hidden 32, 1 layer, vocab 100,
dropout 0) and its ground truth computed with plain TensorFlow autograd (:func:`truth`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from support.zoo_common import (
    EXTRA,
    RTOL,
    Entry,
    audit_batch,
    cut_real,
    real_weights,
    relative,
    weights,
)

VOCAB, HIDDEN, END = 100, 32, 99
SMALL = dict(
    vocabulary_size=VOCAB, num_layers=1, hidden_dim=HIDDEN, intermediate_dim=64, dropout=0.0
)


def _built(model: Any, segments: bool) -> Any:
    ids = np.ones((2, 4), "int32")
    inputs = {"token_ids": ids, "padding_mask": ids > 0}
    if segments:
        inputs["segment_ids"] = 0 * ids
    model(inputs)
    return model


def _backbone(cls: str, segments: bool = False, **kwargs: Any) -> Any:
    def build(_: Path) -> Any:
        keras.utils.set_random_seed(0)
        return _built(getattr(keras_hub.models, cls)(**kwargs), segments)

    return build


def _task(task: str, backbone: str, segments: bool = False, **kwargs: Any) -> Any:
    def build(_: Path) -> Any:
        keras.utils.set_random_seed(0)
        head = {"num_classes": 2} if "Classifier" in task else {}
        model = getattr(keras_hub.models, task)(
            backbone=getattr(keras_hub.models, backbone)(**kwargs), preprocessor=None, **head
        )
        return _built(model, segments)

    return build


def _inputs(ids: Any, mask: Any, segments: bool, masked: bool = True) -> dict[str, Any]:
    """Return the dict a keras-hub model takes (``masked=False``: a user who forgot it)."""
    mask = tf.cast(mask, tf.bool) if masked else tf.ones(tf.shape(ids), tf.bool)
    inputs = {"token_ids": tf.cast(ids, tf.int32), "padding_mask": mask}
    if segments:
        inputs["segment_ids"] = tf.zeros_like(inputs["token_ids"])
    return inputs


def _call(segments: bool, masked: bool) -> Any:
    def call(model: Any, ids: Any, mask: Any, training: bool) -> Any:
        return model(_inputs(ids, mask, segments, masked), training=training)

    return call


def _forward(segments: bool, masked: bool) -> Any:
    def forward(model: Any, batch: Any) -> Any:
        inputs = _inputs(batch.ids, batch.mask, segments, masked)
        return model(inputs, training=batch.training)

    return forward


def _token(model: Any) -> list[Any]:
    backbone = getattr(model, "backbone", model)
    return [backbone.token_embedding]


def _entry(
    id: str, build: Any, pad: int, source: str, segments: bool = False, masked: bool = True
) -> Entry:
    return Entry(
        id,
        "keras-hub",
        build,
        _call(segments, masked),
        _token,
        pad=pad,
        pad_source=source,
        options={"pad_idx": pad, "forward": _forward(segments, masked)},
        # no preprocessor: nothing in the model says which id pads, so pad_idx= stays
        zero_config={"pad_idx": pad},
        own_forward=not masked,
    )


def entries() -> list[Entry]:
    """Return the keras-hub zoo: four backbones and two tasks, without preprocessors."""
    bert = dict(SMALL, num_heads=2, max_sequence_length=64)
    gemma = dict(SMALL, num_query_heads=2, num_key_value_heads=1, head_dim=16)
    return [
        _entry(
            "kh-bert",
            _backbone("BertBackbone", True, **bert),
            0,
            "tokenizer [PAD] (pad_idx=)",
            True,
        ),
        _entry(
            "kh-bert-no-padding-mask",
            _backbone("BertBackbone", True, **bert),
            0,
            "tokenizer [PAD] (pad_idx=)",
            True,
            masked=False,
        ),
        _entry(
            "kh-roberta",
            _backbone("RobertaBackbone", **bert),
            1,
            "tokenizer <pad> (pad_idx=)",
        ),
        _entry(
            "kh-distilbert",
            _backbone("DistilBertBackbone", **bert),
            0,
            "tokenizer [PAD] (pad_idx=)",
        ),
        _entry(
            "kh-gpt2",
            _backbone("GPT2Backbone", **bert),
            END,
            "tokenizer end token (pad_idx=)",
        ),
        _entry(
            "kh-gemma",
            _backbone("GemmaBackbone", **gemma),
            0,
            "tokenizer <pad> (pad_idx=)",
        ),
        _entry(
            "kh-bert-classifier",
            _task("BertTextClassifier", "BertBackbone", True, **bert),
            0,
            "tokenizer [PAD] (pad_idx=)",
            True,
        ),
        _entry(
            "kh-gpt2-causal-lm-tied",
            _task("GPT2CausalLM", "GPT2Backbone", **bert),
            END,
            "tokenizer end token (pad_idx=)",
        ),
        _entry(
            "kh-gemma-causal-lm-tied",
            _task("GemmaCausalLM", "GemmaBackbone", **gemma),
            0,
            "tokenizer <pad> (pad_idx=)",
        ),
    ]


# -- ground truth --------------------------------------------------------------------------
def floats(output: Any) -> Iterator[tf.Tensor]:
    """Yield the floating-point tensors of a (nested) output, in order."""
    if tf.is_tensor(output):
        if output.dtype.is_floating:
            yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from floats(value)
    elif isinstance(output, (tuple, list)):
        for value in output:
            yield from floats(value)


def embeddings(model: Any) -> dict[str, Any]:
    """Return every keras Embedding layer under ``model`` by layer name, once each."""
    found: dict[str, Any] = {}
    stack = [model]
    while stack:
        layer = stack.pop(0)
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if isinstance(child, keras.layers.Embedding) and child.name not in found:
                found[child.name] = child
            stack.append(child)
    return found


@contextmanager
def recorded(layer: Any, calls: list[tuple[bool, Any, Any]]) -> Iterator[None]:
    """Record (reverse, inputs, outputs) of each call of ``layer`` while the block runs."""
    original = layer.call

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(inputs, *args, **kwargs)
        calls.append((bool(kwargs.get("reverse", args[0] if args else False)), inputs, out))
        return out

    object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        object.__delattr__(layer, "call")


def _grad_truth(entry: Entry, model: Any, layer: Any) -> tuple[float, float, float]:
    """Return the pad row's gradient through the lookups, through a tied head, and in all.

    The lookup part sums the gradient of the lookup's output at pad positions; the head
    part is hidden^T @ d(logits)[..., pad] over the reverse (output projection) calls; the
    total is the table variable's gradient, densified (IndexedSlices summed per row).
    """
    batch = audit_batch(VOCAB, entry.pad)
    calls: list[tuple[bool, Any, Any]] = []
    variable = layer.embeddings
    with tf.GradientTape() as tape, recorded(layer, calls):
        out = list(floats(entry.call(model, batch.ids, batch.mask, True)))
        loss = tf.add_n(
            [
                tf.reduce_sum(tf.cast(t, tf.float32) * weights(i, tuple(t.shape), 1))
                for i, t in enumerate(out)
            ]
        )
    grads = tape.gradient(loss, [variable, *(o for _, _, o in calls)])
    total = tf.convert_to_tensor(grads[0])[entry.pad]
    lookup = tf.zeros_like(total)
    head = tf.zeros_like(total)
    for (reverse, inputs, _), g in zip(calls, grads[1:], strict=True):
        if g is None:
            continue
        if reverse:
            hidden = tf.reshape(tf.cast(inputs, tf.float32), (-1, inputs.shape[-1]))
            head += tf.linalg.matvec(hidden, tf.reshape(g, (-1, g.shape[-1]))[:, entry.pad], True)
        else:
            hit = tf.equal(tf.cast(inputs, tf.int64), entry.pad)
            lookup += tf.reduce_sum(tf.boolean_mask(tf.cast(g, tf.float32), hit), axis=0)
    parts = float(tf.reduce_max(tf.abs(total - lookup - head)))
    peak = float(tf.reduce_max(tf.abs(total)))
    if parts > 1e-4 * max(peak, 1.0):
        raise AssertionError(f"{entry.id}: lookup + head != total pad-row gradient ({parts:g})")
    return float(tf.reduce_max(tf.abs(lookup))), float(tf.reduce_max(tf.abs(head))), peak


def _invariance_truth(entry: Entry, model: Any, layer: Any) -> dict[str, float]:
    """Compare every gradient and the real outputs with and without EXTRA pad columns."""
    variables = model.trainable_variables
    mask = audit_batch(VOCAB, entry.pad).mask
    tapes, runs = [], []
    for extra in (0, EXTRA):
        batch = audit_batch(VOCAB, entry.pad, extra)
        tape = tf.GradientTape(persistent=True)
        with tape:
            runs.append(list(floats(entry.call(model, batch.ids, batch.mask, False))))
        tapes.append(tape)
    short, long = runs
    losses = [tf.zeros(()), tf.zeros(())]
    for i, (a, b) in enumerate(zip(short, long, strict=True)):
        wa, wb = real_weights(i, tuple(a.shape), tuple(b.shape), mask)
        with tapes[0]:
            losses[0] += tf.reduce_sum(tf.cast(a, tf.float32) * wa)
        with tapes[1]:
            losses[1] += tf.reduce_sum(tf.cast(b, tf.float32) * wb)
    ga = tapes[0].gradient(losses[0], variables)
    gb = tapes[1].gradient(losses[1], variables)
    a_list, b_list = [], []
    for var, x, y in zip(variables, ga, gb, strict=True):
        if x is None and y is None:
            continue
        x = tf.zeros_like(var) if x is None else tf.convert_to_tensor(x)
        y = tf.zeros_like(var) if y is None else tf.convert_to_tensor(y)
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        if var is layer.embeddings:  # extra pads only ever look up the pad row
            keep = np.arange(x.shape[0]) != entry.pad
            x, y = x[keep], y[keep]
        a_list.append(x)
        b_list.append(y)
    cuts = [
        cut_real(np.asarray(a, np.float32), np.asarray(b, np.float32), mask)
        for a, b in zip(short, long, strict=True)
    ]
    return {
        "grad_rel": relative(a_list, b_list, each=False),
        "out_rel": relative([c[0] for c in cuts], [c[1] for c in cuts], each=True),
    }


def truth(entry: Entry, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the ground truth per check and the numbers behind it (plain TensorFlow)."""
    (layer,) = entry.token(model)
    found = embeddings(model)
    lookup, head, total = _grad_truth(entry, model, layer)
    inv = _invariance_truth(entry, model, layer)
    leak = max(inv["grad_rel"], inv["out_rel"]) > RTOL
    verdict = {
        "tables": [layer.name],
        "grad": [layer.name] if lookup > 0 else [],
        "tied": [layer.name] if head > 0 else [],
        "invariance": "leak" if leak else "clean",
    }
    numbers = {
        "grads": {layer.name: ("trainable", lookup, head)},
        "total": total,
        "not_token": sorted(set(found) - {layer.name}),
        **inv,
    }
    return verdict, numbers


def name(path: str) -> str:
    """Keras table paths compare by layer name (a task holds its backbone's layers twice)."""
    return path.rsplit(".", 1)[-1]
