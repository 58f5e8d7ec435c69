"""DDP and FSDP2 models audited inside a running process group (gloo, 2 CPU processes).

Each rank computes the plain-torch ground truth on an unwrapped copy of the same model,
wraps the model, audits it, and writes both; the test asserts that every rank reached the
same verdict and that it matches the ground truth.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from torch import nn

WORLD = 2
VOCAB, DIM = 30, 8


class Pooled(nn.Module):
    """Embed, pool over the sequence (masked or not), project."""

    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.masked = masked
        self.emb = nn.Embedding(VOCAB, DIM, padding_idx=0 if masked else None)
        self.out = nn.Linear(DIM, 4)

    def forward(self, ids):
        x = self.emb(ids)
        if self.masked:
            mask = (ids != 0).unsqueeze(-1).to(x.dtype)
            x = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            x = x.mean(1)
        return self.out(x)


def build(masked: bool) -> Pooled:
    torch.manual_seed(0)
    return Pooled(masked)


def ground_truth(model: Pooled) -> dict:
    """Pad-row gradient (all outputs weighted) and invariance (pad columns appended)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (4, 10), generator=g)
    lengths = torch.tensor([10, 7, 5, 3])
    ids = ids.masked_fill(torch.arange(10)[None] >= lengths[:, None], 0)
    weights = torch.randn(4, 4, generator=g)
    model.zero_grad()
    (model(ids) * weights).sum().backward()
    grad = float(model.emb.weight.grad[0].abs().max())
    grads, outs = [], []
    for extra in (0, 4):
        model.zero_grad()
        wide = torch.cat([ids, torch.zeros(4, extra, dtype=ids.dtype)], 1)
        out = model(wide)
        (out * weights).sum().backward()
        g_emb = model.emb.weight.grad.clone()
        g_emb[0] = 0
        grads.append([g_emb, model.out.weight.grad.clone()])
        outs.append(out.detach())
    moved = float((outs[0] - outs[1]).abs().max()) + sum(
        float((a - b).abs().max()) for a, b in zip(*grads, strict=True)
    )
    model.zero_grad()
    return {"grad_leak": grad > 0, "invariance_leak": moved > 1e-5}


def worker(rank: int, port: int, wrap: str, masked: bool, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from pytest_padaudit import audit
        from pytest_padaudit.adapters.torch.dist import FSDPHandle
        from pytest_padaudit.adapters.torch.handle import TorchHandle

        passes: list[str] = []  # which passes the audit ran, in order
        counted_methods = [(TorchHandle, "lookups"), (FSDPHandle, "lookups")]
        for cls, name in [*counted_methods, (TorchHandle, "train_pass")]:
            method = cls.__dict__[name]

            def counted(self, *args, _method=method, _name=name, **kwargs):
                passes.append(_name)
                return _method(self, *args, **kwargs)

            setattr(cls, name, counted)
        truth = ground_truth(build(masked))
        model = build(masked)
        if wrap == "ddp":
            wrapped = nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            wrapped = fully_shard(model)
            assert type(model.emb.weight).__name__ == "DTensor"
            local = model.emb.weight.to_local()
            assert local.shape[0] == VOCAB // WORLD  # no rank holds the whole table
        start = time.perf_counter()
        report = audit(wrapped, pad_idx=0)
        seconds = time.perf_counter() - start
        table = next(t for t in report.tables if t.layer.endswith("emb"))
        result = {
            "rank": rank,
            "truth": truth,
            "model": report.model,
            "passed": report.passed,
            "findings": sorted((f.check, f.layer, f.cause) for f in report.findings),
            "grad": table.grad,
            "update": table.update,
            "seconds": seconds,
            "passes": passes,
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(result, fh)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(wrap: str, masked: bool, tmp_path, timeout: float = 240.0) -> list[dict]:
    import torch.multiprocessing as mp

    context = mp.start_processes(
        worker,
        args=(free_port(), wrap, masked, str(tmp_path)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"{wrap}: the {WORLD} ranks did not finish within {timeout:.0f}s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
@pytest.mark.parametrize("masked", [True, False], ids=["masked", "leaky"])
def test_wrapped_model_same_verdict_on_every_rank(wrap, masked, tmp_path):
    ranks = run_ranks(wrap, masked, tmp_path)
    first = ranks[0]
    for other in ranks[1:]:  # every rank: the same verdict, findings and measured values
        for key in ("truth", "model", "passed", "findings", "grad", "update"):
            assert other[key] == first[key], (key, first, other)
    truth = first["truth"]
    checks = {check for check, _, _ in first["findings"]}
    assert ("grad" in checks) == truth["grad_leak"] == (not masked)
    assert ("invariance" in checks) == truth["invariance_leak"] == (not masked)
    assert first["passed"] == masked
    assert first["model"].startswith("DistributedDataParallel" if wrap == "ddp" else "FSDP2")
    # one train pass, which also records the lookups: no quiet lookups pass, no re-run (FSDP2
    # too, where the ids still reach the table's own weight)
    expected = ["train_pass"]
    assert first["passes"] == expected, first["passes"]
    assert ("update" in checks) == (not masked)  # SGD on a row with gradient moves it
    if not masked:
        assert first["grad"] > 0 and first["update"] > 0
    else:
        assert first["grad"] == 0.0 and first["update"] == 0.0
