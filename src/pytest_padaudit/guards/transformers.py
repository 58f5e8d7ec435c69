"""TrainerPadGuard: a ``transformers.TrainerCallback`` that watches pad rows in training."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .torch_rows import PadGrads, TorchGuard, batch_arrays, optimizer_seen, weights

_WHERE = "Trainer(optimizers=(optimizer, None))"


class TrainerPadGuard(TorchGuard, TrainerCallback):
    """Stop a ``transformers.Trainer`` run when a pad row changes.

    Records the token tables' pad rows at ``on_train_begin`` and compares them after every
    ``every_n_steps`` optimizer steps (and when training ends). On a change: raise
    :class:`~pytest_padaudit.PadLeakError` naming the table, pad id, step, max|Δ| and the
    likely cause, or, with ``on_leak="warn"``, warn with ``PadLeakWarning`` and train on.
    The first batch the model sees is checked for pad ids and labels at pad positions.
    ``pad_idx=``: the id (or ``{table path: id}``) for tables without ``padding_idx``.
    """

    #: where the optimizer comes from, and whether the words speak Hugging Face.
    where, hf = _WHERE, True

    #: the one-shot forward pre-hook that reads the first batch, while it is set.
    _hook: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record the pad rows; hook the model's next forward to see the first batch."""
        model = kwargs["model"]
        tables = self.watch.start(model)
        self._params = weights(model, tables)
        self._grads = PadGrads(self._params, tables)
        self.watch.last_checked = int(state.global_step)
        self._hook = model.register_forward_pre_hook(self._first_batch, with_kwargs=True)

    def _first_batch(self, module: Any, args: tuple, kwargs: dict) -> None:
        self._unhook()
        inputs = dict(kwargs)
        if args and "input_ids" not in inputs:
            inputs["input_ids"] = args[0]
        self.watch.check_batch(batch_arrays(inputs))

    def _unhook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._grads is not None:
            self._grads.add()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = int(state.global_step)
        if self.watch.due(step):
            self._check(step, kwargs.get("optimizer"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._unhook()
        step = int(state.global_step)
        if self._grads is not None and step > self.watch.last_checked:
            self._check(step, kwargs.get("optimizer"))

    def _check(self, step: int, optimizer: Any) -> None:
        assert self._grads is not None
        seen = {p: optimizer_seen(optimizer, w) for p, w in self._params.items()}
        self.watch.check(step, self._grads.take(), seen)
