"""The README's demo: ``pytest examples`` passes the clean models and FAILS the leaky ones,
and every output sample in the README is what a fresh run of the demo prints."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _samples_module():
    spec = importlib.util.spec_from_file_location("samples", ROOT / "docs" / "samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_torch_demo_fails_its_leaky_model_with_the_full_message(pytester):
    result = pytester.runpytest_subprocess(str(EXAMPLES / "test_torch_models.py"))
    result.assert_outcomes(passed=4, failed=1)  # not hidden behind an xfail
    result.stdout.fnmatch_lines(
        [
            "padaudit found 3 pad leaks in LeakyClassifier (torch) in test *test_leaky_classifier",
            "[[]grad[]] embed (pad id 0): pad-row gradient max|g| = *",
            "    why:   nn.Embedding has no padding_idx*",
            "    fix:   construct it with padding_idx=0: nn.Embedding(1000, 32, padding_idx=0)",
            "    cause: no_padding_idx (allow=('no_padding_idx',) reports it without failing)",
            "*reproduce: audit(model, pad_idx=0, seed=0)",
            "*rerun:     pytest '*test_leaky_classifier' --padaudit-seed=0",
            "*smallest failing batch (1 sequence, *",
            "*FAILED *test_torch_models.py::test_leaky_classifier*",
        ]
    )


def test_readme_samples_are_what_the_demo_prints_now():
    """The README's demo command, run fresh: both frameworks, and the samples match."""
    pytest.importorskip("tensorflow")
    samples = _samples_module()
    output = samples.run_demo()
    assert re.search(r"= 2 failed, 5 passed in ", output), output[-3000:]
    readme = samples.README.read_text(encoding="utf-8")
    expected = samples.render(readme, samples.samples(output))
    changes = samples.diff(readme, expected)
    assert not changes, f"README samples are stale; run python docs/samples.py --write\n{changes}"
    assert "Functional (keras)" in readme and "LeakyClassifier (torch)" in readme


def test_readme_names_only_causes_that_exist_and_documents_each():
    from pytest_padaudit.core.options import CAUSES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"allow=\(['\"](\w+)['\"],?\)", readme))
    assert named and named <= set(CAUSES), named - set(CAUSES)
    causes = readme.split("\n## Causes\n", 1)[1].split("\n## ", 1)[0]
    assert [c for c in CAUSES if f"`{c}`" not in causes] == []
