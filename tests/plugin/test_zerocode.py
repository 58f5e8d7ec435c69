"""Zero-code audits: --padaudit-model and --padaudit-checkpoint generate test items."""

from __future__ import annotations

import importlib.util

import pytest

from pytest_padaudit import PadAuditError
from pytest_padaudit.plugin.zeroitems import parse_spec

# In-process pytester runs drop modules first imported inside them; a C extension such as
# torch must not be imported twice, so import the frameworks here, before any run.
torch = pytest.importorskip("torch")
if importlib.util.find_spec("transformers") is not None:
    import transformers
    from transformers import BertForMaskedLM  # noqa: F401  (loads the lazy submodule)
else:
    transformers = None

ZOO = """
import torch
from torch import nn


class Bag(nn.Module):
    def __init__(self, padding_idx=0):
        super().__init__()
        self.emb = nn.Embedding(20, 6, padding_idx=padding_idx)
        self.out = nn.Linear(6, 3)

    def forward(self, ids):
        return self.out(self.emb(ids))


def clean():
    return Bag(0)


def leaky():
    return Bag(None)


MODEL = Bag(0)
NUMBER = 3


def not_a_model():
    return "hello"
"""


@pytest.fixture
def zoo(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(**{"zoo/__init__": "", "zoo/models": ZOO})
    return pytester


def test_parse_spec_reads_literals_strings_and_lists() -> None:
    target, options = parse_spec(
        "pkg.mod:make?pad_idx=0&seq_len=32&padding_side=left&allow=tied&checks=grad,update",
        "--padaudit-model",
    )
    assert target == "pkg.mod:make"
    assert options == {
        "pad_idx": 0,
        "seq_len": 32,
        "padding_side": "left",
        "allow": ("tied",),  # one name is a tuple of one
        "checks": ("grad", "update"),
    }
    assert parse_spec("pkg.mod:make?allow=('tied',)", "--x")[1] == {"allow": ("tied",)}
    with pytest.raises(PadAuditError, match="has no value"):
        parse_spec("pkg.mod:make?pad_idx", "--x")


def test_model_factories_become_items(zoo: pytest.Pytester) -> None:
    result = zoo.runpytest(
        "-v",
        "--padaudit-model=zoo.models:clean",
        "--padaudit-model=zoo.models:leaky?pad_idx=0&seq_len=8",
        "--padaudit-model=zoo.models:MODEL",
        "--padaudit-model=zoo.models:Bag",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*collected 4 items",
            "padaudit?zoo.models:clean? PASSED*",
            "padaudit?zoo.models:leaky?pad_idx=0&seq_len=8? FAILED*",
            "*[[]grad[]] emb (pad id 0): pad-row gradient max|g| = *",
            "*why:   nn.Embedding has no padding_idx*",
            "*reproduce: audit(model, pad_idx=0, seed=0, seq_len=8)*",
            "*batch: ids int64[[]4, 8[]]*",
        ]
    )


def test_a_factory_that_returns_no_model_fails_in_one_line(zoo: pytest.Pytester) -> None:
    result = zoo.runpytest("--padaudit-model=zoo.models:not_a_model")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "PadAuditError: --padaudit-model=zoo.models:not_a_model: the factory returned a "
            "builtins.str, not a model padaudit can audit*"
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_spec_errors_are_one_line_usage_errors(zoo: pytest.Pytester) -> None:
    result = zoo.runpytest(
        "--padaudit-model=zoo.nothere:make",
        "--padaudit-model=zoo.models:nothere",
        "--padaudit-model=zoo.models:NUMBER",
        "--padaudit-model=zoo.models",
        "--padaudit-model=zoo.models:clean?bogus=1",
        "--padaudit-model=zoo.models:clean?sed=1",
        "--padaudit-checkpoint=clean.pt?expct=clean",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --padaudit-model=zoo.nothere:make: no module named 'zoo.nothere'*",
            "ERROR: --padaudit-model=zoo.models:nothere: zoo.models has no attribute "
            "'nothere': pass one of Bag, *",
            "ERROR: --padaudit-model=zoo.models:NUMBER: zoo.models:NUMBER is a int, neither a "
            "model nor a callable that returns one*",
            "ERROR: --padaudit-model=zoo.models: expected MODULE:FACTORY*",
            "ERROR: --padaudit-model=zoo.models:clean?bogus=1: unknown padaudit option 'bogus'*",
            "ERROR: --padaudit-model=zoo.models:clean?sed=1: unknown padaudit option 'sed' "
            "(did you mean 'sed' -> 'seed'?)*",
            "ERROR: --padaudit-checkpoint=clean.pt?expct=clean: unknown option expct "
            "(did you mean 'expct' -> 'expect'?): pass allow, *",
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_hugging_face_factory_with_inline_allow(pytester: pytest.Pytester) -> None:
    if transformers is None:
        pytest.skip("transformers is not installed")
    pytester.makepyfile(
        hfzoo="""
        import transformers

        def mlm():
            config = transformers.BertConfig(
                vocab_size=99, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=24, max_position_embeddings=64,
            )
            return transformers.BertForMaskedLM(config)
        """
    )
    result = pytester.runpytest(
        "--padaudit-model=hfzoo:mlm", "--padaudit-model=hfzoo:mlm?allow=tied", "-rA"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*why:   the LM head cls.predictions.decoder shares this weight*"])


def test_checkpoint_option(pytester: pytest.Pytester) -> None:
    clean = torch.nn.Embedding(10, 4, padding_idx=0)
    dirty = torch.nn.Embedding(10, 4)
    torch.save({"emb.weight": clean.weight.detach()}, pytester.path / "clean.pt")
    torch.save({"emb.weight": dirty.weight.detach()}, pytester.path / "dirty.pt")
    result = pytester.runpytest(
        "-v",
        "--padaudit-checkpoint=clean.pt?pad_idx=0",
        "--padaudit-checkpoint=dirty.pt?pad_idx=0",
        "--padaudit-checkpoint=dirty.pt?pad_idx=0&baseline=dirty.pt",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "padaudit-checkpoint?clean.pt?pad_idx=0? PASSED*",
            "padaudit-checkpoint?dirty.pt?pad_idx=0? FAILED*",
            "*[[]zero[]] emb.weight (pad id 0): the pad row is not zero*shape [[]10, 4[]]*",
        ]
    )
    missing = pytester.runpytest("--padaudit-checkpoint=nothere.pt")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["ERROR: --padaudit-checkpoint=nothere.pt: no file *"])


def test_a_generated_item_id_is_a_command_line_argument(pytester: pytest.Pytester) -> None:
    """``pytest 'padaudit-checkpoint[...]'`` (a node id pytest would reject as a path) runs
    that item alone, as the rerun lines print it."""
    dirty = torch.nn.Embedding(10, 4)
    torch.save({"emb.weight": dirty.weight.detach()}, pytester.path / "dirty.pt")
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    result = pytester.runpytest("-v", "padaudit-checkpoint[dirty.pt?pad_idx=0]")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["padaudit-checkpoint?dirty.pt?pad_idx=0? FAILED*"])
    assert "test_other" not in result.stdout.str()
    both = pytester.runpytest("padaudit-checkpoint[dirty.pt?pad_idx=0]", "test_other.py")
    both.assert_outcomes(passed=1, failed=1)
