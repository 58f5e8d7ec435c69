"""The pytest face: fixture, marker, options, ini twins, conftest hooks, start-up cost."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")

MODELS = """
import pytest, torch
from torch import nn

class Tagger(nn.Module):
    def __init__(self, padding_idx=0):
        super().__init__()
        self.embed = nn.Embedding(20, 4, padding_idx=padding_idx)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(self.embed(ids))

@pytest.fixture
def model():
    return Tagger()

@pytest.fixture
def leaky():
    return Tagger(padding_idx=None)
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(MODELS)
    return pytester


def test_fixture_passes_and_fails(suite):
    suite.makepyfile(
        """
        def test_clean(padaudit, model):
            report = padaudit(model)
            assert report.passed and report.test.endswith("test_clean")

        def test_leak(padaudit, leaky):
            padaudit(leaky, pad_idx=0)
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*PadLeakError: padaudit found 2 pad leaks in Tagger (torch) in test "
            "test_fixture_passes_and_fails.py::test_leak",
            "*[[]grad[]] embed (pad id 0): pad-row gradient max|g| = *",
            "*why:   nn.Embedding has no padding_idx*",
            "*fix:   construct it with padding_idx=0*",
            "*cause: no_padding_idx (allow=('no_padding_idx',) reports it without failing)",
            "*reproduce: audit(model, pad_idx=0, seed=0)",
            "*rerun:     pytest 'test_fixture_passes_and_fails.py::test_leak' --padaudit-seed=0",
        ]
    )


def test_marker_audits_model_arguments_after_the_body(suite):
    suite.makepyfile(
        """
        import pytest, torch

        @pytest.mark.padaudit(steps=3)
        def test_shapes(model):
            assert model(torch.ones(2, 5, dtype=torch.long)).shape == (2, 5, 3)

        @pytest.mark.padaudit(pad_idx=0)
        def test_leaky(leaky):
            pass

        @pytest.mark.padaudit(pad_idx=0)
        def test_body_fails_first(leaky):
            assert False, "the body's own failure"
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*padaudit found 2 pad leaks in Tagger*test_leaky*"])
    result.stdout.fnmatch_lines(["*the body's own failure*"])
    audited = [line for line in result.outlines if "padaudit found" in line]
    assert audited and not any("test_body_fails_first" in line for line in audited)


def test_marker_on_class_and_module_with_model_selection(suite):
    suite.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.padaudit(pad_idx=0)

        def test_module_level(leaky):
            pass

        @pytest.mark.padaudit(model="model")
        class TestOnlyModel:
            def test_selected(self, model, leaky):
                pass
        """
    )
    result = suite.runpytest("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_module_level FAILED*", "*test_selected PASSED*"])


def test_marker_without_a_model_is_an_error_that_says_so(suite):
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.padaudit
        def test_nothing(tmp_path):
            pass

        @pytest.mark.padaudit(model="missing")
        def test_wrong_name(model):
            pass
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*test_nothing is marked padaudit but none of its arguments is a model*",
            "*model='missing'): missing is not an argument of test_wrong_name*",
        ]
    )


def test_marker_is_registered_for_strict_markers(suite):
    result = suite.runpytest("--strict-markers", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.padaudit(**options, model=None):*"])


def test_precedence_ini_then_marker_then_call_then_cli_seed(suite):
    suite.makeini(
        """
        [pytest]
        padaudit_seq_len = 12
        padaudit_batch_size = 3
        padaudit_checks = grad update
        """
    )
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.padaudit(batch_size=5)
        def test_options(padaudit, model):
            report = padaudit(model, seed=11)
            assert report.options["seq_len"] == 12          # ini
            assert report.options["batch_size"] == 5        # marker beats ini
            assert report.options["checks"] == ["grad", "update"]
            pytest.seed_seen = report.seed
            assert report.seed == 7                         # --padaudit-seed beats the call
        """
    )
    suite.runpytest("--padaudit-seed=7").assert_outcomes(passed=1)


def test_bad_ini_value_is_a_usage_error(suite):
    suite.makeini("[pytest]\npadaudit_seq_len = long\n")
    result = suite.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*padaudit_seq_len = 'long' is not valid*"])


def test_conftest_hook_can_veto_a_leak(suite):
    suite.makeconftest(
        MODELS
        + """
def padaudit_audit_finished(report):
    for finding in report.findings:  # the hook knows which test audits
        if report.test.endswith("::test_leak") and finding.layer == "embed":
            finding.allowed = True
"""
    )
    suite.makepyfile(
        """
        def test_leak(padaudit, leaky):
            report = padaudit(leaky, pad_idx=0)
            assert report.findings and all(f.allowed for f in report.findings)
        """
    )
    suite.runpytest().assert_outcomes(passed=1)


def test_result_hook_runs_once_for_a_failing_shrunk_audit(suite):
    suite.makeconftest(
        MODELS
        + """
SEEN = []

def padaudit_audit_finished(report):
    SEEN.append((report.test, report.smallest is not None, report.passed))

def pytest_sessionfinish(session):
    print("SEEN", SEEN)
"""
    )
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.padaudit(pad_idx=0, optimizer="torch.optim.SGD(lr=0.5)")
        def test_leak(leaky):
            pass
        """
    )
    result = suite.runpytest("-s")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*SEEN [[]('test_result_hook_runs_once_for_a_failing_shrunk_audit.py::test_leak', "
            "True, False)[]]",
            "*found in * re-runs of the grad check): ids = *",
        ]
    )


def test_importing_the_plugin_imports_no_framework():
    code = (
        "import sys, pytest_padaudit, pytest_padaudit.plugin, pytest_padaudit.plugin.reporting, "
        "pytest_padaudit.render.report, pytest_padaudit.plugin.zeroitems\n"
        "heavy = ('numpy', 'torch', 'tensorflow', 'keras', 'transformers', 'h5py', 'safetensors')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "assert callable(pytest_padaudit.audit_checkpoint)  # lazily, after the check"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_session_without_audits_imports_no_framework(pytester):
    pytester.makepyfile(
        """
        import sys

        def test_plain():
            assert not {"torch", "numpy", "tensorflow"} & set(sys.modules)
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_start_up_imports_one_plugin_module(pytester):
    """A session that audits nothing loads the start-up module alone (issue 21).

    The settings, the marker's audits, the reports and the zero-code items load on first use.
    """
    pytester.makepyfile(
        """
        import sys

        def test_plain():
            plugin = sorted(m for m in sys.modules if m.startswith("pytest_padaudit.plugin"))
            assert plugin == ["pytest_padaudit.plugin"]
            assert "pytest_padaudit.core.options" not in sys.modules
            assert "pytest_padaudit.render.report" not in sys.modules
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_bad_setting_on_the_command_line_fails_start_up(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--padaudit-loss=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--padaudit-loss=bogus: *"])
