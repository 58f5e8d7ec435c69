"""An audit leaves the model, its gradients, modes and every RNG exactly as it found them."""

from __future__ import annotations

import random

import numpy as np
import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
from torch import nn

from pytest_padaudit import PadAuditError, audit

from support.torch_models import Tagger


class Normed(Tagger):
    """A tagger with a BatchNorm (buffers that a train forward updates) and max_norm."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = nn.BatchNorm1d(3)

    def forward(self, ids):
        return self.norm(self.head(self.embed(ids)).transpose(1, 2))


def state_of(model):
    """Everything an audit could change, copied."""
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "grad_ids": {n: id(p.grad) for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "random_rng": random.getstate(),
    }


def assert_same(before, after):
    for group in ("params", "grads", "buffers"):
        for name, value in before[group].items():
            other = after[group][name]
            if value is None:
                assert other is None, f"{group} {name} appeared"
            else:
                assert torch.equal(value, other), f"{group} {name} changed"
    assert before["grad_ids"] == after["grad_ids"]
    assert before["modes"] == after["modes"]
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert (before["numpy_rng"] == after["numpy_rng"]).all()
    assert before["random_rng"] == after["random_rng"]


def prepared(model):
    """Give the model user state: existing gradients, eval mode on a submodule, a pad row."""
    with torch.no_grad():
        model.embed.weight[0] = 2.0
    model(torch.randint(1, 50, (2, 5))).sum().backward()
    model.head.eval()
    return model


@pytest.mark.parametrize("leaky", [False, True])
def test_passing_and_failing_audits_restore_everything(leaky):
    model = prepared(Normed(padding_idx=None if leaky else 0, max_norm=1.5))
    before = state_of(model)
    report = audit(model, pad_idx=0, optimizer=torch.optim.AdamW, steps=2)
    assert report.passed is not leaky or any(f.cause == "max_norm" for f in report.findings)
    assert_same(before, state_of(model))


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_an_interrupted_audit_restores_everything(error):
    model = prepared(Tagger(padding_idx=None, max_norm=1.0))
    before = state_of(model)
    calls = []

    def forward(model, batch):
        calls.append(1)
        out = model(batch.ids)
        if len(calls) == 2:  # after the first optimizer step has moved the weights
            raise error("stop")
        return out

    expected = PadAuditError if error is Boom else KeyboardInterrupt
    with pytest.raises(expected):
        audit(model, pad_idx=0, forward=forward, steps=3, checks=("grad", "update"))
    assert len(calls) == 2
    assert_same(before, state_of(model))


def test_the_audit_is_seeded_and_does_not_consume_the_callers_rng():
    model = Tagger()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    audit(model, checks=("grad",))
    assert torch.equal(torch.rand(3), expected)


def test_dropout_is_reproducible_under_the_audit_seed():
    class Dropping(Tagger):
        def __init__(self):
            super().__init__(padding_idx=None)
            self.drop = nn.Dropout(0.5)

        def forward(self, ids):
            return self.head(self.drop(self.embed(ids)))

    model = Dropping()
    first = audit(model, pad_idx=0, checks=("grad",)).findings[0].value
    torch.manual_seed(999)  # the caller's RNG must not matter
    assert audit(model, pad_idx=0, checks=("grad",)).findings[0].value == first
