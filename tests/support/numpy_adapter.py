"""A toy third-party adapter: a NumPy tagger, audited through padaudit's pluggy hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from pytest_padaudit import hookimpl
from pytest_padaudit.core.handle import OptimizerInfo, Table, Trace


class NumpyTagger:
    """Per-token tagger: ``out = W[ids] @ V``; ``masked`` zeroes the pad row's gradient."""

    def __init__(self, vocab: int = 20, dim: int = 4, pad: int = 0, masked: bool = True) -> None:
        rng = np.random.default_rng(0)
        self.W = rng.normal(size=(vocab, dim)).astype(np.float32)
        self.V = rng.normal(size=(dim, 3)).astype(np.float32)
        self.pad, self.masked = pad, masked

    def forward(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = self.W[ids]
        return emb, emb @ self.V

    def grads(self, ids: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        emb, _ = self.forward(ids)
        d_emb = weights @ self.V.T
        d_w = np.zeros_like(self.W)
        np.add.at(d_w, ids, d_emb)
        if self.masked:
            d_w[self.pad] = 0
        return {"W": d_w, "V": np.einsum("btd,bto->do", emb, weights)}


class NumpyHandle:
    framework = "numpy"
    model_class = "NumpyTagger"

    def __init__(self, model: NumpyTagger) -> None:
        self.model = model
        self.grads: dict[str, np.ndarray] = {}

    def tables(self, pad_idx: int | None) -> list[Table]:
        rows, dim = self.model.W.shape
        return [Table("W", rows, dim, "NumpyTable", self.model.pad, True)]

    def default_vocab_size(self) -> int | None:
        return None

    @contextmanager
    def preserve(self, seed: int) -> Iterator[None]:
        saved = (self.model.W.copy(), self.model.V.copy())
        try:
            yield
        finally:
            self.model.W[...], self.model.V[...] = saved

    def read_pad_rows(self, tables: Any) -> dict[str, np.ndarray]:
        return {"W": self.model.W[self.model.pad].copy()}

    def _pass(self, batch: Any, plan: Any) -> np.ndarray:
        _, out = self.model.forward(batch.ids)
        self.grads = self.model.grads(batch.ids, plan.weights(0, out.shape))
        return out

    def train_pass(self, batch: Any, plan: Any, tables: Any) -> dict[str, np.ndarray | None]:
        self._pass(batch, plan)
        return {"W": self.grads["W"][self.model.pad]}

    def make_optimizer(self, tables: Any, spec: Any) -> OptimizerInfo:
        return OptimizerInfo("NumpySGD", float(spec or 0.0), state=float(spec or 0.0))

    def step(self, optimizer: OptimizerInfo) -> None:
        m = self.model
        m.W -= 0.1 * (self.grads["W"] + optimizer.state * m.W)
        m.V -= 0.1 * self.grads["V"]

    def invariance_pass(self, batch: Any, plan: Any, tables: Any) -> tuple[dict, list]:
        out = self._pass(batch, plan)
        rows = batch.real_ids()
        return {"W": self.grads["W"][rows], "V": self.grads["V"]}, [out[batch.mask]]

    def trace(self, batch: Any) -> Trace:
        emb, out = self.model.forward(batch.ids)
        return Trace("NumpyTagger", [("head", [emb[batch.mask]], [out[batch.mask]])])

    def explain(self, cause: str, table: Any, options: Any, info: Any = None) -> tuple:
        if cause == "optimizer":
            return "weight_decay", "NumpySGD decays the pad row", "set weight decay to 0"
        return cause, f"the toy tagger does not mask (event {cause})", "pass masked=True"


class NumpyAdapter:
    """The plugin object: registered with pytest_padaudit.register or an entry point."""

    @hookimpl
    def padaudit_adapt(self, model: object, options: Any) -> NumpyHandle | None:
        return NumpyHandle(model) if isinstance(model, NumpyTagger) else None
