"""The keras-hub zoo: the audit's verdict per check equals plain-TensorFlow ground truth.

Models: BERT (also called without its padding mask: a leak), RoBERTa, DistilBERT, GPT-2 and
Gemma backbones, a BERT text classifier and the GPT-2 and Gemma causal LMs (tied heads), all
without preprocessors. ``python tests/support/zoo_table.py keras`` prints the table of ground truth
against the audit's verdicts.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
pytest.importorskip("keras_hub")

from pytest_padaudit import audit

from support import zoo_keras_hub
from support.zoo_common import CHECKS, RTOL, Row, mismatch, params, run_row, verdict

pytestmark = pytest.mark.zoo

#: Where the audit disagrees with the ground truth today, by (model id, check). Each fix
#: (issue 10 / issue 13) turns its marks into XPASS(strict) failures: remove them then.
KNOWN_DISAGREEMENTS: dict[tuple[str, str], str] = {}

ENTRIES = {entry.id: entry for entry in zoo_keras_hub.entries()}
_ROWS: dict[str, Row] = {}


@pytest.fixture
def row(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Return the (cached) row of a model: one audit and one ground truth per model."""

    def get(model: str) -> Row:
        if model not in _ROWS:
            tmp = tmp_path_factory.mktemp(model)
            _ROWS[model] = run_row(ENTRIES[model], tmp, zoo_keras_hub.truth, zoo_keras_hub.name)
        return _ROWS[model]

    return get


@pytest.mark.parametrize(("model", "check"), params(list(ENTRIES), CHECKS, KNOWN_DISAGREEMENTS))
def test_verdict_matches_ground_truth(row: Any, model: str, check: str) -> None:
    r = row(model)
    assert r.verdict[check] == r.truth[check], mismatch(r, check)


@pytest.mark.parametrize("model", list(ENTRIES))
def test_ground_truth_is_unambiguous(row: Any, model: str) -> None:
    """The invariance truth is far from the threshold (float noise is ~1e-7 here)."""
    numbers = row(model).numbers["truth"]
    rel = max(numbers["grad_rel"], numbers["out_rel"])
    assert rel < RTOL / 10 or rel > RTOL * 10, numbers


def test_zoo_covers_the_issue(row: Any) -> None:
    """4+ keras-hub backbones or tasks; tied heads; a leak the invariance check must see."""
    rows = [row(model) for model in ENTRIES]
    assert len({r.model for r in rows}) >= 4
    assert any(r.truth["tied"] for r in rows) and any(not r.truth["tied"] for r in rows)
    assert any(r.truth["grad"] for r in rows) and any(not r.truth["grad"] for r in rows)
    assert {"leak", "clean"} <= {r.truth["invariance"] for r in rows}


@pytest.mark.parametrize(
    ("model", "check"),
    params(
        [m for m, e in ENTRIES.items() if e.needs_forward], ("zero-config",), KNOWN_DISAGREEMENTS
    ),
)
def test_zero_config(row: Any, tmp_path: Any, model: str, check: str) -> None:
    """issue 13: the model is audited as it is, no forward= and no pad_idx=, same verdicts."""
    entry = ENTRIES[model]
    expected = row(model).truth
    report = audit(entry.build(tmp_path), **entry.zero_config)
    assert verdict(report, zoo_keras_hub.name) == expected
