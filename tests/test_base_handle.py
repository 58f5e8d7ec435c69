"""BaseHandle: declared capabilities, the probe for third-party handles, the noise recipe."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_padaudit.core.base import BaseHandle, Capabilities, capabilities
from pytest_padaudit.core.handle import Table
from pytest_padaudit.core.noise import PadNoise

from support.numpy_adapter import NumpyHandle, NumpyTagger


def test_a_third_party_handle_is_probed_once_in_one_place() -> None:
    found = capabilities(NumpyHandle(NumpyTagger()))
    assert found == Capabilities()  # no lookups, reset, head grads or perturb=


def test_built_in_handles_declare_what_they_can_do() -> None:
    torch_handle = pytest.importorskip("pytest_padaudit.adapters.torch.handle")
    nn = pytest.importorskip("torch.nn")
    handle = torch_handle.TorchHandle(nn.Embedding(5, 2), _options())
    from pytest_padaudit.adapters.torch.feed import PIPELINE_FIXES

    assert capabilities(handle) == Capabilities(
        lookups=True,
        train_lookups=True,
        head_grads=True,
        reset=True,
        perturb=True,
        trace_perturb=True,
        user_batch=True,
        pipeline_fixes=PIPELINE_FIXES,
    )


def test_a_declaration_that_disagrees_with_the_methods_is_refused() -> None:
    with pytest.raises(TypeError, match="set can_reset = True"):

        class Resets(BaseHandle):
            def reset(self) -> None:
                pass

    with pytest.raises(TypeError, match="set has_head_grads = False"):

        class Claims(BaseHandle):
            has_head_grads = True


def test_one_seed_recipe_for_every_framework() -> None:
    tables = [Table("a", 9, 2, "Embed", 0, False), Table("b", 9, 2, "Embed", 0, False)]
    first, again = PadNoise(tables, 3), PadNoise(tables, 3)
    draws = [first.draw("a", (2, 3)), first.draw("a", (2, 3)), first.draw("b", (2, 3))]
    assert np.array_equal(draws[0], again.draw("a", (2, 3)))
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    assert draws[0].dtype == np.float32 and first.calls == {"a": 2, "b": 1}


def test_token_tables_only() -> None:
    tables = [Table("a", 9, 2, "Embed", 0, False, token=False), Table("b", 9, 2, "E", 0, False)]
    from pytest_padaudit.core.noise import pad_noise

    seen = []
    with pytest.raises(Exception, match=r"no token table \(b\) emitted"):  # noqa: SIM117
        with pad_noise(tables, 1, lambda noise: _nothing(), "Embed") as noise:
            seen = [t.path for t in noise.tables]
    assert seen == ["b"]


def _nothing():
    from contextlib import nullcontext

    return nullcontext()


def _options():
    from pytest_padaudit.core.options import AuditOptions

    return AuditOptions()
