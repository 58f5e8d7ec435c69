"""Invariance on PyTorch and transformers, each verdict checked against plain torch.

The ground truth never runs padaudit: it pads a batch by hand, lays seeded weights on the
outputs at real positions (the test knows each output's sequence axes), backpropagates and
compares every parameter's gradient with and without extra pad columns, or with and
without noise in place of the vectors the embedding emits at pad positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
from torch import nn

from pytest_padaudit import audit

from support.tiny_hf import tiny_bert_config

INV = ("invariance",)
VOCAB, T, EXTRA = 50, 16, 8  # the audit's defaults: seq_len 16, extra_pad seq_len // 2
#: runs a model on (ids, mask); returns each output with its sequence axes
Run = Callable[[nn.Module, torch.Tensor, torch.Tensor], Sequence[tuple[torch.Tensor, tuple]]]


# -- ground truth (plain torch) ----------------------------------------------------------
def padded(extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return right-padded ids (pad 0) and their mask: lengths 16, 5, 9, 11 plus ``extra``."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([T, 5, 9, 11])
    mask = torch.arange(T + extra)[None, :] < lengths[:, None]
    ids = torch.randint(1, VOCAB, (4, T), generator=g)
    ids = torch.cat([ids, torch.zeros(4, extra, dtype=ids.dtype)], 1)
    return torch.where(mask, ids, 0), mask


def weighted(outputs: Sequence[tuple[torch.Tensor, tuple]], mask: torch.Tensor) -> torch.Tensor:
    """Sum each output times seeded weights laid at real positions along its sequence axes."""
    total = torch.zeros(())
    for k, (out, axes) in enumerate(outputs):
        base = [T if i in axes else n for i, n in enumerate(out.shape)]
        w = torch.zeros(out.shape)
        g = torch.Generator().manual_seed(100 + k)
        w[tuple(slice(0, T) if i in axes else slice(None) for i in range(out.dim()))] = (
            torch.rand(base, generator=g) + 0.5
        )
        for s in axes:
            at = [1] * out.dim()
            at[0], at[s] = mask.shape
            w = w * mask.reshape(at)
        total = total + (out.float() * w).sum()
    return total


def pooled(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> list:
    return [(model(ids), ())]


def grads(model: nn.Module, run: Run, extra: int = 0, noise: bool = False) -> dict:
    """Every parameter's gradient (token tables without their pad row 0)."""
    ids, mask = padded(extra)
    model.zero_grad()
    g = torch.Generator().manual_seed(7)

    def perturb(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        pad = (args[0] == 0).unsqueeze(-1)
        return torch.where(pad, torch.randn(out.shape, generator=g), out)

    tables = [
        m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == VOCAB
    ]
    hooks = [m.register_forward_hook(perturb) for m in tables] if noise else []
    try:
        weighted(run(model, ids, mask), mask).backward()
    finally:
        for h in hooks:
            h.remove()
    rows = {id(m.weight) for m in tables}
    return {
        name: (p.grad[1:] if id(p) in rows else p.grad).clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def rel(a: dict, b: dict) -> float:
    scale = max(float(v.abs().max()) for v in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def truth_wider(model: nn.Module, run: Run = pooled, train: bool = False) -> float:
    """Relative change of the gradients when 8 pad columns are appended.

    ``train``: batch norm uses batch statistics, as in training (models without dropout).
    """
    model.train(train)
    return rel(grads(model, run), grads(model, run, extra=EXTRA))


def truth_noise(model: nn.Module, run: Run = pooled) -> float:
    """Relative change of the gradients when the pad vectors are replaced with noise."""
    model.eval()
    return rel(grads(model, run), grads(model, run, noise=True))


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def invariance(report):
    found = [f for f in report.findings if f.check == "invariance"]
    assert len(found) == 1, report.findings
    return found[0]


# -- models --------------------------------------------------------------------------------
class MeanPool(nn.Module):
    """Mean over the sequence (masked or not), then an optional LayerNorm and a head."""

    def __init__(
        self, dim: int = 8, masked: bool = False, padding_idx: int | None = 0, norm: bool = False
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=padding_idx)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.head = nn.Linear(dim, 2)
        self.masked = masked

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.masked:
            keep = (ids != 0).unsqueeze(-1).float()
            return self.head(self.norm((x * keep).sum(1) / keep.sum(1)))
        return self.head(self.norm(x.mean(1)))


class FlatHead(nn.Module):
    """A head over the flattened sequence: it takes exactly 16 tokens."""

    def __init__(self, masked: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.head = nn.Linear(T * 8, 2)
        self.masked = masked

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.masked:
            x = x * (ids != 0).unsqueeze(-1)
        return self.head(x.flatten(1))


class Conv(nn.Module):
    """BatchNorm1d over (batch, channels, seq): its statistics include the pads."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.norm = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids).transpose(1, 2)).transpose(1, 2))


# -- item 3: every check measures the model as the user handed it over -----------------------
class BigSGD(torch.optim.SGD):
    """Not one of torch's element-wise classes: the audit steps the whole table with it."""

    def __init__(self, params: object) -> None:
        super().__init__(params, lr=100.0)


@pytest.mark.parametrize("optimizer", [lambda p: torch.optim.SGD(p, lr=100.0), BigSGD])
def test_invariance_is_the_same_alone_and_after_the_update_step(optimizer):
    model = MeanPool(padding_idx=None, norm=True)  # the pad row trains, and the step moves it
    truth = truth_wider(model)
    assert truth > 1e-2  # plain torch: the unmasked mean leaks
    before = state(model)
    alone = audit(model, pad_idx=0, checks=INV, optimizer=optimizer)
    full = audit(model, pad_idx=0, optimizer=optimizer, steps=2)
    assert {f.check for f in full.findings} == {"grad", "update", "invariance"}
    assert full.invariance.value == pytest.approx(alone.invariance.value, rel=1e-6)
    assert alone.invariance.value > 1e-2 and invariance(alone).cause == "invariance"
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- item 4: fixed-width models are measured with noise at the pad vectors ---------------------
def test_fixed_width_masked_head_is_measured_and_clean():
    model = FlatHead(masked=True)
    assert truth_noise(model) < 1e-6  # plain torch: noise at the pads changes nothing
    for checks in (INV, ("grad", "update", "invariance")):
        report = audit(model, checks=checks)
        assert report.passed, report.failure_message()
        assert report.invariance.value is not None and report.invariance.value < 1e-5
        assert not report.invariance.skipped
        assert any("seeded noise" in n and "(4, 24)" in n for n in report.notes)


def test_fixed_width_leaky_head_is_caught_with_invariance_alone():
    model = FlatHead(masked=False)
    assert truth_noise(model) > 1e-2  # plain torch: the flattened pads reach the head
    report = audit(model, checks=INV)
    found = invariance(report)
    assert not report.passed and found.cause == "invariance" and found.value > 1e-2
    assert "replacing the vectors at pad positions with noise" in found.message
    assert report.invariance.first_module == "(model)"  # flatten(1) is in FlatHead.forward


def test_a_model_that_fails_wider_for_another_reason_is_measured_and_quoted():
    class Picky(MeanPool):
        def forward(self, ids):
            if ids.shape[1] > T:
                raise RuntimeError("kv cache holds 16 positions")
            return super().forward(ids)

    leaky, clean = Picky(), Picky(masked=True)
    assert truth_noise(leaky) > 1e-2 and truth_noise(clean) < 1e-6
    report = audit(leaky, checks=INV)
    assert not report.passed and invariance(report).cause == "invariance"
    assert any("kv cache holds 16 positions" in n for n in report.notes)
    report = audit(clean, checks=INV)
    assert report.passed and report.invariance.value < 1e-5
    assert any("kv cache holds 16 positions" in n for n in report.notes)


def test_a_check_that_cannot_run_is_not_checked_never_a_pass():
    class Functional(nn.Module):  # fixed width, and the table is read without its module
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 8, padding_idx=0)
            self.head = nn.Linear(T * 8, 2)

        def forward(self, ids):
            x = nn.functional.embedding(ids, self.embed.weight, padding_idx=0)
            return self.head(x.flatten(1))

    report = audit(Functional(), checks=INV)
    found = invariance(report)
    assert not report.passed and found.cause == "not_checked" and report.invariance.skipped
    assert "seq_len=16" not in found.why + found.fix + found.message
    assert "(4, 24)" in found.why and "could not be replaced" in found.why
    assert audit(Functional(), checks=INV, allow=("not_checked",)).passed


def test_an_output_that_grows_by_more_than_the_pad_columns_is_measured_with_noise():
    class Flat(nn.Module):  # returns the masked, flattened sequence: (batch, seq * 8)
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(VOCAB, 8, padding_idx=0)
            self.scale = nn.Parameter(torch.ones(8))

        def forward(self, ids):
            return (self.embed(ids) * self.scale * (ids != 0).unsqueeze(-1)).flatten(1)

    model = Flat()
    assert truth_noise(model) < 1e-6  # plain torch: noise at the pads is masked away
    report = audit(model, checks=INV)
    assert report.passed, report.failure_message()
    assert report.invariance.value == 0.0
    assert any("other than by 8 positions" in n for n in report.notes)


# -- item 5: outputs that are not per-token ----------------------------------------------------
def bert(hidden: int, **config: object) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.BertModel(
        tiny_bert_config(VOCAB, hidden, intermediate_size=32, attn_implementation="eager", **config)
    )


def bert_outputs(masked: bool) -> Run:
    def run(model, ids, mask):
        out = model(
            input_ids=ids,
            attention_mask=mask.long() if masked else None,
            output_attentions=True,
            output_hidden_states=True,
        )
        return [
            (out.last_hidden_state, (1,)),
            (out.pooler_output, ()),
            *[(h, (1,)) for h in out.hidden_states],
            *[(a, (2, 3)) for a in out.attentions],
        ]

    return run


def bert_forward(masked: bool) -> Callable:
    def forward(model, batch):
        return model(
            input_ids=batch.ids,
            attention_mask=batch.mask.long() if masked else None,
            output_attentions=True,
            output_hidden_states=True,
        )

    return forward


@pytest.mark.parametrize("hidden", [12, T, T + EXTRA])  # hidden == seq_len, == seq_len + extra
def test_bert_attention_maps_and_hidden_states_are_no_false_alarm(hidden):
    model = bert(hidden)
    assert truth_wider(model, bert_outputs(masked=True)) < 1e-5
    report = audit(model, forward=bert_forward(masked=True), checks=INV)
    assert report.passed, report.failure_message()
    assert report.invariance.value < 1e-5 and report.invariance.outputs < 1e-5


def test_bert_without_its_attention_mask_leaks():
    model = bert(12)
    assert truth_wider(model, bert_outputs(masked=False)) > 5e-4  # rtol is 1e-4
    report = audit(model, forward=bert_forward(masked=False), checks=INV)
    assert not report.passed and invariance(report).cause == "invariance"
    assert report.invariance.value > 5e-4


class Layouts(nn.Module):
    """Outputs in other layouts: (seq, batch, dim), (batch, dim, seq), (batch, seq, seq)."""

    def __init__(self, dim: int, masked: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.proj = nn.Linear(dim, dim)
        self.masked = masked

    def forward(self, ids):
        x = self.proj(self.embed(ids))
        scores = x @ x.transpose(1, 2)
        if self.masked:
            scores = scores.masked_fill((ids == 0)[:, None, :], float("-inf"))
        attn = scores.softmax(-1)
        y = attn @ x
        return y.transpose(0, 1), y.transpose(1, 2), attn


def layouts(model, ids, mask):
    seq_first, channels, attn = model(ids)
    return [(seq_first.transpose(0, 1), (1,)), (channels.transpose(1, 2), (1,)), (attn, (1, 2))]


@pytest.mark.parametrize("dim", [T, T + EXTRA])
def test_outputs_whose_sequence_axes_are_not_the_first_two(dim):
    clean, leaky = Layouts(dim, masked=True), Layouts(dim, masked=False)
    assert truth_wider(clean, layouts) < 1e-5 and truth_wider(leaky, layouts) > 1e-2
    report = audit(clean, checks=INV)
    assert report.passed, report.failure_message()
    assert report.invariance.outputs < 1e-5
    assert not audit(leaky, checks=INV).passed


def test_nonfinite_values_are_their_own_finding_not_a_leak():
    class LogProbs(nn.Module):  # log of a masked softmax: -inf at the pad positions
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 8, padding_idx=0)
            self.score = nn.Linear(8, 1)

        def forward(self, ids):
            s = self.score(self.embed(ids)).squeeze(-1).masked_fill(ids == 0, float("-inf"))
            return s.softmax(-1).log()

    ids, _ = padded()
    assert not torch.isfinite(LogProbs()(ids)).all()  # plain torch: -inf at the pads
    report = audit(LogProbs(), checks=INV)
    found = invariance(report)
    assert not report.passed and found.cause == "nonfinite"
    assert "nan/inf" in found.message


# -- issue 15: localisation when a hidden size equals seq_len ----------------------------------
@pytest.mark.parametrize("dim", [T, T + EXTRA])
def test_unmasked_mean_is_localised_to_the_models_forward(dim):
    model = MeanPool(dim)
    assert truth_wider(model) > 1e-2
    report = audit(model, checks=INV)
    found = invariance(report)
    assert report.invariance.first_module == "(model)" and found.layer == "(model)"
    assert "in the forward of MeanPool, before norm" in found.why  # norm: Identity


@pytest.mark.parametrize("dim", [T, T + EXTRA])
def test_batchnorm_over_pads_names_the_norm(dim):
    model = Conv(dim)
    assert truth_wider(model, train=True) > 1e-2
    report = audit(model, checks=INV)
    found = invariance(report)
    assert report.invariance.first_module == "norm" and found.layer == "norm"
    assert "batch statistics" in found.why


@pytest.mark.parametrize(("dim", "passes"), [(8, 2), (T, 3), (T + EXTRA, 2)])
def test_two_passes_in_the_common_case_one_more_when_the_guess_was_wrong(dim, passes, monkeypatch):
    from pytest_padaudit.adapters.torch.handle import TorchHandle

    calls = []
    original = TorchHandle.invariance_pass

    def counted(self, batch, plan, tables, perturb=None):
        calls.append(batch.shape)
        return original(self, batch, plan, tables, perturb)

    monkeypatch.setattr(TorchHandle, "invariance_pass", counted)

    class Pooled(MeanPool):  # (batch, dim) pooled output: dim == seq_len looks per-token
        def forward(self, ids):
            x = self.embed(ids) * (ids != 0).unsqueeze(-1)
            return x.sum(1)

    report = audit(Pooled(dim), checks=INV)
    assert report.passed, report.failure_message()
    assert len(calls) == passes
