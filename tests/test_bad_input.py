"""Every bad input raises one PadAuditError that says what to pass instead."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn

from pytest_padaudit import PadAuditError, audit

from support.torch_models import Tagger


def error_of(*args, **kwargs) -> str:
    with pytest.raises(PadAuditError) as err:
        audit(*args, **kwargs)
    return str(err.value)


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        ({"seed": -1}, ["seed=-1", "int >= 0"]),
        ({"batch_size": 1}, ["batch_size=1", "int >= 2"]),
        ({"seq_len": "16"}, ["seq_len='16'", "int >= 2"]),
        ({"steps": 0}, ["steps=0", "int >= 1"]),
        ({"loss": "mean"}, ["loss='mean'", "'all', 'masked'", "callable"]),
        ({"checks": ("grad", "grads")}, ["checks=", "grad, update, invariance"]),
        ({"checks": ()}, ["checks=()"]),
        ({"atol": -1.0}, ["atol=-1.0", ">= 0"]),
        ({"rtol": 0}, ["rtol=0", "> 0"]),
        ({"padding_side": "top"}, ["padding_side='top'", "'right', 'left'"]),
        ({"allow": ("everything",)}, ["allow=", "tied"]),
        ({"allow": ("tie",)}, ["allow=('tie',) is not valid (did you mean 'tie' -> 'tied'?)"]),
        (
            {"checks": "grad"},
            ["checks='grad' is a string: pass a tuple of names, checks=('grad',)"],
        ),
        (
            {"chekcs": ("grad",)},
            ["unknown padaudit option 'chekcs' (did you mean 'chekcs' -> 'checks'?)"],
        ),
        ({"forward": 3}, ["forward=3", "callable(model, batch)"]),
        ({"pad_idx": 0.0}, ["pad_idx=0.0", "as an int"]),
        ({"padaudit_seed": 1}, ["unknown padaudit option 'padaudit_seed'", "pass one of"]),
    ],
)
def test_bad_options(options, needles):
    message = error_of(Tagger(), **options)
    for needle in needles:
        assert needle in message


def test_not_a_model():
    message = error_of("bert-base-uncased")
    assert "cannot audit a builtins.str" in message and "torch.nn.Module" in message
    assert "keras.Model (Keras 3 on tensorflow, jax or torch" in message
    assert "flax.nnx.Module" in message  # listed by its entry point


def test_no_embedding():
    message = error_of(nn.Linear(3, 3))
    assert "no embedding table" in message and "Linear" in message


def test_no_pad_id_known_names_the_tables():
    message = error_of(Tagger(padding_idx=None))
    assert "embed (Embedding)" in message and "Pass pad_idx=" in message


def test_pad_id_out_of_range():
    message = error_of(Tagger(padding_idx=None), pad_idx=50)
    assert "pad id 50 is out of range for embed, which has 50 rows" in message
    assert "between 0 and 49" in message


def test_vocabulary_of_nothing_but_pads():
    message = error_of(nn.Embedding(1, 4, padding_idx=0))
    assert "nothing but pad ids [0]" in message and "vocab_size=" in message


def test_vocab_size_larger_than_the_table():
    assert "pass vocab_size= at most 50" in error_of(Tagger(), vocab_size=51)


def test_forward_raising_is_chained_with_the_batch_and_a_hint():
    class NeedsMask(Tagger):
        def forward(self, ids, mask):
            return super().forward(ids) * mask[..., None]

    with pytest.raises(PadAuditError) as err:
        audit(NeedsMask())
    message = str(err.value)
    assert "NeedsMask raised TypeError on the synthetic batch" in message
    assert "ids int64[4, 16]" in message and "torch.int64 on cpu" in message
    assert "forward=lambda model, batch:" in message
    assert isinstance(err.value.__cause__, TypeError)
    fixed = audit(NeedsMask(), forward=lambda m, b: m(b.ids, b.mask.float()))
    assert fixed.passed


def test_no_floating_point_output():
    class Argmax(Tagger):
        def forward(self, ids):
            return super().forward(ids).argmax(-1)

    assert "holds no floating-point tensor" in error_of(Argmax())


def test_output_that_does_not_need_grad():
    model = Tagger()
    model.requires_grad_(False)
    assert "depends on a trainable parameter" in error_of(model)


def test_bad_optimizer_arguments():
    assert "is not usable" in error_of(Tagger(), optimizer="adam")
    assert "returned int" in error_of(Tagger(), optimizer=lambda params: 3)
    message = error_of(Tagger(), optimizer=lambda params: torch.optim.SGD(params, lr=-1))
    assert "could not build an optimizer" in message and "factory" in message


def test_custom_loss_must_return_a_scalar():
    message = error_of(Tagger(), loss=lambda out, batch: out)
    assert "loss= returned" in message and "scalar" in message


def test_bad_marker_option_is_one_clear_error(pytester):
    pytester.makepyfile(
        """
        import pytest, torch

        @pytest.fixture
        def model():
            return torch.nn.Embedding(10, 4, padding_idx=0)

        @pytest.mark.padaudit(seq_len=1)
        def test_it(model):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)  # at setup, before the body (issue 11)
    result.stdout.fnmatch_lines(["*seq_len=1 is not valid: pass an int >= 2*"])
