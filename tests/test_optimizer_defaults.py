"""Defaults a careful user would choose: the model's own optimizer, else a weight-decay note."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pytest_padaudit import audit

from support.torch_models import Tagger

WOULD_MOVE = "an optimizer with weight decay would move this row by lr*wd*|row| per step"


def nonzero_pad(model: Tagger, value: float = 0.5) -> Tagger:
    with torch.no_grad():
        model.embed.weight[0] = value
    return model


class Lit(Tagger):
    """A LightningModule look-alike: it builds its own optimizer (no lightning import)."""

    def __init__(self, decay: float, form: str = "dict") -> None:
        super().__init__()
        self.decay, self.form = decay, form
        self.built: list[torch.optim.Optimizer] = []

    def configure_optimizers(self) -> object:
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=self.decay)
        self.built.append(optimizer)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
        if self.form == "dict":
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        return [optimizer], [scheduler]


def plain_adamw_moves(row: torch.Tensor, decay: float) -> float:
    """Ground truth: one AdamW step with a zero gradient moves a non-zero row by lr*wd*|x|."""
    param = torch.nn.Parameter(row.clone())
    optimizer = torch.optim.AdamW([param], lr=0.01, weight_decay=decay)
    param.grad = torch.zeros_like(param)
    optimizer.step()
    return float((param.detach() - row).abs().max())


@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_configure_optimizers_is_used_by_default(form: str) -> None:
    model = nonzero_pad(Lit(0.1, form))
    assert plain_adamw_moves(model.embed.weight.detach()[0], 0.1) > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = audit(model, checks=("grad", "update"))
    assert [(f.check, f.cause) for f in report.findings] == [("update", "weight_decay")]
    assert "AdamW(weight_decay=0.1)" in report.findings[0].why
    assert any("AdamW from Lit.configure_optimizers()" in n for n in report.notes)
    assert not any(WOULD_MOVE in n for n in report.notes)
    assert all(not opt.state for opt in model.built)  # the model's optimizer never stepped
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # the user's optimizer= still wins
    assert audit(model, optimizer=torch.optim.SGD).passed


def test_configure_optimizers_without_decay_passes_without_a_note() -> None:
    model = nonzero_pad(Lit(0.0))
    assert plain_adamw_moves(model.embed.weight.detach()[0], 0.0) == 0
    report = audit(model)
    assert report.passed, report.failure_message()
    assert not any(WOULD_MOVE in n for n in report.notes)


def test_configure_optimizers_that_needs_a_trainer_falls_back_with_a_note() -> None:
    class NeedsTrainer(Tagger):
        def configure_optimizers(self) -> object:
            raise RuntimeError("not attached to a `Trainer`")

    report = audit(nonzero_pad(NeedsTrainer()))
    assert report.passed
    assert any("configure_optimizers() raised RuntimeError" in n for n in report.notes)
    assert any(WOULD_MOVE in n for n in report.notes)


def test_weight_decay_note_on_a_nonzero_pad_row() -> None:
    model = nonzero_pad(Tagger(), 0.5)
    norm = float(torch.linalg.norm(model.embed.weight.detach()[0]))
    report = audit(model)
    assert report.passed  # a note, not a failure
    (note,) = [n for n in report.notes if WOULD_MOVE in n]
    assert note.startswith(f"embed: the pad row is not zero (|row| = {norm:.3g})")
    assert "pass optimizer= to check" in note
    assert report.tables[0].pad_norm == pytest.approx(norm)
    clean = audit(Tagger())  # padding_idx zeroes the row: nothing to say
    assert clean.tables[0].pad_norm == 0.0
    assert not any(WOULD_MOVE in n for n in clean.notes)
    decayed = audit(model, optimizer=lambda p: torch.optim.AdamW(p, weight_decay=0.1))
    assert [f.cause for f in decayed.findings] == ["weight_decay"]


@pytest.fixture
def keras_model() -> object:
    keras = pytest.importorskip("keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(20, 4, mask_zero=True),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(2),
            ]
        )


def test_compiled_keras_model_uses_its_optimizer(keras_model: object) -> None:
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    table = keras_model.layers[0].embeddings
    row = np.asarray(table)[0].copy()
    assert np.abs(row).max() > 0  # Keras initialises the pad row randomly
    plain = tf.Variable(np.asarray(table))
    keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.1).apply_gradients(
        [(tf.zeros_like(plain), plain)]
    )
    assert np.abs(plain.numpy()[0] - row).max() > 0  # ground truth: decay moves it

    uncompiled = audit(keras_model, checks=("grad", "update"))
    assert uncompiled.passed and any(WOULD_MOVE in n for n in uncompiled.notes)

    user = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.1)
    keras_model.compile(optimizer=user, loss="mse")
    report = audit(keras_model, checks=("grad", "update"))
    assert [(f.check, f.cause) for f in report.findings] == [("update", "weight_decay")]
    assert any("from model.optimizer" in n for n in report.notes)
    assert keras_model.optimizer is user and int(user.iterations.numpy()) == 0
    assert not user.built  # never stepped, never built: its state is untouched
    np.testing.assert_array_equal(np.asarray(table)[0], row)


class LeakyLit(Tagger):
    """No padding_idx, and a configure_optimizers() that must not be what the shrinker steps."""

    def __init__(self) -> None:
        super().__init__(padding_idx=None)
        self.configured = 0

    def configure_optimizers(self) -> object:
        self.configured += 1
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_shrink_reruns_step_the_audits_optimizer_not_the_models() -> None:
    built: list[str] = []

    def sgd(params: object) -> torch.optim.Optimizer:
        built.append("SGD")
        return torch.optim.SGD(params, lr=0.1)

    model = LeakyLit()
    report = audit(model, pad_idx=0, optimizer=sgd, checks=("update",))
    assert [f.check for f in report.leaks] == ["update"]
    assert report.smallest is not None and report.smallest["runs"] >= 1
    assert len(built) == 1 + report.smallest["runs"]  # the audit, then each re-run
    assert model.configured == 0
    assert report.optimizer == report.smallest["optimizer"] == "SGD"
    assert "re-runs of the update check, stepping SGD)" in report.failure_message()
