"""Synthetic padded batches and loss weights (framework-free)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_padaudit import PadAuditError
from pytest_padaudit.core.batch import LossPlan, make_batch


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


@pytest.mark.parametrize("side", ["right", "left"])
def test_real_weights_on_an_attention_map_agree_at_real_query_and_key_positions(side):
    b = batch(padding_side=side)
    longer = b.extended(5)
    axes = {0: (2, 3)}
    short = LossPlan(b, "real", 3, axes=axes).weights(0, (6, 2, 10, 10))
    long = LossPlan(longer, "real", 3, axes=axes).weights(0, (6, 2, 15, 15))
    pair = b.mask[:, None, :, None] & b.mask[:, None, None, :]
    wide_pair = longer.mask[:, None, :, None] & longer.mask[:, None, None, :]
    assert (short[np.broadcast_to(pair, short.shape)] > 0).all()
    assert (short[~np.broadcast_to(pair, short.shape)] == 0).all()
    assert (long[~np.broadcast_to(wide_pair, long.shape)] == 0).all()
    assert (
        short[np.broadcast_to(pair, short.shape)] == long[np.broadcast_to(wide_pair, long.shape)]
    ).all()


def test_sequence_axes_come_from_growth_never_from_a_size_alone():
    from pytest_padaudit.core.invariance import grown_axes

    # (batch, hidden) with hidden == seq_len, and == seq_len + extra: no sequence axis
    assert grown_axes({0: (4, 16), 1: (4, 24)}, {0: (4, 16), 1: (4, 24)}, 8) == {0: (), 1: ()}
    assert grown_axes({0: (4, 2, 16, 16)}, {0: (4, 2, 24, 24)}, 8) == {0: (2, 3)}
    assert grown_axes({0: (16, 4, 8)}, {0: (24, 4, 8)}, 8) == {0: (0,)}
    assert grown_axes({0: (4, 128)}, {0: (4, 192)}, 8) is None  # flattened: not comparable
