"""The Flax NNX adapter against ground truth computed with plain jax.grad (no padaudit)."""

from __future__ import annotations

import pytest

pytest.importorskip("flax.nnx")  # not "flax": tests/flax would pass as a namespace package
optax = pytest.importorskip("optax")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pytest_padaudit
from pytest_padaudit import PadAuditError, audit
from pytest_padaudit.adapters.flax import ADAPTER, FlaxAdapter
from pytest_padaudit.adapters.flax.handle import FlaxHandle
from pytest_padaudit.core.batch import LossPlan, make_batch
from pytest_padaudit.core.engine import find_handle
from pytest_padaudit.core.hooks import plugin_manager
from pytest_padaudit.core.options import AuditOptions

from flax_zoo import (
    PAD,
    ZOO,
    Attention,
    MeanPool,
    Recurrent,
    TiedHead,
    invariance_gap,
    pad_row_grad,
)

RTOL = 1e-4  # the audit's default rtol


@pytest.fixture(autouse=True)
def flax_adapter():
    """Register the adapter by hand unless its entry point did (an install that predates
    the ``padaudit`` entry point in pyproject.toml); test_flax_plugin.py tests the latter."""
    by_hand = not plugin_manager().is_registered(ADAPTER)
    if by_hand:
        pytest_padaudit.register(ADAPTER, name="padaudit-flax-by-hand")
    yield
    if by_hand:
        pytest_padaudit.unregister(ADAPTER)


def _ids(report) -> np.ndarray:
    return np.asarray(report.batch["ids"], np.int32)


def _causes(report, check: str | None = None) -> set[str]:
    return {f.cause for f in report.findings if check is None or f.check == check}


EXPECTED = {  # (pad row trains, pad columns change what real positions learn)
    "masked_mean": (False, False),
    "unmasked_mean": (True, True),
    "attention_masked": (False, False),
    "attention_unmasked": (True, True),
    "rnn_over_pads": (True, True),
    "rnn_seq_lengths": (False, False),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_verdicts_match_plain_jax_grad(name):
    model = ZOO[name]()
    report = audit(model, pad_idx=PAD)
    ids = _ids(report)
    grad_truth = pad_row_grad(model, ids) > 0.0
    gap = invariance_gap(model, ids, extra=AuditOptions().extra_columns)
    assert (grad_truth, gap > RTOL) == EXPECTED[name], (name, gap)  # the zoo is what it says
    assert ("grad" in {f.check for f in report.findings}) == grad_truth
    assert (report.invariance.value > RTOL) == (gap > RTOL)
    assert ("invariance" in {f.check for f in report.findings}) == (gap > RTOL)
    if grad_truth:  # the layer does not stop the pad row's gradient: torch/keras' code
        assert _causes(report, "grad") == {"no_padding_idx"}
        assert _causes(report, "update") == {"no_padding_idx"}  # sgd(1.0) moved it
        finding = next(f for f in report.findings if f.check == "grad")
        assert finding.layer == "embed" and finding.pad_idx == PAD
        assert "x * m" in finding.fix and "make_attention_mask" in finding.fix
    else:
        assert report.passed, [f.message for f in report.findings]
        assert report.tables[0].grad == 0.0 and report.tables[0].update == 0.0


def test_pad_row_gradient_value_is_the_weighted_sums():
    """The adapter's pad-row gradient equals jax.grad's with the audit's own weights."""
    model = MeanPool(masked=False)
    handle = FlaxHandle(model, AuditOptions(pad_idx=PAD))
    (table,) = handle.tables(PAD)
    batch = make_batch(batch_size=4, seq_len=16, vocab_size=40, pad_idx=PAD, seed=3)
    plan = LossPlan(batch, "all", 3)
    with handle.preserve(3):
        got = handle.train_pass(batch, plan, [table])["embed"]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.asarray(batch.ids, jnp.int32)

    def f(p):
        out = nnx.merge(graphdef, p, nnx.as_pure(rest))(ids)
        return jnp.sum(out * plan.weights(0, out.shape))

    want = jax.grad(f)(nnx.as_pure(params))["embed"]["embedding"][PAD]
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-7)
    assert np.abs(got).max() > 0


def test_tied_head_is_reported_as_tied_not_as_the_lookup():
    model = TiedHead()
    report = audit(model, pad_idx=PAD)
    ids = _ids(report)
    total = pad_row_grad(model, ids)
    model.stop_head = True
    lookup_only = pad_row_grad(model, ids)
    model.stop_head = False
    assert total > 0.0 and lookup_only == 0.0  # ground truth: all of it comes via attend
    assert "tied" in _causes(report)
    assert "no_padding_idx" not in _causes(report)
    assert report.tables[0].grad == 0.0  # the lookups' part
    tied = next(f for f in report.findings if f.cause == "tied")
    assert "embed.attend" in tied.why and "allow=('tied',)" in tied.fix


def test_tied_split_adds_up_to_jax_grad():
    """Lookup part + head part == the full gradient; lookup part == stop-gradient truth."""

    class Both(TiedHead):
        def __call__(self, ids):
            x = nnx.tanh(self.proj(self.embed(ids))).mean(axis=1)  # unmasked
            return self.embed.attend(x)

    model = Both()
    handle = FlaxHandle(model, AuditOptions(pad_idx=PAD))
    (table,) = handle.tables(PAD)
    batch = make_batch(batch_size=4, seq_len=16, vocab_size=40, pad_idx=PAD, seed=0)
    plan = LossPlan(batch, "all", 0)
    with handle.preserve(0):
        lookup = handle.train_pass(batch, plan, [table])["embed"]
        head = handle.head_grads()["embed"]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids, rest = jnp.asarray(batch.ids, jnp.int32), nnx.as_pure(rest)

    def f(p, stop_lookup):
        copy = nnx.merge(graphdef, p, rest)
        e = copy.embed.embedding[...]
        x = jnp.take(jax.lax.stop_gradient(e) if stop_lookup else e, ids, axis=0)
        out = nnx.tanh(copy.proj(x)).mean(axis=1) @ e.T
        return jnp.sum(out * plan.weights(0, out.shape))

    pure = nnx.as_pure(params)
    full = np.asarray(jax.grad(f)(pure, False)["embed"]["embedding"][PAD])
    head_truth = np.asarray(jax.grad(f)(pure, True)["embed"]["embedding"][PAD])
    np.testing.assert_allclose(head, head_truth, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lookup + head, full, rtol=1e-5, atol=1e-6)
    assert np.abs(lookup).max() > 0 and np.abs(head).max() > 0


@pytest.mark.parametrize("holder", ["optax", "nnx.Optimizer"])
def test_adamw_on_a_nonzero_pad_row_is_weight_decay(holder):
    model = MeanPool(masked=True)
    tx = optax.adamw(1e-3, weight_decay=1e-2)
    spec = tx if holder == "optax" else nnx.Optimizer(model, tx, wrt=nnx.Param)
    state_before = (
        jax.tree_util.tree_leaves(nnx.as_pure(spec.opt_state)) if holder != "optax" else []
    )
    report = audit(model, pad_idx=PAD, optimizer=spec)
    # ground truth: zero gradient on the pad row, and one plain adamw step moves it
    ids = _ids(report)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    grads = jax.grad(lambda p: _loss(model, p, ids))(params)
    assert float(jnp.abs(grads["embed"]["embedding"][PAD]).max()) == 0.0
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["embed"]["embedding"][PAD]).max()) > 0.0
    assert _causes(report) == {"weight_decay"}
    (finding,) = report.findings
    assert finding.check == "update" and "optax.adamw" in finding.message
    assert "weight_decay=0.01" in finding.why and "mask=" in finding.fix
    for before, after in zip(
        state_before,
        jax.tree_util.tree_leaves(nnx.as_pure(getattr(spec, "opt_state", ()))),
        strict=True,
    ):
        assert np.array_equal(np.asarray(before), np.asarray(after))  # its state: untouched


def _loss(model, params, ids):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    out = nnx.merge(graphdef, params, nnx.as_pure(rest))(jnp.asarray(ids))
    return jnp.sum(out * (np.random.default_rng(1).random(out.shape, dtype=np.float32) + 0.5))


def test_adamw_leaves_a_zero_pad_row_alone():
    model = MeanPool(masked=True)
    e = model.embed.embedding
    e[...] = e[...].at[PAD].set(0)
    report = audit(model, pad_idx=PAD, optimizer=optax.adamw(1e-3, weight_decay=1e-2), steps=2)
    assert report.passed and report.tables[0].update == 0.0


class Noisy(nnx.Module):
    """Dropout, batch norm and an RNG stream: state an audit must put back."""

    def __init__(self) -> None:
        rngs = nnx.Rngs(0, dropout=1)
        self.embed = nnx.Embed(40, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, ids):
        x = self.norm(self.drop(self.embed(ids)).reshape(-1, 8)).reshape(*ids.shape, 8)
        return self.head(x.mean(axis=1))


def _leaves(model) -> list[tuple[str, np.ndarray]]:
    out = []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        value = var.get_value()
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        out.append((str(path), np.array(value)))
    return out


@pytest.mark.parametrize("fail", [False, True])
def test_state_is_restored_bitwise(fail):
    model = Noisy()
    model.eval()
    before = _leaves(model)
    variables = [id(v) for _, v in nnx.to_flat_state(nnx.state(model))]
    calls = []

    def forward(m, batch):
        calls.append(batch.training)
        if fail and len(calls) == 2:
            raise RuntimeError("boom")
        return m(batch.ids)

    kwargs = dict(pad_idx=PAD, forward=forward, steps=3, optimizer=optax.adamw(0.1))
    if fail:
        with pytest.raises(PadAuditError, match="boom"):
            audit(model, **kwargs)
    else:
        report = audit(model, **kwargs)
        assert not report.passed  # it trained and stepped something
        assert True in calls and False in calls  # train passes and eval passes ran
    after = _leaves(model)
    assert [p for p, _ in before] == [p for p, _ in after]
    for (path, a), (_, b) in zip(before, after, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), path
    assert [id(v) for _, v in nnx.to_flat_state(nnx.state(model))] == variables
    assert model.drop.deterministic is True and model.norm.use_running_average is True


def test_reset_restores_the_params_inside_the_block():
    model = MeanPool(masked=False)
    handle = FlaxHandle(model, AuditOptions(pad_idx=PAD))
    (table,) = handle.tables(PAD)
    batch = make_batch(batch_size=4, seq_len=16, vocab_size=40, pad_idx=PAD)
    with handle.preserve(0):
        start = handle.read_pad_rows([table])["embed"]
        info = handle.make_optimizer([table], None)
        handle.train_pass(batch, LossPlan(batch, "all", 0), [table])
        handle.step(info)
        assert not np.array_equal(handle.read_pad_rows([table])["embed"], start)
        handle.reset()
        assert np.array_equal(handle.read_pad_rows([table])["embed"], start)


def test_lookups_tell_token_tables_from_positions():
    class WithPositions(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.tokens = nnx.Embed(40, 8, rngs=rngs)
            self.positions = nnx.Embed(64, 8, rngs=rngs)
            self.unused = nnx.Embed(5, 8, rngs=rngs)

        def __call__(self, ids):
            pos = jnp.arange(ids.shape[1])[None, :]
            return (self.tokens(ids) + self.positions(pos)).mean(axis=1)

    handle = FlaxHandle(WithPositions(), AuditOptions(pad_idx=PAD))
    handle.tables(PAD)
    batch = make_batch(batch_size=4, seq_len=16, vocab_size=40, pad_idx=PAD)
    seen = handle.lookups(batch)
    assert np.array_equal(seen["tokens"], np.unique(batch.ids))
    assert np.array_equal(seen["positions"], np.arange(16))
    assert seen["unused"].size == 0


def test_perturbed_pad_vectors_reach_only_a_leaky_model():
    batch = make_batch(batch_size=4, seq_len=16, vocab_size=40, pad_idx=PAD)
    plan = LossPlan(batch, "real", 0)
    for masked in (True, False):
        handle = FlaxHandle(MeanPool(masked=masked), AuditOptions(pad_idx=PAD))
        tables = handle.tables(PAD)
        with handle.preserve(0):
            _, plain = handle.invariance_pass(batch, plan, tables)
            _, noisy = handle.invariance_pass(batch, plan, tables, perturb=5)
        assert np.array_equal(plain[0], noisy[0]) == masked


def test_trace_records_submodules_in_finish_order():
    handle = FlaxHandle(Attention(masked=False), AuditOptions(pad_idx=PAD))
    batch = make_batch(batch_size=4, seq_len=16, vocab_size=40, pad_idx=PAD)
    trace = handle.trace(batch)
    paths = [path for path, _, _ in trace.entries]
    assert paths.index("attn") > paths.index("embed") and paths[-1] == "head"
    _, _inputs, outputs = trace.entries[paths.index("attn")]
    assert outputs[0].shape == (4, 16, 8)  # full arrays: the engine cuts real positions
    cause, why, fix = handle.explain("invariance", None, AuditOptions(pad_idx=PAD), "attn")
    assert cause == "invariance" and "pad keys" in why and "nnx.make_attention_mask" in fix
    _, _, fix = handle.explain("invariance", None, AuditOptions(pad_idx=PAD), None)
    assert "jnp.sum(x * m" in fix


def test_rnn_explanation_names_seq_lengths():
    handle = FlaxHandle(Recurrent(lengths=False), AuditOptions(pad_idx=PAD))
    _, why, fix = handle.explain("invariance", None, AuditOptions(pad_idx=PAD), "rnn")
    assert "RNN" in why and "seq_lengths=lengths" in fix


def test_the_zero_grad_fix_works_when_pasted():
    """The fix line the grad finding prints runs on nnx.grad's output and stops the leak."""
    model = MeanPool(masked=False)
    report = audit(model, pad_idx=PAD, checks=("grad",))
    fix = report.findings[0].fix
    line = fix[fix.index("g = grads") : fix.index(" (grads from nnx.grad")]
    ids = jnp.asarray(_ids(report))
    grads = nnx.grad(lambda m: m(ids).sum())(model)
    exec(line, {"grads": grads})
    assert float(jnp.abs(grads["embed"]["embedding"][...][PAD]).max()) == 0.0
    assert float(jnp.abs(grads["embed"]["embedding"][...]).max()) > 0.0


def test_pad_idx_mapping_picks_tables():
    class Two(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.src = nnx.Embed(40, 8, rngs=rngs)
            self.tgt = nnx.Embed(30, 8, rngs=rngs)

    handle = FlaxHandle(Two(), AuditOptions())
    tables = {t.path: t for t in handle.tables({"tgt": -1})}
    assert tables["tgt"].pad_idx == 29 and tables["src"].pad_idx is None
    assert not tables["tgt"].own_pad  # nnx.Embed never has a pad id of its own
    with pytest.raises(PadAuditError, match=r"'nope'.*pass a mapping over its tables \(src, tgt\)"):
        handle.tables({"nope": 0})


def test_no_pad_id_names_the_tables_and_asks_for_pad_idx():
    with pytest.raises(PadAuditError, match=r"embed \(nnx.Embed 40x8\).*Pass pad_idx="):
        audit(MeanPool(masked=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(optimizer="adamw"), r"not an optax transformation: pass optimizer= an optax"),
        (dict(forward=lambda m, b: m(b.ids, b.mask)), r"(?s)raised TypeError.*forward=lambda"),
        (dict(loss=lambda out, b: out), r"loss= returned .*scalar jax.Array"),
    ],
)
def test_bad_input_says_what_to_pass(kwargs, match):
    model = MeanPool(masked=True)
    before = _leaves(model)
    with pytest.raises(PadAuditError, match=match):
        audit(model, pad_idx=PAD, **kwargs)
    assert all(
        a.tobytes() == b.tobytes() for (_, a), (_, b) in zip(before, _leaves(model), strict=True)
    )


def test_model_without_embed_and_linen_modules_are_refused():
    with pytest.raises(PadAuditError, match="holds no embedding table"):
        audit(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), pad_idx=0)
    linen = pytest.importorskip("flax.linen")
    with pytest.raises(PadAuditError, match="Flax Linen module: padaudit audits Flax NNX"):
        audit(linen.Embed(4, 2), pad_idx=0)


def test_adapter_answers_none_for_other_models():
    assert FlaxAdapter().padaudit_adapt(object(), AuditOptions()) is None
    assert isinstance(find_handle(MeanPool(masked=True)), FlaxHandle)


def test_nnx_optimizer_wrt_decides_what_is_stepped():
    model = MeanPool(masked=True)
    rest = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("embed")))
    spec = nnx.Optimizer(model, optax.adamw(1e-3, weight_decay=1e-2), wrt=rest)
    report = audit(model, pad_idx=PAD, optimizer=spec, checks=("update",))
    assert report.passed and report.tables[0].update == 0.0  # the table is not in wrt


class Halving(nnx.Embed):
    """An Embed that writes to its own weight in the forward pass (NNX keeps the write)."""

    def __call__(self, inputs, out_sharding=None):
        self.embedding[...] = self.embedding[...] * 0.5
        return super().__call__(inputs)


def test_a_forward_that_writes_the_table_is_named():
    model = MeanPool(masked=True)
    model.embed = Halving(40, 8, rngs=nnx.Rngs(1))
    before = np.asarray(model.embed.embedding[...])
    report = audit(model, pad_idx=PAD, checks=("update",))
    # ground truth: one plain call halves the row, and nnx keeps it
    probe = MeanPool(masked=True)
    probe.embed = Halving(40, 8, rngs=nnx.Rngs(1))
    probe(jnp.asarray(_ids(report)))
    assert np.array_equal(np.asarray(probe.embed.embedding[...])[PAD], before[PAD] * 0.5)
    assert _causes(report) == {"forward"}
    assert np.array_equal(np.asarray(model.embed.embedding[...]), before)  # restored


def test_nested_paths_and_pasted_fix_lines():
    """Tables deep in the graph get dotted paths; the fix lines printed for them run."""
    from pytest_padaudit.adapters.flax.explain import zero_grad_fix, zero_row_fix

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(40, 8, rngs=rngs)

    class Encoder(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([Block(rngs)])

    class Model(nnx.Module):
        def __init__(self):
            self.encoder = Encoder(nnx.Rngs(0))

        def __call__(self, ids):
            return self.encoder.layers[0].embed(ids).mean(axis=1)

    model = Model()
    (table,) = FlaxHandle(model, AuditOptions()).tables({"encoder.layers.0.embed": 3})
    assert (table.path, table.pad_idx) == ("encoder.layers.0.embed", 3)
    ids = jnp.asarray([[1, 2, 3, 3]])
    grads = nnx.grad(lambda m: m(ids).sum())(model)
    exec(zero_grad_fix(table).split(" (grads from")[0], {"grads": grads})
    g = grads["encoder"]["layers"][0]["embed"]["embedding"][...]
    assert float(jnp.abs(g[3]).max()) == 0.0 and float(jnp.abs(g[1]).max()) > 0.0
    exec(zero_row_fix(table), {"model": model})
    assert not np.asarray(model.encoder.layers[0].embed.embedding[...])[3].any()
