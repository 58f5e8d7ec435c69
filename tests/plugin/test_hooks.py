"""Third-party adapters and hooks through padaudit's own pluggy namespace."""

from __future__ import annotations

import numpy as np
import pytest

import pytest_padaudit
from pytest_padaudit import PadAuditError, audit
from pytest_padaudit.core.batch import make_batch

from support.numpy_adapter import NumpyAdapter, NumpyTagger


@pytest.fixture
def numpy_adapter():
    adapter = NumpyAdapter()
    pytest_padaudit.register(adapter)
    yield adapter
    pytest_padaudit.unregister(adapter)


def test_unregistered_model_is_rejected():
    with pytest.raises(PadAuditError, match=r"cannot audit a support\.numpy_adapter\.NumpyTagger"):
        audit(NumpyTagger())


def test_toy_numpy_adapter_end_to_end(numpy_adapter):
    clean = audit(NumpyTagger(masked=True))
    assert clean.passed and clean.framework == "numpy"
    assert clean.tables[0].grad == 0.0 and clean.invariance.value == 0.0
    model = NumpyTagger(masked=False)
    before = model.W.copy()
    leaky = audit(model, optimizer=0.5)
    assert {f.check for f in leaky.findings} == {"grad", "update"}
    assert leaky.findings[0].why == "the toy tagger does not mask (event grad)"
    assert (before == model.W).all()  # the handle's preserve() restored it


def test_weight_decay_through_a_foreign_optimizer(numpy_adapter):
    report = audit(NumpyTagger(masked=True), optimizer=0.5, checks=("update",))
    (finding,) = report.findings
    assert finding.cause == "weight_decay" and "NumpySGD" in finding.message


def test_batch_hook_replaces_the_synthetic_batch(numpy_adapter):
    class Batches:
        @pytest_padaudit.hookimpl
        def padaudit_make_batch(self, options, vocab_size, pad_idx, pad_ids):
            b = make_batch(batch_size=2, seq_len=3, vocab_size=vocab_size, pad_idx=pad_idx)
            return type(b)(np.array([[5, 5, 0], [5, 0, 0]]), b.mask, b.lengths, pad_idx)

    batches = Batches()
    pytest_padaudit.register(batches)
    try:
        report = audit(NumpyTagger(masked=False), checks=("grad",))
    finally:
        pytest_padaudit.unregister(batches)
    assert report.batch["ids"] == [[5, 5, 0], [5, 0, 0]]


def test_result_hook_can_veto(numpy_adapter):
    class Veto:
        @pytest_padaudit.hookimpl
        def padaudit_audit_finished(self, report):
            report.findings[:] = [f for f in report.findings if f.check != "grad"]

    veto = Veto()
    pytest_padaudit.register(veto)
    try:
        report = audit(NumpyTagger(masked=False), checks=("grad",))
    finally:
        pytest_padaudit.unregister(veto)
    assert report.passed


def test_entry_point_group_is_loaded(monkeypatch):
    import pytest_padaudit.core.hooks as hooks

    calls = []

    class Manager(hooks._Manager):
        def load_setuptools_entrypoints(self, group, name=None):
            calls.append(group)
            return 0

    monkeypatch.setattr(hooks, "_Manager", Manager)
    monkeypatch.setattr(hooks, "_manager", None)
    hooks.plugin_manager()
    assert calls == ["padaudit"]


def test_result_hook_sees_one_report_per_audit_after_shrinking(numpy_adapter):
    class Collect:
        def __init__(self) -> None:
            self.reports: list[object] = []

        @pytest_padaudit.hookimpl
        def padaudit_audit_finished(self, report):
            self.reports.append((report, report.smallest))

    collect = Collect()
    pytest_padaudit.register(collect)
    try:
        report = audit(NumpyTagger(masked=False), checks=("grad",))
    finally:
        pytest_padaudit.unregister(collect)
    assert report.smallest is not None and report.smallest["runs"] >= 1  # re-runs happened
    assert collect.reports == [(report, report.smallest)]
