"""Issue 11: a new user's first hour. Options in every form, mistakes said once and early,
and every printed reproduce or rerun line RUN to check that it repeats the result."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from itertools import takewhile

import pytest

from pytest_padaudit import audit
from pytest_padaudit.plugin.settings import SETTINGS

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
from torch import nn

MODELS = """
import pytest, torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self, padding_idx=0):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 4, padding_idx=padding_idx)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(self.embed(ids))


@pytest.fixture
def model():
    print("MODEL FIXTURE RAN")
    return Tagger()


@pytest.fixture
def leaky():
    return Tagger(padding_idx=None)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("COLUMNS", "120")
    pytester.makeconftest(MODELS)
    return pytester


OPTIONS_TEST = """
import pytest

def test_options(padaudit, model):
    report = padaudit(model)
    print("OPTIONS", report.options["checks"], report.options["allow"],
          report.options["seq_len"], report.options["steps"])
"""


# -- options: every form users write, checked at start-up ---------------------------------


@pytest.mark.parametrize(
    "value",
    ['["grad", "update"]', '"grad,update"', '"grad update"', '"grad, update"'],
    ids=["toml-list", "commas", "spaces", "both"],
)
def test_list_options_take_toml_lists_commas_and_spaces(suite, value):
    suite.makepyprojecttoml(
        f"""
        [tool.pytest.ini_options]
        padaudit_checks = {value}
        padaudit_allow = ["tied", "no_padding_idx"]
        """
    )
    suite.makepyfile(OPTIONS_TEST)
    result = suite.runpytest("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["OPTIONS ['grad', 'update'] ['tied', 'no_padding_idx'] 16 1"])


def test_native_toml_numbers_and_lists(suite):
    if tuple(int(p) for p in pytest.__version__.split(".")[:2]) < (9, 2):
        pytest.skip("[tool.pytest] with typed values needs pytest 9.2")
    suite.makepyprojecttoml(
        """
        [tool.pytest]
        padaudit_checks = ["grad", "update"]
        padaudit_allow = ["tied"]
        padaudit_seq_len = 12
        padaudit_rtol = 0.5
        """
    )
    suite.makepyfile(OPTIONS_TEST)
    result = suite.runpytest("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["OPTIONS ['grad', 'update'] ['tied'] 12 1"])


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--padaudit-seed=-1"],
            "",
            "ERROR: --padaudit-seed=-1: seed=-1 is not valid: pass an int >= 0",
        ),
        (["--padaudit-checks=grad,bogus"], "", "ERROR: --padaudit-checks=grad,bogus: checks=*"),
        (["--padaudit-rtol=0"], "", "ERROR: --padaudit-rtol=0.0: rtol=0.0 is not valid: *"),
        ([], "padaudit_allow = gradient", "ERROR: ini option padaudit_allow = *allow=*"),
        ([], "padaudit_steps = 0", "ERROR: ini option padaudit_steps = *0*: steps=0 is not valid*"),
        (
            [],
            "padaudit_seq_len = long",
            "ERROR: ini option padaudit_seq_len = 'long' is not valid: pass an int, "
            "e.g. padaudit_seq_len = 16",
        ),
        (
            [],
            "padaudit_steps = 0\npadaudit_rtol = tight",
            "ERROR: 2 padaudit settings are not valid: ini option padaudit_steps = 0: "
            "steps=0 is not valid: pass an int >= 1; ini option padaudit_rtol = 'tight' is not "
            "valid: pass a number, e.g. padaudit_rtol = 1e-4",
        ),
    ],
)
def test_bad_values_stop_the_run_before_any_test_with_one_line(suite, args, ini, message):
    suite.makeini(f"[pytest]\n{ini}\n")
    suite.makepyfile(OPTIONS_TEST)
    result = suite.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # exit code 4
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1, result.errlines
    result.stderr.fnmatch_lines([message])
    assert "MODEL FIXTURE RAN" not in result.stdout.str() and "Traceback" not in errors[0]


def test_command_line_twins_share_the_ini_help_and_beat_ini(suite):
    help_text = suite.runpytest("--help").stdout.str()
    flat = " ".join(help_text.split())
    for s in SETTINGS:  # one help text per option, shown by both forms
        assert f"{s.flag}={s.metavar}" in flat and f"{s.text}; ini {s.ini}" in flat
        assert re.search(rf"{s.ini} \([^)]*\): {re.escape(s.text)}; {s.flag}", flat), s.ini
    suite.makeini("[pytest]\npadaudit_seq_len = 12\npadaudit_steps = 2\npadaudit_checks = grad\n")
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.padaudit(steps=3)
        def test_marker_beats_command_line(padaudit, model):
            report = padaudit(model, batch_size=5)
            o = report.options
            assert (o["seq_len"], o["steps"], o["batch_size"]) == (8, 3, 5)
            assert o["checks"] == ["grad", "update"] and o["rtol"] == 0.5
            assert o["allow"] == ["tied"] and report.seed == 9

        def test_command_line_beats_ini(padaudit, model):
            o = padaudit(model).options
            assert (o["seq_len"], o["steps"], o["batch_size"]) == (8, 4, 3)
        """
    )
    result = suite.runpytest(
        "--padaudit-seq-len=8",
        "--padaudit-steps=4",
        "--padaudit-batch-size=3",
        "--padaudit-checks=grad update",
        "--padaudit-rtol=0.5",
        "--padaudit-allow=tied",
        "--padaudit-seed=9",
    )
    result.assert_outcomes(passed=2)


def test_item_options_are_resolved_once_into_the_stash(suite):
    suite.makepyfile(
        """
        import pytest
        from pytest_padaudit.plugin.items import ITEM_OPTIONS

        pytestmark = pytest.mark.padaudit(seq_len=6)

        @pytest.mark.padaudit(steps=2)
        def test_resolved(model, request):
            opts = request.node.stash[ITEM_OPTIONS]
            assert (opts.checks, opts.seq_len, opts.steps, opts.batch_size) == (("grad",), 6, 2, 4)
            assert opts.given == {"checks", "seq_len", "steps"}  # the rest are defaults
        """
    )
    suite.runpytest("--padaudit-checks=grad").assert_outcomes(passed=1)


def test_options_are_validated_once_per_item_and_each_model_gets_one_handle(suite):
    suite.makeconftest(
        suite.path.joinpath("conftest.py").read_text()
        + """
import pytest_padaudit.core.engine as engine
import pytest_padaudit.core.options as options

COUNTS = {"validated": 0, "handles": 0}
_validators, _find = dict(options._VALIDATORS), engine.find_handle


def _counting(check):
    def counted(value):
        COUNTS["validated"] += 1
        return check(value)
    return counted


options._VALIDATORS.update({k: _counting(v) for k, v in _validators.items()})


def _find_counted(model, opts=None):
    COUNTS["handles"] += 1
    return _find(model, opts)


engine.find_handle = _find_counted


def pytest_sessionfinish(session):
    print("COUNTS", COUNTS["validated"], COUNTS["handles"])


def pytest_unconfigure(config):  # in-process runs share padaudit's modules: put them back
    options._VALIDATORS.update(_validators)
    engine.find_handle = _find
"""
    )
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.padaudit(seq_len=6, steps=2)
        def test_marked(model):
            pass
        """
    )
    result = suite.runpytest("-s", "--padaudit-checks=grad")
    result.assert_outcomes(passed=1)
    # checks once at start-up, seq_len and steps once at setup; one handle for one model
    result.stdout.fnmatch_lines(["*COUNTS 3 1*"])


# -- marker mistakes: early and once -------------------------------------------------------


def test_marker_keyword_errors_come_at_setup_once_without_plugin_frames(suite):
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.padaudit(setps=3)
        def test_typo(model):
            print("BODY RAN")

        @pytest.mark.padaudit(checks=("grads",))
        def test_bad_value(model):
            print("BODY RAN")

        @pytest.mark.padaudit
        def test_no_model(tmp_path):
            print("BODY RAN")
        """
    )
    result = suite.runpytest("-rE")
    result.assert_outcomes(errors=3)
    out = result.stdout.str()
    assert "BODY RAN" not in out and "MODEL FIXTURE RAN" not in out  # before any fixture
    assert "plugin.py" not in out and "Traceback" not in out and "During handling" not in out
    typo = "@pytest.mark.padaudit(setps=3) on test_typo: unknown padaudit option 'setps'"
    bad = "@pytest.mark.padaudit(checks=('grads',)) on test_bad_value: checks=('grads',) is not"
    none = "test_no_model is marked padaudit but none of its arguments is a model (arguments: "
    none += "tmp_path)"
    for message in (typo, bad, none):
        # said once; the short summary below repeats it whole when CI is set (pytest's own)
        assert _body(out).count(message) == 1, out
    assert "(did you mean 'setps' -> 'steps'?)" in out
    result.stdout.fnmatch_lines(["*ERROR at setup of test_typo*"])


# -- -m padaudit --------------------------------------------------------------------------


def test_dash_m_padaudit_selects_every_test_that_audits(suite):
    suite.makepyfile(
        zoo="from conftest import Tagger\n\ndef clean():\n    return Tagger()\n",
        test_select="""
        import pytest

        def test_fixture_only(padaudit, model):
            padaudit(model)

        @pytest.mark.padaudit
        def test_marker(model):
            pass

        def test_plain(model):
            pass

        def test_fixture_requested_but_not_called(padaudit):
            pass
        """,
    )
    result = suite.runpytest("-m", "padaudit", "-v", "--padaudit-model=zoo:clean")
    result.assert_outcomes(passed=4, deselected=1)
    result.stdout.fnmatch_lines(["*test_fixture_only PASSED*", "*test_marker PASSED*"])
    assert "test_plain" not in result.stdout.str()
    unmarked = suite.runpytest("-m", "not padaudit", "-v")
    unmarked.assert_outcomes(passed=1, deselected=3)
    unmarked.stdout.fnmatch_lines(["*test_plain PASSED*"])


# -- printed lines, run -------------------------------------------------------------------


def _line(out: str, label: str) -> str:
    match = re.search(rf"^(?:E\s+)?\W*{label}:\s+(.*)$", out, re.MULTILINE)  # E: raised
    assert match, out
    return match.group(1).strip()


def _values(out: str) -> list[str]:
    """Return each finding's headline (check, layer, pad id, measured value), once each."""
    found = re.findall(r"^\W*(\[\w+\] [^\n]*max\|[gΔ]\| = [^\n]*)$", out, re.MULTILINE)
    return list(dict.fromkeys(found))


def _body(out: str) -> str:
    """Return pytest's output above the short test summary (which CI=true prints whole)."""
    return out.split("short test summary info")[0]


def test_the_rerun_line_of_a_test_reruns_it_with_the_same_result(suite):
    suite.makepyfile(
        test_param="""
        import pytest

        @pytest.mark.parametrize("width", [4, 6], ids=["w4", "w6"])
        def test_leak(padaudit, leaky, width):
            padaudit(leaky, pad_idx=0, seq_len=width)
        """
    )
    first = suite.runpytest("--padaudit-seed=3")
    first.assert_outcomes(failed=2)
    out = first.stdout.str()
    rerun = _line(out, "rerun")
    assert rerun == "pytest 'test_param.py::test_leak[w4]' --padaudit-seed=3"
    again = suite.runpytest(*shlex.split(rerun)[1:])
    again.assert_outcomes(failed=1)
    assert _values(_body(again.stdout.str())) == _values(_body(out).split("test_leak[w6]")[0])[:2]


def test_the_zero_code_rerun_line_runs_and_repeats_the_failure(suite):
    suite.makepyfile(zoo="from conftest import Tagger\n\ndef leaky():\n    return Tagger(None)\n")
    suite.makepyfile(test_other="def test_other():\n    pass\n")
    first = suite.runpytest("--padaudit-model=zoo:leaky?pad_idx=0&seq_len=8", "--padaudit-seed=2")
    first.assert_outcomes(passed=1, failed=1)
    rerun = _line(first.stdout.str(), "rerun")
    assert rerun == "pytest 'padaudit[zoo:leaky?pad_idx=0&seq_len=8]' --padaudit-seed=2"
    again = suite.runpytest(*shlex.split(rerun)[1:])
    again.assert_outcomes(failed=1)  # only the audit, not test_other
    assert "path cannot contain" not in again.stdout.str() + again.stderr.str()
    assert _values(_body(again.stdout.str())) == _values(_body(first.stdout.str()))


class Tagger(nn.Module):
    def __init__(self, padding_idx: int | None = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 4, padding_idx=padding_idx)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(self.embed(ids))


def _findings(report) -> list[tuple[str, str, float]]:
    return [(f.check, f.layer, f.value) for f in report.findings]


def test_the_reproduce_call_runs_and_repeats_the_audit_with_a_torch_optimizer():
    model = Tagger(None)
    model.embed.weight.data[0] = 0.0  # zero pad row: only its gradient would move it
    params = [model.embed.weight]
    optimizer = torch.optim.AdamW(params, lr=0.05, weight_decay=0.3)
    report = audit(model, pad_idx=0, optimizer=optimizer, checks=("grad", "update"))
    line = report.reproduce
    assert "optimizer=lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.3)" in line
    again = eval(line, {"audit": audit, "model": model, "torch": torch})
    assert _findings(again) == _findings(report) and not again.passed


def test_a_plain_audit_prints_only_what_runs_outside_pytest():
    code = textwrap.dedent(
        """
        import torch
        from torch import nn
        from pytest_padaudit import audit

        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(20, 4), nn.Linear(4, 3))
        print(audit(model, pad_idx=0, checks=("grad",)).failure_message())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "reproduce: audit(model, pad_idx=0, seed=0, checks=('grad',))" in out.stdout
    assert "pytest" not in out.stdout and "rerun" not in out.stdout


def test_integer_outputs_get_advice_that_works():
    class Argmax(Tagger):
        def scores(self, ids):
            return super().forward(ids)

        def forward(self, ids):
            return self.scores(ids).argmax(-1)

    model = Argmax(None)
    with pytest.raises(Exception) as err:
        audit(model, pad_idx=0)
    message = str(err.value)
    assert "pass forward=" in message and "pass loss=" not in message
    advice = re.search(r"forward=(lambda model, batch: [^ ]+\))", message).group(1)
    report = audit(model, pad_idx=0, forward=eval(advice), checks=("grad",))
    # ground truth, plain torch: the pad row of an embedding without padding_idx trains
    ids = torch.tensor([[3, 4, 0]])
    model.zero_grad()
    model.scores(ids).sum().backward()
    truth = model.embed.weight.grad[0].abs().max().item()
    model.zero_grad()
    assert truth > 0 and not report.passed and report.findings[0].check == "grad"


# -- shrinking ------------------------------------------------------------------------------


def test_the_smallest_failing_batch_is_shrunk_and_its_plain_lines_reproduce(monkeypatch):
    import pytest_padaudit.core.engine as engine

    calls = []
    real = engine.run_audit
    monkeypatch.setattr(engine, "run_audit", lambda *a, **k: calls.append(1) or real(*a, **k))
    clean = audit(Tagger(0))
    assert clean.passed and clean.smallest is None and calls == [1]  # no shrinking on a pass

    calls.clear()
    model = Tagger(None)
    report = audit(model, pad_idx=0)
    small = report.smallest
    assert small is not None and 1 < len(calls) <= 1 + 12  # within the budget
    assert small["sequences"] == 1 and small["sequences"] < len(report.batch["ids"])
    assert small["real_tokens"] == 1 and small["pads"] == 1
    message = report.failure_message()
    assert f"ids = {small['ids']}" in message
    after = message.split("plain torch reproduction:\n")[1].split("\n")
    code = list(takewhile(lambda line: line.startswith("    "), after))  # the indented lines
    printed = []
    exec(  # the pasted lines, with plain torch only
        "\n".join(line.strip() for line in code),
        {"torch": torch, "model": model, "print": printed.append},
    )
    assert printed[0].item() > 0  # the pad row trains, as the audit said
    # ground truth for the shrunk ids: plain torch, no padaudit
    model.zero_grad()
    out = model(torch.tensor(small["ids"]))
    (out * torch.rand_like(out)).sum().backward()
    assert model.embed.weight.grad[0].abs().max().item() > 0
    model.zero_grad()


# -- print(report) and the pytest report agree ---------------------------------------------


def test_print_and_the_session_report_agree_on_every_verdict(suite, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    suite.makepyfile(
        test_agree="""
        import torch
        from torch import nn

        class MeanPool(nn.Module):  # masks the pad row, but its mean counts the pads
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.embed = nn.Embedding(20, 4, padding_idx=0)
                self.head = nn.Linear(4, 3)

            def forward(self, ids):
                return self.head(self.embed(ids).mean(1))

        def test_mean(padaudit):
            try:
                padaudit(MeanPool())
            except AssertionError:
                pass
            print()
            print("PRINTED", str(padaudit.reports[0]).splitlines()[3])
        """
    )
    result = suite.runpytest("-s", "--padaudit-report")
    printed = next(line for line in result.outlines if line.startswith("PRINTED"))
    row = next(line for line in result.outlines if line.startswith("test_agree.py::test_mean"))
    assert printed.endswith("LEAK: invariance") and row.endswith("LEAK: invariance")


def test_shrinking_leaves_the_model_and_rng_as_they_were():
    model = Tagger(None)
    model.embed.weight.grad = torch.full_like(model.embed.weight, 0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.eval()
    report = audit(model, pad_idx=0)
    assert report.smallest is not None and report.smallest["runs"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.embed.weight.grad, torch.full_like(model.embed.weight, 0.25))
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
