"""The Keras zoo on whichever backend KERAS_BACKEND names: audit verdicts vs plain autodiff.

Not collected by a plain ``pytest`` run (no ``test_`` prefix): tests/keras_tests/
test_keras_backends.py runs this file explicitly, once per backend, in a subprocess (Keras
picks its backend at import). Every expected answer is computed with the backend's own
autodiff on the audit's batch (tests/support/keras_backend_truth.py), never by padaudit. When
PADAUDIT_VERDICTS names a file, each test appends its verdict record there as a JSON line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import pytest

from pytest_padaudit import audit

from support.keras_backend_runs import record
from support.keras_backend_truth import batch_of, close, snapshot, stepped_change, table_grad
from support.keras_backend_zoo import (
    attention,
    flatten,
    global_average_pooling,
    lstm,
    seed_model,
    tied_logits,
)

TRAIN = ("grad", "update")


@dataclass
class Case:
    """One zoo model, the audit's options, and the cause each failing check must name."""

    build: Callable[[], keras.Model]
    options: dict[str, Any] = field(default_factory=dict)
    #: the optimizer the truth steps (a fresh copy); None: the audit's SGD(learning_rate=1).
    optimizer: Callable[[], Any] | None = None
    #: check -> the cause its finding must carry, for the checks the truth says leak.
    causes: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "seed_masked_dense": Case(lambda: seed_model(masked=True)),
    "seed_plain_dense": Case(
        lambda: seed_model(masked=False), causes={"grad": "unmasked", "update": "unmasked"}
    ),
    "seed_plain_dense_loss_masked": Case(lambda: seed_model(masked=False), {"loss": "masked"}),
    "lstm": Case(lstm),
    "global_average_pooling": Case(global_average_pooling),
    "flatten": Case(flatten, causes={"grad": "unmasked", "update": "unmasked"}),
    "attention": Case(attention),
    "attention_no_mask_zero": Case(
        lambda: attention(mask_zero=False),
        {"pad_idx": 0},
        causes={"grad": "no_padding_idx", "update": "no_padding_idx"},
    ),
    "adamw": Case(
        lambda: seed_model(masked=True),
        optimizer=lambda: keras.optimizers.AdamW(1e-3),
        causes={"update": "weight_decay"},
    ),
    "adam": Case(lambda: seed_model(masked=True), optimizer=lambda: keras.optimizers.Adam(1e-3)),
    # not element-wise: the audit steps the real tables, then restores them
    "adafactor": Case(
        lambda: seed_model(masked=False),
        optimizer=lambda: keras.optimizers.Adafactor(1e-2),
        causes={"grad": "unmasked", "update": "unmasked"},
    ),
    "adamw_clipnorm": Case(
        lambda: seed_model(masked=True),
        optimizer=lambda: keras.optimizers.AdamW(1e-3, clipnorm=1.0),
        causes={"update": "weight_decay"},
    ),
    # the table is read again outside its lookup: the mask cannot reach that use
    "tied_logits": Case(
        tied_logits,
        {"loss": "masked"},
        causes={"grad": "weight_reuse", "update": "weight_reuse"},
    ),
}


@pytest.mark.filterwarnings("ignore:.*does not support masking")
@pytest.mark.parametrize("name", list(CASES))
def test_zoo_case_matches_plain_autodiff(name: str) -> None:
    case = CASES[name]
    model = case.build()
    user = case.optimizer() if case.optimizer else None
    options = dict(case.options, **({"optimizer": user} if user is not None else {}))
    before = snapshot(model)
    base = {"case": name, "backend": keras.config.backend()}
    try:
        report = audit(model, checks=TRAIN, **options)
    except Exception as exc:
        record({**base, "error": f"{type(exc).__name__}: {exc}"})
        raise
    after = snapshot(model)

    table = model.get_layer("tok")
    (result,) = [t for t in report.tables if t.layer == "tok"]
    pad, seed = int(report.batch["pad_idx"]), int(report.batch["seed"])
    ids, mask = batch_of(report)
    masked = mask if options.get("loss") == "masked" else None
    grad = table_grad(model, table.embeddings, ids, seed, masked)
    truth_grad = float(np.abs(grad[pad]).max())
    optimizer = user if user is not None else keras.optimizers.SGD(learning_rate=1.0)
    truth_update = stepped_change(optimizer, table.embeddings, grad, pad)
    findings = sorted((f.check, f.layer, f.cause) for f in report.findings)
    record(
        {
            **base,
            "passed": report.passed,
            "findings": findings,
            "grad": result.grad,
            "update": result.update,
            "truth_grad": truth_grad,
            "truth_update": truth_update,
        }
    )

    # the audit restored every variable bitwise, and never stepped the user's optimizer
    assert len(after) == len(before)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), name
    assert user is None or int(keras.ops.convert_to_numpy(user.iterations.value)) == 0

    atol = report.options.get("atol", 0.0)
    leaks = {"grad": truth_grad > atol, "update": truth_update > atol}
    assert report.passed == (not any(leaks.values())), (name, truth_grad, truth_update, report)
    assert close(result.grad, truth_grad), (name, "grad", result.grad, truth_grad)
    assert close(result.update, truth_update), (name, "update", result.update, truth_update)
    expected = sorted((check, "tok", case.causes[check]) for check, leak in leaks.items() if leak)
    assert findings == expected, (name, findings, expected, str(report))
