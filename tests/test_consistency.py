"""Bad input that used to get a raw traceback or a wrong answer (issue 15).

Each verdict is checked against plain torch: the pad row's gradient (or its change after a
plain optimizer step) computed without padaudit.
"""

from __future__ import annotations

import copy
import re
import threading
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn
from torch.nn.utils import parametrize

from pytest_padaudit import PadAuditError, audit

from support.torch_models import VOCAB, Tagger


def padded_ids(seed: int = 0, pad: int = 0) -> torch.Tensor:
    """A right-padded batch of ids, built by hand: 4 rows, lengths 8, 3, 5, 1."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (4, 8), generator=gen)
    for row, length in enumerate((8, 3, 5, 1)):
        ids[row, length:] = pad
    return ids


def plain_pad_grad(model: nn.Module, weight_of: object, out_of: object = None) -> float:
    """max|g| of the pad row of the table's (effective) weight after one backward pass."""
    ids = padded_ids()
    weights: list[torch.Tensor] = []

    def keep(module: nn.Module, args: object) -> None:
        weight = module.weight
        if not weight.is_leaf:
            weight.retain_grad()
        weights.append(weight)

    hook = weight_of.register_forward_pre_hook(keep)
    try:
        with parametrize.cached():  # the weight the hook sees is the one the lookup uses
            out = model(ids)
        out = out_of(out) if out_of else out
        out.float().sum().backward()
    finally:
        hook.remove()
    grads = [w.grad[0] for w in weights if w.grad is not None]
    model.zero_grad(set_to_none=True)
    return float(sum(grads).abs().max()) if grads else 0.0


# -- NumPy integers ----------------------------------------------------------------------
def test_numpy_numbers_are_numbers() -> None:
    plain = audit(Tagger(), seq_len=16, batch_size=4, seed=3, atol=0.0, steps=1)
    numpy = audit(
        Tagger(),
        seq_len=np.int64(16),
        batch_size=np.int32(4),
        seed=np.uint64(3),
        atol=np.float32(0.0),
        steps=np.int8(1),
    )
    assert numpy.passed and plain.passed
    assert numpy.options == plain.options and numpy.batch == plain.batch
    assert type(numpy.options["seq_len"]) is int and type(numpy.seed) is int
    with pytest.raises(PadAuditError, match=r"seq_len=.*int >= 2"):
        audit(Tagger(), seq_len=np.bool_(True))


# -- huge seeds --------------------------------------------------------------------------
class DropLeak(nn.Module):
    """No padding_idx and dropout: the pad row's gradient depends on the seeded RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(ids)))


@pytest.mark.parametrize("seed", [2**32 + 5, 2**63 + 5, 2**64 + 5, 10**30])
def test_huge_seeds_work_reproduce_and_are_reported_as_given(seed: int) -> None:
    torch.manual_seed(7)
    model = DropLeak()
    rng = torch.get_rng_state()
    first = audit(model, pad_idx=0, seed=seed, checks=("grad",))
    again = audit(model, pad_idx=0, seed=seed, checks=("grad",))
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.seed == seed and f"seed={seed}" in first.reproduce
    assert first.tables[0].grad == again.tables[0].grad > 0
    assert first.batch["seed"] == seed


def test_huge_seed_in_keras() -> None:
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(20, 4, mask_zero=True),
            keras.layers.Dropout(0.5),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2),
        ]
    )
    report = audit(model, seed=2**64 + 1)
    assert report.passed and report.seed == 2**64 + 1


# -- closure optimizers -------------------------------------------------------------------
def plain_lbfgs_moves_pad_row(model: nn.Module) -> float:
    """Step a copy of ``model`` with LBFGS (and a closure) in plain torch; return max|Δ|."""
    model = copy.deepcopy(model)
    ids = padded_ids()
    before = model.embed.weight.detach()[0].clone()
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=2)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model(ids).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float((model.embed.weight.detach()[0] - before).abs().max())


def test_lbfgs_steps_with_a_closure() -> None:
    leaky, clean = Tagger(padding_idx=None), Tagger()
    assert plain_lbfgs_moves_pad_row(leaky) > 0 and plain_lbfgs_moves_pad_row(clean) == 0
    state = {k: v.clone() for k, v in leaky.state_dict().items()}
    lbfgs = lambda params: torch.optim.LBFGS(params, max_iter=2)  # noqa: E731
    report = audit(leaky, pad_idx=0, optimizer=lbfgs, checks=("update",))
    (finding,) = report.findings
    assert (finding.check, finding.cause) == ("update", "no_padding_idx")
    assert "LBFGS" in finding.message and finding.value > 0
    assert all(torch.equal(v, leaky.state_dict()[k]) for k, v in state.items())
    assert audit(clean, optimizer=torch.optim.LBFGS).passed


def test_closure_optimizer_without_a_closure_is_one_error() -> None:
    from pytest_padaudit.adapters.torch.optim import PadRowStepper

    weight = nn.Parameter(torch.ones(3, 2))
    stepper = PadRowStepper([(weight, 0)], torch.optim.LBFGS)
    with pytest.raises(PadAuditError, match=r"LBFGS\.step\(\) needs a closure"):
        stepper.step()


# -- losses that do not depend on the model ---------------------------------------------
@pytest.mark.parametrize(
    "loss",
    [
        lambda out, batch: torch.tensor(1.0),
        lambda out, batch: torch.tensor(1.0, requires_grad=True),
        lambda out, batch: out.detach().sum(),
    ],
    ids=["constant", "constant-requires-grad", "detached"],
)
def test_constant_loss_is_one_error(loss: object) -> None:
    with pytest.raises(PadAuditError, match="does not depend on any trainable parameter"):
        audit(Tagger(padding_idx=None), pad_idx=0, loss=loss)


def test_constant_loss_in_keras_is_one_error() -> None:
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    model = keras.Sequential(
        [keras.Input((None,), dtype="int32"), keras.layers.Embedding(20, 4), keras.layers.Dense(2)]
    )
    with pytest.raises(PadAuditError, match="does not depend on the embedding tables"):
        audit(model, pad_idx=0, loss=lambda out, batch: tf.constant(1.0))


# -- 0-d outputs --------------------------------------------------------------------------
class WithAux(nn.Module):
    """Returns logits and a 0-d auxiliary loss over the real positions."""

    def __init__(self, padding_idx: int | None = 0) -> None:
        super().__init__()
        self.tagger = Tagger(padding_idx=padding_idx)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.tagger(ids)
        return {"logits": logits, "aux": logits[ids != 0].pow(2).mean()}


class ScalarOut(nn.Module):
    """Returns only a 0-d tensor: the sum over real positions (the leaky one: over all)."""

    def __init__(self, padding_idx: int | None = 0) -> None:
        super().__init__()
        self.tagger = Tagger(padding_idx=padding_idx)
        self.real_only = padding_idx is not None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.tagger(ids)
        return logits[ids != 0].sum() if self.real_only else logits.sum()


@pytest.mark.parametrize("cls", [WithAux, ScalarOut])
def test_zero_dim_outputs(cls: type[nn.Module]) -> None:
    leaky, clean = cls(padding_idx=None), cls()
    out_of = (lambda out: out["logits"].sum() + out["aux"]) if cls is WithAux else None
    assert plain_pad_grad(leaky, leaky.tagger.embed, out_of) > 0
    assert plain_pad_grad(clean, clean.tagger.embed, out_of) == 0
    report = audit(leaky, pad_idx=0)
    assert {(f.check, f.cause) for f in report.findings} >= {("grad", "no_padding_idx")}
    assert report.tables[0].grad > 0
    assert audit(clean).passed


# -- parametrized tables ------------------------------------------------------------------
class Double(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 2.0


def parametrized(padding_idx: int | None) -> Tagger:
    model = Tagger(padding_idx=padding_idx)
    parametrize.register_parametrization(model.embed, "weight", Double())
    return model


def weight_normed(padding_idx: int | None, new_api: bool) -> Tagger:
    model = Tagger(padding_idx=padding_idx)
    with torch.no_grad():  # a zero row has no direction: weight_norm would make it nan
        model.embed.weight[0] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if new_api:
            model.embed = nn.utils.parametrizations.weight_norm(model.embed)
        else:
            model.embed = nn.utils.weight_norm(model.embed)
    return model


MAKERS = {
    "parametrize": parametrized,
    "weight_norm": lambda pad: weight_normed(pad, new_api=False),
    "parametrizations.weight_norm": lambda pad: weight_normed(pad, new_api=True),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_parametrized_tables(kind: str) -> None:
    leaky, clean = MAKERS[kind](None), MAKERS[kind](0)
    assert plain_pad_grad(leaky, leaky.embed) > 0  # ground truth
    assert plain_pad_grad(clean, clean.embed) == 0
    before = {k: v.clone() for k, v in leaky.state_dict().items()}
    report = audit(leaky, pad_idx=0)
    found = {(f.check, f.cause) for f in report.findings}
    assert {("grad", "no_padding_idx"), ("update", "no_padding_idx")} <= found, found
    assert all(torch.equal(v, leaky.state_dict()[k]) for k, v in before.items())
    assert leaky.embed.sparse is False
    result = audit(clean)
    assert result.passed, result.failure_message()
    assert clean.embed.sparse is False


def test_parametrized_table_under_weight_decay() -> None:
    """Weight decay steps the original parameter; the computed pad row moves with it."""
    model = parametrized(0)
    with torch.no_grad():
        model.embed.parametrizations.weight.original[0] = 0.5
    plain = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(plain.parameters(), weight_decay=0.1)
    plain(padded_ids()).sum().backward()
    before = plain.embed.weight.detach()[0].clone()
    optimizer.step()
    assert float((plain.embed.weight.detach()[0] - before).abs().max()) > 0  # ground truth
    report = audit(
        model,
        checks=("update",),
        optimizer=lambda params: torch.optim.AdamW(params, weight_decay=0.1),
    )
    assert [(f.check, f.cause) for f in report.findings] == [("update", "weight_decay")]


# -- two audits at once --------------------------------------------------------------------
def test_two_audits_in_two_threads() -> None:
    """Audits in two threads neither change the caller's RNG nor each other's results."""
    torch.manual_seed(7)
    models = [DropLeak() for _ in range(2)]
    seeds = (11, 12)
    expected = {
        seed: audit(copy.deepcopy(models[i]), pad_idx=0, seed=seed, checks=("grad",)).tables[0].grad
        for i, seed in enumerate(seeds)
    }
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    results: dict[int, list[float]] = {seed: [] for seed in seeds}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(index: int) -> None:
        try:
            start.wait()
            for _ in range(6):
                model = copy.deepcopy(models[index])
                report = audit(model, pad_idx=0, seed=seeds[index], checks=("grad",))
                results[seeds[index]].append(report.tables[0].grad)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert torch.equal(torch.get_rng_state(), rng)
    for seed in seeds:
        assert results[seed] == [expected[seed]] * 6, (seed, results[seed], expected[seed])


# -- optimizers by dotted path: zero-code, markers, ini --------------------------------------
MODELS_PY = """
import torch
from torch import nn


def build():
    model = nn.Sequential(nn.Embedding(20, 4, padding_idx=0), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[0] = 0.5  # a non-zero pad row: padding_idx keeps its gradient zero
    return model
"""


def test_plain_adamw_moves_a_nonzero_pad_row() -> None:
    """Ground truth for the zero-code test: AdamW's decay moves the row, its gradient is 0."""
    namespace: dict[str, object] = {}
    exec(MODELS_PY, namespace)
    model = namespace["build"]()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    model(padded_ids() % 20).sum().backward()
    assert float(model[0].weight.grad[0].abs().max()) == 0
    before = model[0].weight.detach()[0].clone()
    optimizer.step()
    assert float((model[0].weight.detach()[0] - before).abs().max()) > 0


def test_zero_code_marker_and_ini_take_an_optimizer_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(models=MODELS_PY)
    spec = "models:build?optimizer=torch.optim.AdamW&lr=0.01&weight_decay=0.1&checks=update"
    result = pytester.runpytest(f"--padaudit-model={spec}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*[[]update[]] 0 (pad id 0): the pad row changed*AdamW step*",
            "*weight decay moved a non-zero pad row: AdamW(weight_decay=0.1)*",
            "*allow=('weight_decay',)*",
            "*optimizer='torch.optim.AdamW(lr=0.01, weight_decay=0.1)'*",
        ]
    )
    # the default optimizer has no decay: the audit passes, and says what decay would do
    plain = pytester.runpytest("--padaudit-model=models:build", "-rP", "-p", "no:cacheprovider")
    plain.assert_outcomes(passed=1)
    plain.stdout.fnmatch_lines(["*0: the pad row is not zero*lr*wd*|row| per step*optimizer=*"])

    pytester.makepyfile(
        test_marked="""
        import pytest
        from models import build

        @pytest.fixture
        def model():
            return build()

        @pytest.mark.padaudit(optimizer="torch.optim.AdamW(weight_decay=0.1)")
        def test_marked(model):
            pass

        @pytest.mark.padaudit
        def test_ini(model):
            pass
        """
    )
    pytester.makeini("[pytest]\npadaudit_optimizer = torch.optim.SGD(lr=0.1, weight_decay=0.5)\n")
    marked = pytester.runpytest("test_marked.py", "-p", "no:cacheprovider")
    marked.assert_outcomes(failed=2)
    marked.stdout.fnmatch_lines(
        ["*AdamW(weight_decay=0.1) shrinks every row*", "*SGD(weight_decay=0.5) shrinks every row*"]
    )


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("torch.optim.AdamX", "torch.optim has no AdamX"),
        ("nosuchpkg.Opt", "cannot import 'nosuchpkg'"),
        ("torch.optim.AdamW(0.1)", "dotted path"),
        ("torch.optim.AdamW(lr=x)", "keyword values must be literals"),
        ("torch.optim.AdamW(", "dotted path"),
        ("torch.optim.Optimizer.step", "not a class"),
    ],
)
def test_bad_optimizer_paths_are_one_error(spec: str, needle: str) -> None:
    with pytest.raises(PadAuditError, match=re.escape(needle)):
        audit(Tagger(), optimizer=spec)


def test_two_keras_audits_in_two_threads() -> None:
    """Keras audits in two threads leave TF's global generator as they found it."""
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")

    def build() -> object:
        keras.utils.set_random_seed(3)
        return keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(20, 4),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(2),
            ]
        )

    models = [build(), build()]
    expected = [
        audit(m, pad_idx=0, seed=s, checks=("grad",)).tables[0].grad
        for m, s in zip(models, (5, 6), strict=True)
    ]
    generator = tf.random.get_global_generator()
    state = generator.state.numpy().copy()
    results: list[list[float]] = [[], []]
    errors: list[BaseException] = []

    start = threading.Barrier(2)

    def work(index: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                report = audit(models[index], pad_idx=0, seed=5 + index, checks=("grad",))
                results[index].append(report.tables[0].grad)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert tf.random.get_global_generator() is generator
    np.testing.assert_array_equal(generator.state.numpy(), state)
    assert results == [[expected[0]] * 3, [expected[1]] * 3]
