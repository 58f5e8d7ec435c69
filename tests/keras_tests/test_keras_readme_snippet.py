"""The README's headline Keras snippet passes on a correctly masked model, as pasted."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("keras.layers")
pytest.importorskip("tensorflow")

README = Path(__file__).resolve().parents[2] / "README.md"
MODEL = """
import keras
import pytest


@pytest.fixture
def model():
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(50, 8, mask_zero=True)(ids)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(ids, keras.layers.Dense(3)(x))

"""


def snippet() -> str:
    section = README.read_text().split("### Keras (TensorFlow, JAX or torch backend)", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_the_headline_snippet_passes_on_a_masked_model(pytester: pytest.Pytester) -> None:
    code = snippet()
    assert "padaudit(optimizer=keras.optimizers.Adam(1e-3))" in code
    pytester.makepyfile(test_snippet=MODEL + textwrap.dedent(code))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # the AdamW of the old snippet fails the same model: decay moves the random row 0
    adamw = code.replace("Adam(1e-3)", "AdamW(1e-3)")
    pytester.makepyfile(test_snippet=MODEL + textwrap.dedent(adamw))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*weight_decay*"])
