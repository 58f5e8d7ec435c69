"""LightningPadGuard: a ``lightning.pytorch.Callback`` that watches pad rows in training."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from .torch_rows import PadGrads, TorchGuard, batch_arrays, optimizer_seen, weights
from .watch import OptimizerSeen

_WHERE = "the optimizer configure_optimizers() returns"


class LightningPadGuard(TorchGuard, Callback):
    """Stop a ``lightning.pytorch.Trainer`` run when a pad row changes.

    Records the token tables' pad rows at ``on_train_start`` and compares them after every
    ``every_n_steps`` optimizer steps (``trainer.global_step``) and when training ends. On
    a change: raise :class:`~pytest_padaudit.PadLeakError` naming the table, pad id, step,
    max|Δ| and the likely cause, or, with ``on_leak="warn"``, warn with ``PadLeakWarning``.
    The first batch is checked for pad ids and labels at pad positions when it is a dict
    with ``input_ids``. ``pad_idx=``: the id (or ``{table path: id}``) for tables without
    ``padding_idx``; paths are those of the LightningModule's ``named_modules()``.
    """

    #: where the optimizer comes from, and whether the words speak Hugging Face.
    where, hf = _WHERE, False

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Record the pad rows of the module's token tables."""
        tables = self.watch.start(pl_module)
        self._params = weights(pl_module, tables)
        self._grads = PadGrads(self._params, tables)
        self.watch.last_checked = int(trainer.global_step)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.watch.batch_checked:
            self.watch.check_batch(batch_arrays(batch))

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._grads is not None:
            self._grads.add()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if self.watch.due(step):
            self._check(trainer, step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        if self._grads is not None and step > self.watch.last_checked:
            self._check(trainer, step)

    def _check(self, trainer: Any, step: int) -> None:
        assert self._grads is not None
        seen: dict[str, OptimizerSeen | None] = {}
        for path, weight in self._params.items():
            found = (optimizer_seen(o, weight) for o in trainer.optimizers)
            seen[path] = next((s for s in found if s is not None), None)
        self.watch.check(step, self._grads.take(), seen)
