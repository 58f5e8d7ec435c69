"""What a user sees (issue 22): short usage errors, each line once, compact JSON."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # import once, before any in-process pytester run

MODEL = """
import torch
from torch import nn


class Mean(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def leaky():
    return Mean()
"""


def test_a_usage_error_from_the_fixture_or_audit_shows_only_the_users_frames(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(padmodels=MODEL)
    pytester.makepyfile(
        test_typo="""
        from padmodels import Mean
        from pytest_padaudit import audit


        def test_fixture(padaudit):
            padaudit(Mean(), pad_idx=0, sed=3)


        def test_audit():
            audit(Mean(), pad_idx=0, allow=("tie",))
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    for inside in ("options.py", "items.py", "engine.py", "api.py", "def merged"):
        assert inside not in out, inside
    result.stdout.fnmatch_lines(
        [
            ">       padaudit(Mean(), pad_idx=0, sed=3)",
            "E       pytest_padaudit.PadAuditError: unknown padaudit option 'sed' "
            "(did you mean 'sed' -> 'seed'?)*",
            "test_typo.py:6: PadAuditError",
            '>       audit(Mean(), pad_idx=0, allow=("tie",))',
            "E       *allow=('tie',) is not valid (did you mean 'tie' -> 'tied'?)*",
            "test_typo.py:10: PadAuditError",
        ]
    )
    # --fulltrace keeps padaudit's frames, for whoever debugs padaudit itself
    full = pytester.runpytest("-p", "no:cacheprovider", "--fulltrace")
    assert "options.py" in full.stdout.str()


@pytest.mark.usefixtures("ci")  # as on a developer's machine and as on CI
def test_a_failing_zero_code_audit_prints_its_report_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(padmodels=MODEL)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--padaudit-model=padmodels:leaky?pad_idx=0"
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert out.count("[grad] emb (pad id 0)") == 1
    assert out.count("reproduce: audit(model, pad_idx=0, seed=0)") == 1
    assert out.count("the pad row is not zero") == 1  # the note, once
    assert "Captured padaudit call" not in out


def test_a_pad_mismatch_is_a_cause_under_grad_in_the_verdict_column(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_mismatch="""
        import pytest
        from torch import nn


        @pytest.fixture
        def model():
            return nn.Embedding(20, 4, padding_idx=1)  # the data pads with 0


        @pytest.mark.padaudit(pad_idx=0, checks=("grad",))
        def test_model(model):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--padaudit-report")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*[[]grad[]] (model) (pad id 0): the batch pads with 0*"])
    (row,) = [line for line in result.stdout.lines if "LEAK" in line]
    assert "LEAK: grad" in row and "pad_idx" not in row.split("LEAK")[1]
