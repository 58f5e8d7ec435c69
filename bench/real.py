"""Real-library models for the benchmark: a tiny Hugging Face BERT and a tiny keras-hub BERT.

Both are built offline from a tiny config (hidden 64, 2 layers, vocab 1000, dropout 0) and
compared with the bare work a user's training loop does on the same 32 x 128 padded batch.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from frameworks import SEQ, bare_ids

VOCAB, HIDDEN, LAYERS, HEADS, FFN = 1000, 64, 2, 2, 128
#: room for the invariance check's 1.5x-long batch
POSITIONS = 2 * SEQ


@dataclass
class RealModel:
    """One real-library model: how to build it, audit it, and train it bare."""

    name: str
    module: str
    make: Callable[[], Any]
    forward_backward: Callable[[Any], Callable[[], Any]]
    train_step: Callable[[Any], Callable[[], None]]
    options: dict[str, Any] = field(default_factory=dict)
    #: the most one warm default audit may take, in seconds (None: no target)
    audit_target_s: float | None = None

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.module.split(","))


def hf_bert() -> Any:
    """Return a tiny transformers BertModel (its pad row is config.pad_token_id = 0)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=POSITIONS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return transformers.BertModel(config)


def hf_forward_backward(model: Any) -> Callable[[], None]:
    """Return a bare forward+backward of ``model`` on a padded batch with its attention mask."""
    import torch

    ids = torch.from_numpy(bare_ids(VOCAB))
    mask = (ids != 0).long()
    model.train()

    def run() -> None:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask)
        (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()

    return run


def hf_train_step(model: Any) -> Callable[[], None]:
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    forward_backward = hf_forward_backward(model)

    def run() -> None:
        forward_backward()
        optimizer.step()

    return run


def hub_bert() -> Any:
    """Return a tiny keras-hub BertBackbone (no preprocessor: the audit gets pad_idx=0)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=FFN,
        max_sequence_length=POSITIONS,
        dropout=0.0,
    )


def hub_forward_backward(model: Any) -> Callable[[], Any]:
    """Return a bare tf.GradientTape forward+backward on the dict a keras-hub model takes."""
    import tensorflow as tf

    ids = tf.constant(bare_ids(VOCAB), dtype=tf.int32)
    inputs = {"token_ids": ids, "padding_mask": ids != 0, "segment_ids": tf.zeros_like(ids)}

    def run() -> Any:
        with tf.GradientTape() as tape:
            out = model(inputs, training=True)
            loss = tf.reduce_sum(out["sequence_output"]) + tf.reduce_sum(out["pooled_output"])
        return tape.gradient(loss, model.trainable_variables)

    return run


def hub_train_step(model: Any) -> Callable[[], None]:
    import keras

    optimizer = keras.optimizers.SGD(0.01)
    forward_backward = hub_forward_backward(model)

    def run() -> None:
        grads = forward_backward()
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    return run


MODELS = [
    RealModel(
        "transformers tiny BertModel",
        "torch,transformers",
        hf_bert,
        hf_forward_backward,
        hf_train_step,
    ),
    RealModel(
        "keras-hub tiny BertBackbone",
        "tensorflow,keras_hub",
        hub_bert,
        hub_forward_backward,
        hub_train_step,
        {"pad_idx": 0},
        audit_target_s=0.5,
    ),
]
