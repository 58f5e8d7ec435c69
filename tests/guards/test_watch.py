"""The framework-free verdicts: which cause a moved pad row gets."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_padaudit.guards.watch import OptimizerSeen, likely_causes, shrunk

ROW = np.array([0.5, -0.25, 0.125], np.float32)
DECAY = OptimizerSeen("AdamW", 0.01, True)
ADAM = OptimizerSeen("Adam", 0.0, True)


def test_a_pure_shrink_is_weight_decay():
    after = ROW * np.float32(1 - 1e-3)
    assert shrunk(ROW, after)
    assert likely_causes(ROW, after, 0.0, DECAY) == ["weight_decay"]
    assert likely_causes(ROW, after, None, DECAY) == ["weight_decay"]  # Keras: no gradient


def test_gradient_at_the_pad_row_is_a_lookup_leak():
    after = ROW + np.float32(0.01)
    assert likely_causes(ROW, after, 0.3, ADAM) == ["lookup"]
    assert likely_causes(ROW, after, 0.3, DECAY) == ["lookup", "weight_decay"]
    assert likely_causes(ROW, after, None, ADAM) == ["lookup"]


def test_a_move_with_zero_gradient_and_no_decay_is_momentum():
    zero = np.zeros(3, np.float32)
    assert likely_causes(zero, zero + np.float32(0.01), 0.0, ADAM) == ["momentum"]
    # a zero row is not decayed, so decay is not named
    assert likely_causes(zero, zero + np.float32(0.01), 0.0, DECAY) == ["momentum"]


@pytest.mark.parametrize(
    "after", [ROW * np.float32(1.01), -ROW, ROW + np.array([0.0, 0.01, 0.0], np.float32)]
)
def test_growth_a_sign_flip_or_a_bent_row_is_no_shrink(after):
    assert not shrunk(ROW, after)
    assert not shrunk(np.zeros(3, np.float32), after)
