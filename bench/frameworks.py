"""The benchmark's models and the bare training work each framework's audit is compared with."""

from __future__ import annotations

import importlib.util
import resource
from collections.abc import Callable
from typing import Any

BATCH, SEQ, DIM = 32, 128, 64


def peak_rss() -> int:
    """Return this process's peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Bench:
    """One framework: its models, a bare forward+backward, a bare train step."""

    name = "?"
    module = "?"

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def models(self) -> list[tuple[str, Any]]:
        """Return (name, model): pool 1M, pool 10k, and a Transformer encoder."""
        return [
            ("pool 1M", self.pool(1_000_000)),
            ("pool 10k", self.pool(10_000)),
            ("encoder 4x256", self.encoder()),
        ]

    def audit_options(self, model: Any) -> dict[str, Any]:
        return {}

    def peak_rss_extra(self) -> str:
        """Return 'extra_bytes table_bytes': audit peak over bare-train-step peak."""
        model = self.pool(1_000_000)
        step = self.train_step(model)
        step(), step()
        bare = peak_rss()
        from pytest_padaudit import audit

        audit(model, batch_size=BATCH, seq_len=SEQ, **self.audit_options(model))
        return f"{peak_rss() - bare} {1_000_000 * DIM * 4}"

    def pool(self, vocab: int) -> Any:
        raise NotImplementedError

    def encoder(self) -> Any:
        raise NotImplementedError

    def forward_backward(self, model: Any) -> Callable[[], None]:
        raise NotImplementedError

    def train_step(self, model: Any) -> Callable[[], None]:
        raise NotImplementedError


def bare_ids(vocab: int) -> Any:
    """A 32 x 128 batch of ids with about a fifth pads (id 0), as NumPy."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, size=(BATCH, SEQ))
    lengths = rng.integers(int(SEQ * 0.6), SEQ + 1, size=BATCH)
    ids[np.arange(SEQ)[None, :] >= lengths[:, None]] = 0
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

    def encoder(self) -> Any:
        from torch import nn

        class Encoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(10_000, 256, padding_idx=0)
                layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
                self.head = nn.Linear(256, 4)

            def forward(self, ids: Any) -> Any:
                pad = ids == 0
                x = self.encoder(self.embed(ids), src_key_padding_mask=pad)
                keep = (~pad).unsqueeze(-1).float()
                return self.head((x * keep).sum(1) / keep.sum(1).clamp(min=1))

        return Encoder()

    def forward_backward(self, model: Any) -> Callable[[], None]:
        import torch

        ids = torch.from_numpy(bare_ids(model.embed.num_embeddings))

        def run() -> None:
            model.zero_grad(set_to_none=True)
            model(ids).sum().backward()

        return run

    def train_step(self, model: Any) -> Callable[[], None]:
        import torch

        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        forward_backward = self.forward_backward(model)

        def run() -> None:
            forward_backward()
            optimizer.step()

        return run


FRAMEWORKS: dict[str, Callable[[], Bench]] = {"torch": TorchBench}
