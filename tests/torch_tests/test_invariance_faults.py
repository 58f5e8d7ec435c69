"""A fault on the wider invariance batch is reported, never measured around (issue 22 item 11).

Only a refusal of the batch's shape may switch invariance to noise at the pad vectors; a
model that fails for another reason at the wider width gets ``not_checked``, never a pass.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn

from pytest_padaudit import audit
from pytest_padaudit.core.errors import PadAuditError
from pytest_padaudit.core.invariance import refuses_width

WIDTH = 16  # the audit's default seq_len: the invariance batch is wider


class MaskedMean(nn.Module):
    """A masked mean (invariant in truth) that raises ``error`` on batches wider than 16."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 4, padding_idx=0)
        self.head = nn.Linear(4, 2)
        self.error = error

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > WIDTH:
            raise self.error
        keep = (ids != 0).unsqueeze(-1).float()
        return self.head((self.emb(ids) * keep).sum(1) / keep.sum(1))


def truth_invariant_under_noise() -> bool:
    """Plain torch: noise at the pad vectors leaves every gradient of the masked mean alone."""
    torch.manual_seed(0)
    model = MaskedMean(RuntimeError())
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])

    def grads(noise: bool) -> list[torch.Tensor]:
        emb = model.emb(ids)
        if noise:
            emb = torch.where((ids == 0).unsqueeze(-1), torch.randn_like(emb), emb)
        keep = (ids != 0).unsqueeze(-1).float()
        out = model.head((emb * keep).sum(1) / keep.sum(1)).sum()
        return list(torch.autograd.grad(out, list(model.head.parameters())))

    return all(torch.allclose(a, b) for a, b in zip(grads(False), grads(True), strict=True))


def test_a_memory_fault_on_the_wider_batch_is_not_checked_never_a_pass() -> None:
    model = MaskedMean(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    report = audit(model, checks=("invariance",))
    assert not report.passed
    (finding,) = report.findings
    assert (finding.check, finding.cause) == ("invariance", "not_checked")
    assert "RuntimeError" in finding.why and "out of memory" in finding.why
    assert not any("noise" in note for note in report.notes)


def test_any_other_fault_at_one_width_is_not_checked_too() -> None:
    report = audit(MaskedMean(KeyError("cache slot 17")), checks=("invariance",))
    assert [(f.check, f.cause) for f in report.findings] == [("invariance", "not_checked")]


def test_a_shape_refusal_switches_to_noise_at_the_pad_vectors() -> None:
    assert truth_invariant_under_noise()
    refusal = RuntimeError("The size of tensor a (24) must match the size of tensor b (16)")
    report = audit(MaskedMean(refusal), checks=("invariance",))
    assert report.passed, str(report)
    assert any("seeded noise" in note for note in report.notes)


@pytest.mark.parametrize(
    ("cause", "refuses"),
    [
        (IndexError("index out of range in self"), True),
        (ValueError("Input 0 is incompatible with the layer: expected shape=(None, 16)"), True),
        (MemoryError(), False),
        (RuntimeError("ResourceExhaustedError: OOM when allocating tensor"), False),
        (RuntimeError("boom"), False),
    ],
)
def test_what_counts_as_a_refusal_of_the_width(cause: Exception, refuses: bool) -> None:
    try:
        raise PadAuditError("wrapped") from cause
    except PadAuditError as exc:
        assert refuses_width(exc) is refuses
