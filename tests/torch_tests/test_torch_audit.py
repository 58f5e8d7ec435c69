"""The PyTorch audit: grad and update checks, causes, tables, loss modes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
from torch import nn

from pytest_padaudit import PadAuditError, PadLeakError, audit

from support.torch_models import DIM, VOCAB, BagClassifier, Tagger, TiedLM, TwoTables

TRAIN = ("grad", "update")


def by_check(report, check):
    return [f for f in report.findings if f.check == check]


def test_clean_tagger_passes_with_zero_pad_gradient():
    report = audit(Tagger(), checks=TRAIN)
    assert report.passed, report.failure_message()
    (table,) = report.tables
    assert (table.layer, table.pad_idx, table.grad, table.update) == ("embed", 0, 0.0, 0.0)
    assert report.raise_if_leaking() is report


def test_missing_padding_idx_leaks_and_says_how_to_fix():
    report = audit(Tagger(padding_idx=None), pad_idx=0, checks=TRAIN)
    assert not report.passed
    grad, update = by_check(report, "grad")[0], by_check(report, "update")[0]
    assert grad.layer == "embed" and grad.pad_idx == 0 and grad.value > 0.1
    assert grad.cause == "no_padding_idx"
    assert f"nn.Embedding({VOCAB}, {DIM}, padding_idx=0)" in grad.fix
    assert update.cause == "no_padding_idx" and "its own non-zero gradient" in update.why
    with pytest.raises(PadLeakError) as err:
        report.raise_if_leaking()
    message = str(err.value)
    for needle in ("[grad] embed (pad id 0)", "max|g| =", "cause:", "fix:", "seed=0"):
        assert needle in message
    assert err.value.report is report


def test_loss_masked_ignores_pad_outputs_of_a_tagger():
    """Without padding_idx the row only learns from pad outputs: a masked loss has none."""
    assert audit(Tagger(padding_idx=None), pad_idx=0, loss="masked", checks=TRAIN).passed


def test_custom_loss_and_forward_receive_the_batch():
    seen = {}

    def forward(model, batch):
        seen["mask"] = batch.mask.clone()
        return model(batch.ids)

    def loss(output, batch):
        seen["lengths"] = batch.lengths.tolist()
        return output[batch.mask].sum()

    report = audit(Tagger(padding_idx=None), pad_idx=0, forward=forward, loss=loss, checks=TRAIN)
    assert report.passed  # the user's loss only reads real positions
    assert seen["mask"].sum().item() == sum(seen["lengths"])


@pytest.mark.parametrize("sparse", [False, True])
def test_sparse_gradients_are_read_without_densifying(sparse, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("the audit densified a sparse gradient")

    monkeypatch.setattr(torch.Tensor, "to_dense", refuse)
    clean = audit(Tagger(sparse=sparse), checks=TRAIN)
    leaky = audit(Tagger(padding_idx=None, sparse=sparse), pad_idx=0, checks=TRAIN)
    assert clean.passed and clean.tables[0].grad == 0.0
    assert not leaky.passed and leaky.tables[0].grad > 0


def test_sparse_and_dense_gradients_agree_on_the_pad_row():
    torch.manual_seed(1)
    dense = Tagger(padding_idx=None)
    sparse = Tagger(padding_idx=None, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    a = audit(dense, pad_idx=0, checks=("grad",)).tables[0].grad
    b = audit(sparse, pad_idx=0, checks=("grad",)).tables[0].grad
    assert a > 0 and b == pytest.approx(a, rel=1e-5)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_modes(mode):
    assert audit(BagClassifier(mode), checks=TRAIN).passed
    leaky = BagClassifier(mode, padding_idx=None)
    with torch.no_grad():  # make the pad row win every max, so max mode routes gradient to it
        leaky.bag.weight[0] = 10.0
    report = audit(leaky, pad_idx=0, checks=TRAIN)
    assert report.tables[0].kind == f"EmbeddingBag(mode={mode})"
    assert by_check(report, "grad")[0].cause == "no_padding_idx"


def test_negative_padding_idx_is_normalised():
    report = audit(Tagger(padding_idx=-1), checks=TRAIN)
    assert report.passed and report.tables[0].pad_idx == VOCAB - 1
    leaky = audit(Tagger(padding_idx=None), pad_idx=-1, checks=TRAIN)
    assert by_check(leaky, "grad")[0].pad_idx == VOCAB - 1


def test_max_norm_renormalising_the_pad_row_in_forward_is_named():
    model = Tagger(max_norm=1.0)
    with torch.no_grad():
        model.embed.weight[0] = 3.0  # a non-zero pad row, norm far above max_norm
    report = audit(model, checks=TRAIN)
    (update,) = by_check(report, "update")
    assert update.cause == "max_norm" and "max_norm=1.0" in update.why
    assert "forward pass" in update.why
    assert report.tables[0].grad == 0.0  # padding_idx still zeroes the gradient
    assert model.embed.weight[0].eq(3.0).all()  # and the audit put the row back


def nonzero_pad_row(model):
    with torch.no_grad():
        model.embed.weight[0] = 0.5
    return model


def test_adamw_weight_decay_moves_a_nonzero_pad_row():
    report = audit(nonzero_pad_row(Tagger()), optimizer=torch.optim.AdamW, checks=TRAIN)
    (update,) = by_check(report, "update")
    assert update.cause == "weight_decay" and "AdamW(weight_decay=0.01)" in update.why
    assert not by_check(report, "grad")
    assert audit(nonzero_pad_row(Tagger()), optimizer=torch.optim.Adam, checks=TRAIN).passed


def test_an_existing_optimizer_is_copied_group_by_group_and_left_alone():
    model = nonzero_pad_row(Tagger())
    user = torch.optim.AdamW(
        [
            {"params": model.embed.parameters(), "weight_decay": 0.0},
            {"params": model.head.parameters()},
        ],
        lr=1e-3,
    )
    model(torch.ones(2, 3, dtype=torch.long)).sum().backward()
    user.step()
    state = {k: {n: v.clone() for n, v in s.items()} for k, s in user.state.items()}
    assert audit(model, optimizer=user, checks=TRAIN).passed  # embeddings excluded from decay
    for key, values in state.items():
        for name, value in values.items():
            assert torch.equal(user.state[key][name], value)
    decaying = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    assert by_check(audit(model, optimizer=decaying, checks=TRAIN), "update")[0].cause == (
        "weight_decay"
    )


def test_optimizer_factory_and_several_steps():
    report = audit(
        nonzero_pad_row(Tagger()),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, weight_decay=0.5),
        steps=3,
        checks=TRAIN,
    )
    (update,) = by_check(report, "update")
    assert "over 3 SGD steps" in update.message
    assert update.value == pytest.approx(0.5 * (1 - (1 - 0.05) ** 3), rel=1e-4)


def test_tied_lm_head_is_named_and_can_be_allowed():
    report = audit(TiedLM(), checks=TRAIN)
    (grad,) = by_check(report, "grad")
    assert grad.cause == "tied" and "lm_head" in grad.why
    assert report.tables[0].tied_with == ["lm_head"]
    allowed = audit(TiedLM(), checks=TRAIN, allow=("tied",))
    assert allowed.passed and all(f.allowed for f in allowed.findings) and allowed.findings


def test_two_tables_are_audited_separately():
    report = audit(TwoTables(), pad_idx=0, checks=TRAIN)
    assert [t.layer for t in report.tables] == ["words", "shapes"]
    assert {f.layer for f in report.findings} == {"shapes"}
    words = audit(TwoTables(), checks=TRAIN)  # no pad_idx=: shapes is not audited
    assert words.passed and words.tables[1].skipped and words.tables[1].grad is None


def test_frozen_table_skips_grad_but_runs_update():
    model = Tagger(padding_idx=None)
    model.embed.weight.requires_grad_(False)
    report = audit(model, pad_idx=0, checks=TRAIN)
    assert report.passed and report.tables[0].update == 0.0
    assert any("frozen" in note for note in report.notes)


def test_nonfinite_gradient_is_a_finding_not_a_crash():
    class LogOfZero(Tagger):
        def forward(self, ids):
            return torch.log(self.embed(ids) * 0)  # -inf outputs, nan gradients

    report = audit(LogOfZero(padding_idx=None), pad_idx=0, checks=("grad",))
    (grad,) = report.findings
    assert grad.cause == "nonfinite" and grad.value != grad.value


def test_same_seed_same_numbers_other_seed_other_batch():
    model = Tagger(padding_idx=None)
    a = audit(model, pad_idx=0, seed=3, checks=("grad",))
    b = audit(model, pad_idx=0, seed=3, checks=("grad",))
    c = audit(model, pad_idx=0, seed=4, checks=("grad",))
    assert a.batch == b.batch and a.findings[0].value == b.findings[0].value
    assert c.batch["ids"] != a.batch["ids"] and c.seed == 4 and "seed=4" in c.reproduce


def test_report_is_json_ready_and_prints_a_table():
    report = audit(Tagger(padding_idx=None), pad_idx=0, checks=TRAIN)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is False and data["options"]["pad_idx"] == 0
    assert {f["check"] for f in data["findings"]} == {"grad", "update"}
    text = str(report)
    assert "embed" in text and "LEAK" in text and "Tagger" in text


def test_cuda_model_is_audited_on_its_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine)")
    model = Tagger(padding_idx=None).cuda()
    report = audit(model, pad_idx=0)
    assert by_check(report, "grad") and next(model.parameters()).is_cuda


def test_output_shapes_of_nn_modules_are_accepted():
    """Tuples, dicts and dataclasses of tensors all feed the loss."""

    class Many(Tagger):
        def forward(self, ids):
            x = super().forward(ids)
            return {"logits": x, "extra": (x.sum(-1), ids)}

    assert not audit(Many(padding_idx=None), pad_idx=0, checks=("grad",)).passed
    assert audit(Many(), checks=("grad",)).passed


def test_a_plain_embedding_is_a_model_too():
    report = audit(nn.Embedding(VOCAB, DIM, padding_idx=2), checks=TRAIN)
    assert report.passed and report.tables[0].layer == "(model)" and report.tables[0].pad_idx == 2


class StepCounter(torch.optim.SGD):
    """Not a built-in element-wise class: the audit must step the real table with it."""

    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


def test_other_optimizers_step_the_real_tables_and_agree():
    model = nonzero_pad_row(Tagger())
    before = model.embed.weight.detach().clone()
    decay = {"lr": 0.1, "weight_decay": 0.5}
    proxied = audit(model, optimizer=lambda p: torch.optim.SGD(p, **decay), checks=TRAIN)
    full = audit(model, optimizer=lambda p: StepCounter(p, **decay), checks=TRAIN)
    assert StepCounter.steps == 1
    assert full.findings[0].value == pytest.approx(proxied.findings[0].value, rel=1e-6)
    assert torch.equal(model.embed.weight, before) and model.embed.sparse is False


def test_an_optimizer_that_cannot_step_the_gradient_is_one_clear_error():
    message = None
    with pytest.raises(PadAuditError) as err:
        audit(Tagger(sparse=True), optimizer=lambda p: StepCounter(p, weight_decay=0.1))
    message = str(err.value)
    assert "StepCounter could not step" in message and "sparse" in message


def test_no_table_sized_copy_unless_the_table_can_move(monkeypatch):
    model = Tagger()
    table = model.embed.weight.numel()
    sizes = []
    clone = torch.Tensor.clone

    def recording(self, *args, **kwargs):
        sizes.append(self.numel())
        return clone(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", recording)
    assert audit(model, optimizer=torch.optim.AdamW).passed
    assert sizes and max(sizes) < table  # pad rows and the small head only
    sizes.clear()
    audit(model, optimizer=lambda p: StepCounter(p, lr=0.1), checks=TRAIN)
    assert table in sizes  # a non-element-wise optimizer moves every row: saved whole


def test_tables_sharing_one_weight_are_listed_once_and_not_called_tied():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_embed = nn.Embedding(VOCAB, DIM, padding_idx=0)
            self.decoder_embed = nn.Embedding(VOCAB, DIM, padding_idx=0)
            self.decoder_embed.weight = self.encoder_embed.weight
            self.head = nn.Linear(DIM, 2)

        def forward(self, ids):
            return self.head(self.encoder_embed(ids) + self.decoder_embed(ids))

    report = audit(Shared(), checks=TRAIN)
    assert report.passed and [t.layer for t in report.tables] == ["encoder_embed"]
    assert report.tables[0].tied_with == []
