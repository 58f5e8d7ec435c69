"""Small PyTorch models a user might ship: three that mask padding, one that does not."""

from __future__ import annotations

import torch
from torch import nn

PAD = 0


class Tagger(nn.Module):
    """Per-token tagger (e.g. part-of-speech): embedding, BiGRU, linear head."""

    def __init__(self, vocab: int = 1000, tags: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32, padding_idx=PAD)
        self.rnn = nn.GRU(32, 16, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, tags)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != PAD).sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(ids), lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return self.head(out)


class BagOfWords(nn.Module):
    """Sentence classifier: the mean of an EmbeddingBag, then a linear head."""

    def __init__(self, vocab: int = 1000, classes: int = 3) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, 32, mode="mean", padding_idx=PAD)
        self.head = nn.Linear(32, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(ids))


class Encoder(nn.Module):
    """A one-layer Transformer encoder classifier that passes its key padding mask."""

    def __init__(self, vocab: int = 1000, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32, padding_idx=PAD)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(32, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == PAD
        x = self.encoder(self.embed(ids), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.head((x * keep).sum(1) / keep.sum(1))


class LeakyClassifier(nn.Module):
    """Two classic leaks: no padding_idx, and a mean that counts the pads."""

    def __init__(self, vocab: int = 1000, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.head = nn.Linear(32, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))
