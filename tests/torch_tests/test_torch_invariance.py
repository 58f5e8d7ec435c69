"""The invariance check on PyTorch: it catches pads leaking into real positions and names where."""

from __future__ import annotations

import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
from torch import nn

from pytest_padaudit import audit

from support.torch_models import Encoder, GRUClassifier, MeanPool, Tagger

INV = ("invariance",)


def invariance(model, **options):
    report = audit(model, checks=INV, **options)
    return report, report.invariance


def test_unmasked_mean_leaks_and_the_callers_forward_is_named():
    report, inv = invariance(MeanPool(masked=False))
    (finding,) = report.findings
    assert finding.check == "invariance" and finding.value > 1e-2
    assert inv.first_module == "(model)"  # the mean is written in MeanPool.forward itself
    assert "in the forward of MeanPool, before head" in finding.why
    assert "mask it" in finding.fix


def test_masked_mean_is_quiet_with_and_without_dropout():
    for dropout in (0.0, 0.5):
        report, inv = invariance(MeanPool(masked=True, dropout=dropout))
        assert report.passed, report.failure_message()
        assert inv.value < 1e-5


def test_transformer_without_key_padding_mask_leaks_in_self_attention():
    torch.manual_seed(0)
    report, inv = invariance(Encoder(masked=False, dropout=0.1))
    assert not report.passed
    assert inv.first_module == "encoder.layers.0.self_attn"
    (finding,) = report.findings
    assert finding.layer == "encoder.layers.0.self_attn"
    assert "src_key_padding_mask" in finding.fix
    assert "attends to the pad keys" in finding.why


def test_transformer_with_key_padding_mask_is_quiet():
    torch.manual_seed(0)
    report, inv = invariance(Encoder(masked=True, dropout=0.1))
    assert report.passed, report.failure_message()
    assert inv.value < 1e-4


def test_gru_final_state_without_packing_leaks_in_the_gru():
    report, inv = invariance(GRUClassifier(packed=False))
    assert not report.passed and inv.first_module == "gru"
    assert "pack_padded_sequence" in report.findings[0].fix


def test_packed_gru_is_quiet():
    report, _ = invariance(GRUClassifier(packed=True))
    assert report.passed, report.failure_message()


def test_per_token_tagger_is_quiet_and_outputs_are_compared():
    report, inv = invariance(Tagger())
    assert report.passed and inv.value == 0.0 and inv.outputs == 0.0


def test_batchnorm_over_pads_is_caught():
    class Conv(Tagger):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(8)

        def forward(self, ids):
            x = self.norm(self.embed(ids).transpose(1, 2)).transpose(1, 2)
            return self.head(x)

    report, inv = invariance(Conv())
    assert not report.passed and inv.first_module == "norm"
    assert "batch statistics" in report.findings[0].why


def test_left_padding_prepends_the_extra_columns():
    report, _ = invariance(MeanPool(masked=True), padding_side="left", extra_pad=5)
    assert report.passed and report.batch["padding_side"] == "left"
    assert invariance(GRUClassifier(packed=False), padding_side="left")[0].passed is False


def test_a_model_with_a_fixed_length_is_measured_with_noise_at_the_pads():
    class Fixed(Tagger):
        def forward(self, ids):
            assert ids.shape[1] == 16, "expects exactly 16 tokens"
            return super().forward(ids)

    report, inv = invariance(Fixed())
    assert report.passed and not inv.skipped and inv.value == 0.0
    (note,) = [n for n in report.notes if "invariance measured" in n]
    assert "seeded noise" in note and "(4, 24)" in note and "expects exactly 16 tokens" in note


def test_a_mathematically_zero_gradient_is_no_false_alarm():
    """A parameter whose gradient is float noise in both runs must not trip the check."""

    class SoftmaxBias(MeanPool):
        def __init__(self):
            super().__init__(masked=True)
            self.bias = nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            out = super().forward(ids)
            # softmax is shift-invariant: d/d(bias) is exactly zero, computed as ~1e-9 noise
            return out + torch.softmax(out + self.bias, -1).sum(-1, keepdim=True) * 1e3

    report, _ = invariance(SoftmaxBias())
    assert report.passed, report.failure_message()


def test_default_checks_include_invariance():
    report = audit(MeanPool(masked=False))
    assert {f.check for f in report.findings} == {"invariance"}
    assert report.options["checks"] == ["grad", "update", "invariance"]


def test_a_pooled_output_as_wide_as_the_batch_is_not_taken_for_per_token():
    """(batch, hidden) with hidden == seq_len must not get pad-position weights."""

    class Pooled(MeanPool):
        def __init__(self):
            super().__init__(masked=True)
            self.head = nn.Linear(8, 16)

    report, inv = invariance(Pooled(), seq_len=16)
    assert report.passed, report.failure_message()
    assert inv.value < 1e-5
