"""The Flax adapter's noise and checkpoint roles, as torch and keras have them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("flax.nnx")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization

import pytest_padaudit
from pytest_padaudit import audit, audit_checkpoint
from pytest_padaudit.adapters.flax import ADAPTER
from pytest_padaudit.adapters.flax.noise import noisy
from pytest_padaudit.core.handle import Table
from pytest_padaudit.core.hooks import plugin_manager
from pytest_padaudit.core.noise import PadNoise

from flax_zoo import PAD, MeanPool


@pytest.fixture(autouse=True)
def flax_adapter():
    by_hand = not plugin_manager().is_registered(ADAPTER)
    if by_hand:
        pytest_padaudit.register(ADAPTER, name="padaudit-flax-roles")
    yield
    if by_hand:
        pytest_padaudit.unregister(ADAPTER)


class Fixed(MeanPool):
    """MeanPool that refuses any width but 16: the invariance check must use noise."""

    def __call__(self, ids: jax.Array) -> jax.Array:
        if ids.shape[1] != 16:
            raise ValueError("expects exactly 16 tokens")
        return super().__call__(ids)


@pytest.mark.parametrize(("masked", "passes"), [(True, True), (False, False)])
def test_a_fixed_length_model_is_measured_with_noise_at_the_pads(masked, passes):
    report = audit(Fixed(masked=masked), pad_idx=PAD, checks=("invariance",), seq_len=16)
    assert report.passed is passes, report.failure_message()
    (note,) = [n for n in report.notes if "invariance measured" in n]
    assert "expects exactly 16 tokens" in note
    assert "not_checked" not in {f.cause for f in report.findings}


def test_noise_follows_the_one_seed_recipe():
    table = Table("embed", 10, 3, "Embed", PAD, False)
    ids = jnp.asarray([[1, 2, PAD], [3, PAD, PAD]])
    out = jnp.arange(18, dtype=jnp.float32).reshape(2, 3, 3)
    replaced = np.asarray(noisy(PadNoise([table], 7), "embed", ids, out))
    at = np.asarray(ids) == PAD
    draw = PadNoise([table], 7).draw("embed", (2, 3, 3))
    scale = np.asarray(out)[~at].std()
    np.testing.assert_allclose(replaced[at], (draw * scale)[at], rtol=1e-6)
    np.testing.assert_array_equal(replaced[~at], np.asarray(out)[~at])


def test_msgpack_checkpoint(tmp_path: Path):
    model = MeanPool(masked=True)
    path = tmp_path / "model.msgpack"
    state = nnx.to_pure_dict(nnx.state(model))
    path.write_bytes(serialization.to_bytes(state))
    report = audit_checkpoint(path, pad_idx=PAD, expect="finite")
    assert report.passed and report.framework == "flax"
    assert [t.layer for t in report.tables] == ["embed.embedding"]
    zero = audit_checkpoint(path, pad_idx=PAD)  # nnx.Embed starts with a random pad row
    assert not zero.passed
    (finding,) = zero.findings  # in Flax's words: no state_dict, no padding_idx
    assert "nnx.to_pure_dict" in finding.fix and f".at[{PAD}].set(0)" in finding.fix
    assert "state_dict" not in finding.fix and "nnx.Embed" in finding.why
