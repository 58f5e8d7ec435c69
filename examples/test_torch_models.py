"""The demo: audit a few PyTorch models with the padaudit fixture and marker.

Run it with ``pytest examples --padaudit-report``. ``test_leaky_classifier`` fails on
purpose: it shows a full failure message (the project's own tests assert that it fails).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from demo_models import PAD, BagOfWords, Encoder, LeakyClassifier, Tagger


@pytest.fixture
def tagger() -> Tagger:
    torch.manual_seed(0)
    return Tagger()


def test_tagger_masks_padding(padaudit, tagger):
    """1. The fixture: audit inline, then use the report."""
    report = padaudit(tagger)
    assert report.tables[0].grad == 0.0


@pytest.mark.padaudit(steps=3)
def test_tagger_shapes(tagger):
    """2. The marker: after the body passes, every model argument is audited."""
    assert tagger(torch.ones(2, 5, dtype=torch.long)).shape == (2, 5, 5)


@pytest.fixture(params=[BagOfWords, Encoder], ids=["bag", "encoder"])
def classifier(request) -> torch.nn.Module:
    torch.manual_seed(0)
    return request.param()


@pytest.mark.padaudit(optimizer=torch.optim.AdamW)
def test_classifiers_with_adamw(classifier):
    assert classifier(torch.ones(2, 7, dtype=torch.long)).shape == (2, 3)


@pytest.fixture
def leaky() -> LeakyClassifier:
    torch.manual_seed(0)
    return LeakyClassifier()


@pytest.mark.padaudit(pad_idx=PAD)
def test_leaky_classifier(leaky):
    """3. A leaky model: this test FAILS, and its message says where, why and how to fix it."""
    assert leaky(torch.ones(2, 7, dtype=torch.long)).shape == (2, 3)
