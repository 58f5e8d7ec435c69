"""The PyTorch real-library zoo: the audit's verdict per check equals plain-torch ground truth.

Models: 19 Hugging Face transformers set-ups (encoders, decoder-only, encoder-decoder, tied
and untied heads, two user modules around one), sentence-transformers (mean, CLS and a pooling
that ignores the mask) and PEFT LoRA on attention. ``python tests/support/zoo_table.py`` prints the
table of ground truth against the audit's verdicts.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch.nn")
pytest.importorskip("transformers")

from pytest_padaudit import audit

from support import zoo_hf, zoo_torch_truth
from support.zoo_common import CHECKS, RTOL, Row, mismatch, params, run_row, verdict

pytestmark = pytest.mark.zoo

#: Where the audit disagrees with the ground truth today, by (model id, check). Each fix
#: (issue 10 / issue 13) turns its marks into XPASS(strict) failures: remove them then.
KNOWN_DISAGREEMENTS: dict[tuple[str, str], str] = {}

ENTRIES = {entry.id: entry for entry in zoo_hf.entries()}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Run the tiny models on one thread: several times faster, and no spinning cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_ROWS: dict[str, Row] = {}


def _needs(entry: Any) -> None:
    if entry.library in ("sentence-transformers", "peft"):
        pytest.importorskip(entry.library.replace("-", "_"))


@pytest.fixture
def row(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Return the (cached) row of a model: one audit and one ground truth per model."""

    def get(model: str) -> Row:
        if model not in _ROWS:
            _needs(ENTRIES[model])
            tmp = tmp_path_factory.mktemp(model)
            _ROWS[model] = run_row(ENTRIES[model], tmp, zoo_torch_truth.truth, zoo_torch_truth.name)
        return _ROWS[model]

    return get


@pytest.mark.parametrize(("model", "check"), params(list(ENTRIES), CHECKS, KNOWN_DISAGREEMENTS))
def test_verdict_matches_ground_truth(row: Any, model: str, check: str) -> None:
    r = row(model)
    assert r.verdict[check] == r.truth[check], mismatch(r, check)


@pytest.mark.parametrize("model", list(ENTRIES))
def test_ground_truth_is_unambiguous(row: Any, model: str) -> None:
    """The invariance truth is far from the threshold, and a leak is a real leak."""
    numbers = row(model).numbers["truth"]
    rel = max(numbers["grad_rel"], numbers["out_rel"])
    assert rel < RTOL / 10 or rel > RTOL * 10, numbers


def test_zoo_covers_the_issue(row: Any) -> None:
    """12+ transformers architectures; tied and untied heads; leaking and clean models."""
    rows = [row(model) for model in ENTRIES]
    classes = {r.model for r in rows if r.entry.library == "transformers"}
    assert len(classes) >= 12, classes
    assert {"sentence-transformers", "peft"} <= {r.entry.library for r in rows}
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
    """issue 13: the model is audited as it is, no forward=, with the same verdicts."""
    entry = ENTRIES[model]
    _needs(entry)
    expected = row(model).truth
    report = audit(entry.build(tmp_path), **entry.zero_config)
    assert verdict(report, zoo_torch_truth.name) == expected


def test_sentence_transformer_pads_with_the_zoo_pad_id(tmp_path: Any) -> None:
    """The pad id the st-* rows use is the one the SentenceTransformer's tokenizer pads with."""
    pytest.importorskip("sentence_transformers")
    entry = ENTRIES["st-mean"]
    model = entry.build(tmp_path)
    features = model.tokenize(["w1 w2 w3", "w4"])
    assert model.tokenizer.pad_token_id == entry.pad == entry.options["pad_idx"]
    assert features["input_ids"][1, -1].item() == entry.pad
    assert features["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]
