"""Synthetic padded batches and loss weights (framework-free)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_padaudit import PadAuditError
from pytest_padaudit.batch import LossPlan, make_batch


def batch(**kwargs):
    options = {"batch_size": 6, "seq_len": 10, "vocab_size": 30, "pad_idx": 0, "seed": 0}
    return make_batch(**{**options, **kwargs})


@pytest.mark.parametrize("seed", range(20))
def test_shape_lengths_and_tokens(seed):
    b = batch(seed=seed, pad_ids=(7,))
    assert b.ids.shape == (6, 10) and b.ids.dtype == np.int64
    assert b.lengths.max() == 10 and b.lengths.min() < 10 and b.lengths.min() >= 1
    assert (b.mask.sum(1) == b.lengths).all()
    real = b.ids[b.mask]
    assert ((real != 0) & (real != 7) & (real >= 0) & (real < 30)).all()
    assert (b.ids[~b.mask] == 0).all()
    assert (b.mask[:, 0]).all()  # right padding: every sequence starts with a real token


def test_seeded():
    assert (batch(seed=5).ids == batch(seed=5).ids).all()
    assert (batch(seed=5).ids != batch(seed=6).ids).any()


def test_left_padding_puts_pads_first():
    b = batch(padding_side="left")
    assert b.mask[:, -1].all() and not b.mask[:, 0].all()
    assert (b.ids[~b.mask] == 0).all()


def test_a_vocabulary_of_two_with_one_pad_uses_the_other_id():
    b = batch(vocab_size=2, pad_idx=1)
    assert set(b.ids[b.mask].tolist()) == {0}


def test_nothing_but_pads_is_an_error():
    with pytest.raises(PadAuditError, match="nothing but pad ids"):
        batch(vocab_size=2, pad_ids=(1,))


@pytest.mark.parametrize("side", ["right", "left"])
def test_extended_keeps_the_real_tokens(side):
    b = batch(padding_side=side)
    longer = b.extended(4)
    assert longer.shape == (6, 14) and longer.extra == 4 and longer.base_len == 10
    assert (longer.ids[longer.mask] == b.ids[b.mask]).all()
    assert (longer.ids[~longer.mask] == 0).all()


def test_loss_weights_all_masked_and_real():
    b = batch()
    all_w = LossPlan(b, "all", 0).weights(0, (6, 10, 3))
    assert all_w.dtype == np.float32 and all_w.min() >= 0.5 and all_w.max() < 1.5
    masked = LossPlan(b, "masked", 0).weights(0, (6, 10, 3))
    assert (masked[~b.mask] == 0).all() and (masked[b.mask] == all_w[b.mask]).all()
    pooled = LossPlan(b, "masked", 0).weights(1, (6, 3))
    assert pooled.min() >= 0.5  # not aligned to positions: kept whole


@pytest.mark.parametrize("side", ["right", "left"])
def test_real_weights_agree_between_the_batch_and_its_extension(side):
    b = batch(padding_side=side)
    longer = b.extended(5)
    short = LossPlan(b, "real", 3).weights(0, (6, 10, 2))
    long = LossPlan(longer, "real", 3).weights(0, (6, 15, 2))
    assert (short[b.mask] == long[longer.mask]).all()
    assert (long[~longer.mask] == 0).all()


def test_framework_masks_are_honoured():
    b = batch()
    extra = np.ones((6, 10), dtype=bool)
    extra[:, 0] = False
    w = LossPlan(b, "masked", 0).weights(0, (6, 10), mask=extra)
    assert (w[:, 0] == 0).all()
