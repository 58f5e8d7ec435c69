"""batch= from the marker (a fixture's name) and the fixture: the user's own batch."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

CONFTEST = """
import pytest, torch
from torch import nn

class MeanPool(nn.Module):
    def __init__(self, masked):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 4, padding_idx=0)
        self.head = nn.Linear(4, 2)
        self.masked = masked

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        if not self.masked:
            return self.head(x.mean(1))
        m = attention_mask.float()[..., None]
        return self.head((x * m).sum(1) / m.sum(1))

@pytest.fixture
def masked():
    return MeanPool(True)

@pytest.fixture
def unmasked():
    return MeanPool(False)

@pytest.fixture
def train_batch():
    ids = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def test_the_marker_audits_with_the_batch_a_fixture_returns(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.padaudit(model="masked", batch="train_batch")
        def test_masked(masked, train_batch):
            pass

        @pytest.mark.padaudit(model="unmasked", batch="train_batch")
        def test_unmasked(unmasked, train_batch):
            pass
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*[[]invariance[]] (model) (pad id 0): * extra pad columns change what the real*",
            "*reproduce: audit(model, seed=0, batch=batch)*",
            "*batch: ids int64[[]2, 4[]], keys input_ids, attention_mask, lengths [[]3, 2[]]*",
        ]
    )


def test_the_fixture_takes_batch_and_step(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        def test_step(padaudit, masked, train_batch):
            report = padaudit(masked, batch=train_batch, step=lambda m, b: m(**b).sum())
            assert report.passed and report.batch_text.endswith("from batch=")
        """
    )
    suite.runpytest().assert_outcomes(passed=1)


def test_a_batch_name_the_test_does_not_request_fails_before_the_body(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.padaudit(model="masked", batch="train_btach")
        def test_typo(masked):
            raise AssertionError("the body ran")
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*padaudit(batch='train_btach') on test_typo: 'train_btach' is not a fixture*"]
    )
    result.stdout.no_fnmatch_line("*the body ran*")


def test_zero_code_reads_batch_and_step_from_module_paths(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        mypipe="""
        import torch
        from conftest import MeanPool

        def build():
            return MeanPool(True)

        def train_batch():
            ids = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
            return {"input_ids": ids, "attention_mask": (ids != 0).long()}

        def step(model, batch):  # drops the mask: every position counts
            ids = batch["input_ids"]
            return model(ids, torch.ones_like(ids)).sum()
        """
    )
    spec = "mypipe:build?batch=mypipe:train_batch&step=mypipe:step"
    result = suite.runpytest("-p", "no:cacheprovider", f"--padaudit-model={spec}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*[[]invariance[]]*", "*your step= lets pad positions*"])
