"""Tiny PyTorch models shared by the tests: clean ones and one of each kind of leak."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

VOCAB, DIM = 50, 8


class Tagger(nn.Module):
    """Per-token tagger: embedding then a linear head."""

    def __init__(self, padding_idx: int | None = 0, **kwargs: object) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=padding_idx, **kwargs)
        self.head = nn.Linear(DIM, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


class BagClassifier(nn.Module):
    """EmbeddingBag over each row of ids, then a linear head."""

    def __init__(self, mode: str, padding_idx: int | None = 0) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(VOCAB, DIM, mode=mode, padding_idx=padding_idx)
        self.head = nn.Linear(DIM, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(ids))


class MeanPool(nn.Module):
    """Mean over the sequence, masked or not; optional dropout."""

    def __init__(self, masked: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(DIM, 2)
        self.masked = masked

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.embed(ids))
        if not self.masked:
            return self.head(x.mean(1))
        mask = (ids != 0).unsqueeze(-1).float()
        return self.head((x * mask).sum(1) / mask.sum(1))


class TiedLM(nn.Module):
    """A language model whose output head shares the embedding weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.embed(ids))


class TwoTables(nn.Module):
    """Word and 'shape' tables over the same ids; only the first has padding_idx."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.shapes = nn.Embedding(VOCAB, DIM)
        self.head = nn.Linear(DIM, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.words(ids) + self.shapes(ids))


class Encoder(nn.Module):
    """A Transformer encoder classifier; ``masked`` passes src_key_padding_mask."""

    def __init__(self, masked: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16, padding_idx=0)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)
        self.masked = masked

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.encoder(self.embed(ids), src_key_padding_mask=pad if self.masked else None)
        return self.head(x)


class GRUClassifier(nn.Module):
    """Classify from the GRU's final state; ``packed`` uses pack_padded_sequence."""

    def __init__(self, packed: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.gru = nn.GRU(DIM, DIM, batch_first=True)
        self.head = nn.Linear(DIM, 2)
        self.packed = packed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.packed:
            lengths = (ids != 0).sum(1).cpu()
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(x)
        return self.head(h[-1])
