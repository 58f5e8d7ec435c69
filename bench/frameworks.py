"""The benchmark's models and the bare training work each framework's audit is compared with."""

from __future__ import annotations

import importlib.util
import os
import resource
from collections.abc import Callable
from typing import Any

BATCH, SEQ, DIM = 32, 128, 64
#: the small encoders' batch (issue 21): 16 x 64
SMALL = (16, 64)


def peak_rss() -> int:
    """Return this process's peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Bench:
    """One framework: its models, a bare forward+backward, a bare train step."""

    name = "?"
    module = "?"

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def models(self) -> list[tuple[str, Callable[[], Any]]]:
        """Return (name, factory): pool 1M, pool 10k, and a Transformer encoder.

        Each comparison gets a fresh model: in TensorFlow a train step's sparse update puts
        the table in copy-on-read mode, which would slow every later read of it.
        """
        return [
            ("pool 1M", lambda: self.pool(1_000_000)),
            ("pool 10k", lambda: self.pool(10_000)),
            ("encoder 4x256", self.encoder),
        ]

    def peak_rss_extra(self) -> str:
        """Return 'extra_bytes table_bytes': audit peak over bare-train-step peak."""
        model = self.pool(1_000_000)
        step = self.train_step(model)
        step(), step()
        bare = peak_rss()
        from pytest_padaudit import audit

        audit(model, batch_size=BATCH, seq_len=SEQ)
        return f"{peak_rss() - bare} {1_000_000 * DIM * 4}"

    def pool(self, vocab: int) -> Any:
        raise NotImplementedError

    def encoder(self, layers: int = 4, dim: int = 256) -> Any:
        raise NotImplementedError

    def small_encoder(self) -> Any:
        """Return the small encoder: 2 layers, d=128 (timed on a 16 x 64 batch)."""
        return self.encoder(layers=2, dim=128)

    def forward_backward(
        self, model: Any, shape: tuple[int, int] = (BATCH, SEQ)
    ) -> Callable[[], None]:
        raise NotImplementedError

    def train_step(self, model: Any, shape: tuple[int, int] = (BATCH, SEQ)) -> Callable[[], None]:
        raise NotImplementedError


def bare_ids(vocab: int, shape: tuple[int, int] = (BATCH, SEQ)) -> Any:
    """A batch of ids (32 x 128 unless told) with about a fifth pads (id 0), as NumPy."""
    import numpy as np

    batch, seq = shape
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, size=(batch, seq))
    lengths = rng.integers(int(seq * 0.6), seq + 1, size=batch)
    ids[np.arange(seq)[None, :] >= lengths[:, None]] = 0
    return ids


class TorchBench(Bench):
    name = "torch"
    module = "torch"

    def __init__(self) -> None:
        import torch

        torch.manual_seed(0)

    def pool(self, vocab: int) -> Any:
        from torch import nn

        class Pool(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(vocab, DIM, padding_idx=0)
                self.head = nn.Linear(DIM, 4)

            def forward(self, ids: Any) -> Any:
                keep = (ids != 0).unsqueeze(-1).float()
                return self.head((self.embed(ids) * keep).sum(1) / keep.sum(1).clamp(min=1))

        return Pool()

    def encoder(self, layers: int = 4, dim: int = 256) -> Any:
        from torch import nn

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(10_000, dim, padding_idx=0)
                layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
                self.head = nn.Linear(dim, 4)

            def forward(self, ids: Any) -> Any:
                pad = ids == 0
                x = self.encoder(self.embed(ids), src_key_padding_mask=pad)
                keep = (~pad).unsqueeze(-1).float()
                return self.head((x * keep).sum(1) / keep.sum(1).clamp(min=1))

        return Encoder()

    def forward_backward(
        self, model: Any, shape: tuple[int, int] = (BATCH, SEQ)
    ) -> Callable[[], None]:
        import torch

        ids = torch.from_numpy(bare_ids(model.embed.num_embeddings, shape))

        def run() -> None:
            model.zero_grad(set_to_none=True)
            model(ids).sum().backward()

        return run

    def train_step(self, model: Any, shape: tuple[int, int] = (BATCH, SEQ)) -> Callable[[], None]:
        import torch

        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        forward_backward = self.forward_backward(model, shape)

        def run() -> None:
            forward_backward()
            optimizer.step()

        return run


FRAMEWORKS: dict[str, Callable[[], Bench]] = {"torch": TorchBench}


class KerasBench(Bench):
    name = "keras"
    module = "tensorflow"

    def __init__(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras

        keras.utils.set_random_seed(0)
        self.keras = keras

    def _classifier(self, vocab: int, dim: int, body: Callable[[Any, Any], Any]) -> Any:
        keras = self.keras
        ids = keras.Input((None,), dtype="int32")
        keep = keras.ops.not_equal(ids, 0)
        x = keras.layers.Embedding(vocab, dim, mask_zero=True, name="embed")(ids)
        x = keras.layers.GlobalAveragePooling1D()(body(x, keep), mask=keep)
        return keras.Model(ids, keras.layers.Dense(4)(x))

    def pool(self, vocab: int) -> Any:
        return self._classifier(vocab, DIM, lambda x, keep: x)

    def encoder(self, layers: int = 4, dim: int = 256) -> Any:
        keras_layers, ops = self.keras.layers, self.keras.ops

        def body(x: Any, keep: Any) -> Any:
            attend = ops.expand_dims(keep, 1)  # (batch, 1, keys): never attend to pad keys
            for _ in range(layers):  # Keras' attention passes no mask on: give each its own
                attention = keras_layers.MultiHeadAttention(4, dim // 4)(
                    x, x, attention_mask=attend
                )
                x = keras_layers.LayerNormalization()(keras_layers.Add()([x, attention]))
                ffn = keras_layers.Dense(dim)(keras_layers.Dense(4 * dim, activation="relu")(x))
                x = keras_layers.LayerNormalization()(keras_layers.Add()([x, ffn]))
            return x

        return self._classifier(10_000, dim, body)

    def forward_backward(
        self, model: Any, shape: tuple[int, int] = (BATCH, SEQ)
    ) -> Callable[[], None]:
        import tensorflow as tf

        ids = tf.constant(bare_ids(model.get_layer("embed").input_dim, shape), dtype=tf.int32)

        def run() -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(ids, training=True))
            return tape.gradient(loss, model.trainable_variables)

        return run

    def train_step(self, model: Any, shape: tuple[int, int] = (BATCH, SEQ)) -> Callable[[], None]:
        optimizer = self.keras.optimizers.SGD(0.01)
        forward_backward = self.forward_backward(model, shape)

        def run() -> None:
            grads = forward_backward()
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        return run


FRAMEWORKS["keras"] = KerasBench
