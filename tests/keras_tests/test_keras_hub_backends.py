"""keras-hub models on every Keras backend: plain-autodiff truth, verdicts identical across.

tests/keras_backends/hub_cases.py runs once per backend (KERAS_BACKEND=tensorflow, jax,
torch) in a subprocess, each writing one verdict record per case; the records must then
agree across backends: passed, findings, the tables judged not token tables, and every
measured value within tolerance. Skipped where keras_hub is not importable.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest

from support.keras_backend_runs import BACKENDS, TESTS, ZooRuns, need

HUB = TESTS / "keras_backends" / "hub_cases.py"
#: the cases of hub_cases.py, in its order: each backend must run and pass every one.
CASES = ("bert", "bert_loss_masked", "gpt2_causal_lm_tied")
VALUES = ("grad", "update", "head_grad", "truth_grad", "truth_update")

pytestmark = pytest.mark.skipif(find_spec("keras_hub") is None, reason="needs keras_hub")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> ZooRuns:
    return ZooRuns(tmp_path_factory.mktemp("keras_hub_backends"), HUB)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hub_verdicts_match_plain_autodiff_on_backend(hub: ZooRuns, backend: str) -> None:
    need(backend)
    run = hub(backend)
    print(f"{backend}: hub_cases.py took {run.seconds:.1f} s")
    run.assert_passed(CASES)


def test_hub_verdicts_are_identical_across_backends(hub: ZooRuns) -> None:
    runs = hub.complete(CASES)
    first, *others = runs
    differ = [
        (case, key, {first: runs[first].records[case][key], other: runs[other].records[case][key]})
        for case in CASES
        for other in others
        for key in ("passed", "findings", "not_token")
        if runs[other].records[case][key] != runs[first].records[case][key]
    ]
    assert not differ, "\n".join(map(str, differ))


def test_hub_values_agree_across_backends(hub: ZooRuns) -> None:
    runs = hub.complete(CASES)
    first, *others = runs
    differ = []
    for case in CASES:
        want = runs[first].records[case]
        for other in others:
            got = runs[other].records[case]
            for key in VALUES:
                a, b = want.get(key), got.get(key)
                same = a == b or (
                    a is not None and b is not None and np.isclose(b, a, rtol=1e-4, atol=1e-6)
                )
                if not same:
                    orders = {first: want.get("output_order"), other: got.get("output_order")}
                    differ.append((case, key, {first: a, other: b}, orders))
    assert not differ, "\n".join(map(str, differ))
