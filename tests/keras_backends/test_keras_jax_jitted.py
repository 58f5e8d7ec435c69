"""Keras on jax: the jitted passes give the eager passes' reports.

Keras picks its backend at import, so the outer test reruns this file in a subprocess with
``KERAS_BACKEND=jax``, where the inner tests run. Each model is audited twice: once with
the jitted passes switched off (``jitted.jittable`` patched to say no: the eager passes of
today) and once jitted; every verdict, table and text must agree, and values to float32
rounding. Where the invariance difference is float noise (below 1e-6; the verdict's
``rtol`` is far above), which parameter's noise is largest may differ, as XLA fuses the
jitted sums in another order: that field alone is not compared then. A second audit with a
new seed reuses the compiled passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

INNER = os.environ.get("PADAUDIT_JAX_JITTED") == "1" and os.environ.get("KERAS_BACKEND") == "jax"
#: the inner tests: model cases x option sets, plus the second-audit test.
INNER_COUNT = 7 * 2 + 1

if not INNER:

    def test_jitted_passes_give_the_eager_reports_on_jax(tmp_path: Path) -> None:
        from support.keras_backend_runs import TESTS, backend_env, need

        need("jax")
        env = backend_env("jax", tmp_path / "keras_home", PADAUDIT_JAX_JITTED="1")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        done = subprocess.run(
            [*command, "-p", "no:xdist", "--tb=short", __file__],
            cwd=TESTS.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
        assert f"{INNER_COUNT} passed" in done.stdout, done.stdout[-4000:]

else:
    import keras
    from keras import layers

    from pytest_padaudit.adapters.keras import jitted
    from pytest_padaudit.core.engine import adapt, run_audit
    from pytest_padaudit.core.options import AuditOptions

    from support.reports import assert_same_report

    def _ids() -> Any:
        return keras.Input((None,), dtype="int32")

    def masked_dense() -> Any:
        """mask_zero: the Dense output carries the Keras mask (weights read it)."""
        ids = _ids()
        x = layers.Embedding(40, 8, mask_zero=True)(ids)
        return keras.Model(ids, layers.Dense(3)(x))

    def unmasked_dense() -> Any:
        ids = _ids()
        return keras.Model(ids, layers.Dense(3)(layers.Embedding(40, 8)(ids)))

    def masked_pooled() -> Any:
        ids = _ids()
        x = layers.Embedding(40, 8, mask_zero=True)(ids)
        return keras.Model(ids, layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))

    def attention(masked: bool) -> Callable[[], Any]:
        def build() -> Any:
            ids = _ids()
            x = layers.Embedding(40, 16, mask_zero=masked)(ids)
            x = layers.MultiHeadAttention(2, 8)(x, x)
            return keras.Model(ids, layers.Dense(3)(layers.LayerNormalization()(x)))

        return build

    def dropout() -> Any:
        ids = _ids()
        x = layers.Embedding(40, 8, mask_zero=True)(ids)
        x = layers.Dropout(0.4, seed=3)(layers.Dense(8)(x))
        return keras.Model(ids, layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))

    #: name -> (model builder, the pad the audit is told)
    MODELS: dict[str, tuple[Callable[[], Any], int]] = {
        "masked_dense": (masked_dense, 0),
        "unmasked_dense": (unmasked_dense, 0),
        "masked_pooled": (masked_pooled, 0),
        "attention_masked": (attention(True), 0),
        "attention_unmasked": (attention(False), 0),
        "dropout": (dropout, 0),
        "guess_wrong": (masked_pooled, 1),  # told pad 1; the model masks 0
    }

    def _entries() -> list[jitted.Entry]:
        return [e for passes in jitted._CACHE.values() for e in passes.values()]

    @pytest.mark.parametrize("name", list(MODELS))
    @pytest.mark.parametrize("extra", [{}, {"steps": 2, "optimizer": "adam"}], ids=["one", "adam"])
    def test_jitted_and_eager_passes_give_the_same_report(
        name: str, extra: dict, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        build, pad = MODELS[name]
        opts = AuditOptions.from_kwargs(pad_idx=pad, **extra)
        model = build()
        with monkeypatch.context() as patched:
            patched.setattr(jitted, "jittable", lambda handle, kb: False)
            slow = run_audit(adapt(model, opts), opts).to_dict()
        assert model not in jitted._CACHE  # the eager run compiled nothing
        quick = run_audit(adapt(model, opts), opts).to_dict()
        found = list(jitted._CACHE[model].values())
        assert {key[0][0] for key in jitted._CACHE[model]} == {"train", "invariance"}
        assert all(e.run is not None and not e.failed for e in found), found
        for report in (slow, quick):  # float noise only: the field names its own argmax
            if report["invariance"]["value"] < 1e-6:
                report["invariance"]["worst"] = None
        assert_same_report(slow, quick, abs_tol=1e-6)

    def test_a_second_audit_with_a_new_seed_compiles_nothing() -> None:
        model = attention(True)()
        opts = AuditOptions.from_kwargs(pad_idx=0)
        first = run_audit(adapt(model, opts), opts)
        passes = jitted._CACHE[model]
        sizes = {k: e.run._cache_size() for k, e in passes.items() if e.run is not None}
        masks = {k: e.masks._cache_size() for k, e in passes.items() if e.masks is not None}
        assert sizes and masks and not any(e.failed for e in passes.values())
        other = AuditOptions.from_kwargs(pad_idx=0, seed=5)
        again = run_audit(adapt(model, other), other)
        assert {k: e.run._cache_size() for k, e in passes.items() if e.run is not None} == sizes
        assert {k: e.masks._cache_size() for k, e in passes.items() if e.masks is not None} == masks
        assert first.passed == again.passed
        assert first.to_dict()["tables"] != again.to_dict()["tables"]  # the seed took effect
