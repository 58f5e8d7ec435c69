"""Models wrapped for distributed training: DistributedDataParallel and FSDP2.

The audit runs inside the user's process group, on every rank, with the same seeded batch.

- DDP: tables are found through the wrapper (paths start ``module.``) and every pass runs
  through the wrapper, so its reducer averages the gradients as in training. Parameters are
  replicated and the averaged gradients identical, so every rank measures the same values.
  Tables keep their own ``sparse`` flags (the reducer was built for them).
- FSDP2 (``fully_shard``): parameters are DTensors sharded on dim 0. A pad row is read from
  the local shard that holds it (the other ranks contribute zeros) and summed over ranks
  with one ``all_reduce`` of ``dim`` values: no table is gathered. Invariance compares the
  rows the batch can reach (summed the same way) and the other gradients in full, so every
  rank gets the same numbers and the same verdict.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import numpy as np
import torch
from torch import nn

from ...core.batch import LossPlan, PadBatch
from ...core.errors import PadAuditError
from ...core.handle import OptimizerInfo, Table
from ...core.options import AuditOptions
from .handle import TorchHandle
from .optim import build_optimizer
from .state import to_numpy

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def _dtensor_type() -> type[DTensor] | None:
    module = sys.modules.get("torch.distributed.tensor")
    cls = getattr(module, "DTensor", None)
    return cls if isinstance(cls, type) else None


def is_ddp(model: object) -> TypeGuard[nn.parallel.DistributedDataParallel]:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def is_fsdp2(model: object) -> TypeGuard[nn.Module]:
    """Say whether ``model`` is (or holds) a ``fully_shard``ed module with DTensor weights."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    cls = getattr(fsdp, "FSDPModule", None)
    if not isinstance(model, nn.Module) or not isinstance(cls, type):
        return False
    return any(isinstance(m, cls) for m in model.modules())


def adapt(model: object, options: AuditOptions) -> TorchHandle | None:
    """Return a handle for a DDP- or FSDP2-wrapped module, else None."""
    if is_ddp(model):
        _need_group(model)
        return DDPHandle(model, options)
    if is_fsdp2(model):
        _need_group(model)
        return FSDPHandle(model, options)
    return None


def _need_group(model: object) -> None:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise PadAuditError(
            f"{type(model).__qualname__} is wrapped for distributed training but no process "
            "group is running: call the audit inside the training processes, after "
            "torch.distributed.init_process_group(...), on every rank"
        )


class DDPHandle(TorchHandle):
    """Audit through ``DistributedDataParallel``: its reducer runs on every backward."""

    #: shrink.py re-runs audits on smaller batches; ranks could disagree on which.
    shrinkable = False

    def __init__(self, model: nn.Module, options: AuditOptions) -> None:
        super().__init__(model, options)
        inner = type(model.module).__qualname__
        self.model_class = f"DistributedDataParallel({inner})"

    @contextmanager
    def _preserve(self, seed: int) -> Iterator[None]:
        with super()._preserve(seed):
            for layer, flag in self._sparse:  # the reducer expects the gradients it was built for
                layer.sparse = flag
            yield


class FSDPHandle(TorchHandle):
    """Audit an FSDP2 (``fully_shard``) model by the shard that holds each pad row."""

    #: shrink.py re-runs audits on smaller batches; ranks could disagree on which.
    shrinkable = False

    def __init__(self, model: nn.Module, options: AuditOptions) -> None:
        super().__init__(model, options)
        self.model_class = f"FSDP2({type(model).__qualname__})"

    def _remember(self, found: list[Table]) -> list[Table]:
        super()._remember(found)
        self._tables = list(self._audited)
        self._audited = []  # preserve() saves every local shard whole: no row indexing
        return found

    # -- shards ----------------------------------------------------------------------
    def _local(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Return the local shard of ``tensor`` and the global row its first row is."""
        dtensor = _dtensor_type()
        if dtensor is None or not isinstance(tensor, dtensor):
            return tensor, 0
        from torch.distributed.tensor import Shard

        placements = tensor.placements
        if not any(isinstance(p, Shard) and p.dim == 0 for p in placements):
            return tensor.to_local(), 0
        rows = tensor.shape[0]
        world = tensor.device_mesh.size()
        rank = tensor.device_mesh.get_local_rank()
        per = -(-rows // world)  # torch.chunk: ceil(rows / world) rows per rank
        return tensor.to_local(), min(rank * per, rows)

    def _row(self, tensor: torch.Tensor | None, pad: int, dim: int) -> np.ndarray | None:
        """Return row ``pad`` of a sharded tensor: read where held, summed over ranks."""
        held: torch.Tensor | float  # this rank's flag, then how many ranks hold the row
        held = torch.tensor([0.0])
        row = torch.zeros(dim, dtype=torch.float32)
        if tensor is not None:
            local, offset = self._local(tensor)
            if offset <= pad < offset + local.shape[0]:
                row = local.detach()[pad - offset].to("cpu", torch.float32).clone()
                held[0] = 1.0
        device = self.device
        both = torch.cat([row, held]).to(device)
        torch.distributed.all_reduce(both)
        both = both.cpu()
        held = float(both[-1])  # an unsharded (replicated) tensor is held by every rank
        return None if held == 0.0 else (both[:-1] / held).numpy()

    def _weight(self, t: Table) -> torch.Tensor:
        """The table's sharded parameter as the optimizer holds it (FSDP2 swaps the module's)."""
        return getattr(self, "_stepped", {}).get(t.path, self._layers[t.path].weight)

    def _reshard(self) -> None:
        """Put every FSDP2 module's sharded DTensor parameters back in place."""
        for module in self.model.modules():
            if callable(getattr(module, "reshard", None)) and is_fsdp2(module):
                cast(Any, module).reshard()

    def read_pad_rows(self, tables: Sequence[Table]) -> dict[str, np.ndarray]:
        self._reshard()
        return {  # every row of a weight is held by some rank: never None
            t.path: cast(np.ndarray, self._row(self._weight(t), cast(int, t.pad_idx), t.dim))
            for t in tables
        }

    def _pad_grad(self, table: Table) -> np.ndarray | None:
        return self._row(self._layers[table.path].weight.grad, cast(int, table.pad_idx), table.dim)

    def lookups(self, batch: PadBatch) -> dict[str, np.ndarray]:
        """Record the ids each table's module is called with (FSDP2 swaps the weights)."""
        seen: dict[str, list[np.ndarray]] = {t: [] for t in self._path_of.values()}

        def hook(path: str):
            def record(module: nn.Module, args: Any) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    seen[path].append(np.unique(args[0].detach().cpu().numpy()))

            return record

        hooks = [
            self._layers[path].register_forward_pre_hook(hook(path))
            for path in self._path_of.values()
        ]
        try:
            with self._quiet(), torch.no_grad():
                self._forward(self._tensors(batch))
        finally:
            for h in hooks:
                h.remove()
        return {
            p: np.unique(np.concatenate(v)) if v else np.zeros(0, np.int64) for p, v in seen.items()
        }

    # -- update ----------------------------------------------------------------------
    def make_optimizer(self, tables: Sequence[Table], spec: Any) -> OptimizerInfo:
        self._reshard()
        self._stepped = {t.path: self._layers[t.path].weight for t in tables}
        weights = {id(w): w for w in self._stepped.values()}
        params = [w for w in weights.values() if w.requires_grad]
        if not params:
            return OptimizerInfo("SGD")
        # local shards, saved by preserve(); the tables' own parameters
        optimizer = build_optimizer(cast("list[nn.Parameter]", params), None, spec)
        decay = max(float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups)
        return OptimizerInfo(type(optimizer).__name__, decay, optimizer)

    # -- invariance ------------------------------------------------------------------
    def _invariance_run(
        self, batch: PadBatch, plan: LossPlan, tables: Sequence[Table], perturb: int | None
    ) -> tuple[Iterable[tuple[str, Hashable, Any]], list[torch.Tensor]]:
        if perturb is not None:
            raise PadAuditError(
                f"{self.model_class}: the same-width invariance measurement is not available "
                "for FSDP2 models; let the model take a wider batch (extra_pad=)"
            )
        return super()._invariance_run(batch, plan, tables, None)

    def _table_keys(self, table: Table) -> list[Hashable]:
        return [id(self._layers[table.path].weight)]

    def _to_numpy(self, value: torch.Tensor) -> np.ndarray:
        dtensor = _dtensor_type()
        if dtensor is not None and isinstance(value, dtensor):
            value = value.full_tensor()
        return to_numpy(value)

    def _rows(self, grad: torch.Tensor, table: Table, rows: np.ndarray) -> np.ndarray:
        """Return ``grad[rows]``: each rank fills the rows it holds, summed over ranks."""
        dim = table.dim
        local, offset = self._local(grad)
        out = torch.zeros(len(rows), dim + 1, dtype=torch.float32)
        index = torch.from_numpy(rows)
        mine = (index >= offset) & (index < offset + local.shape[0])
        if bool(mine.any()):
            picked = local.detach().index_select(0, (index[mine] - offset).to(local.device))
            out[mine, :dim] = picked.to("cpu", torch.float32)
            out[mine, dim] = 1.0
        out = out.to(self.device)
        torch.distributed.all_reduce(out)
        out = out.cpu()
        return (out[:, :dim] / out[:, dim:].clamp(min=1.0)).numpy()
