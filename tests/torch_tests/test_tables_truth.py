"""Issue 10 (PyTorch): tied heads split, token tables only, pad ids, models as users run them.

Every verdict is first computed with plain torch / transformers code (no padaudit in the
loop): build the padded batch, take a weighted sum of outputs, backpropagate, read the rows.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch import nn

from pytest_padaudit import PadAuditError, audit

from support.tiny_hf import tiny_bert_config
from support.torch_models import VOCAB, MeanPool, Tagger, TwoTables

V = 250  # a vocabulary well above seq_len and T5's 32 buckets: ids look nothing like positions
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def padded(seed: int = 0, vocab: int = V, pad: int = 0, b: int = 4, t: int = 16) -> tuple:
    """Return (ids, mask): right-padded rows of random real ids (never ``pad``)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 5, 9, 3])[:b]
    ids = torch.randint(0, vocab - 1, (b, t), generator=g)
    ids = ids + (ids >= pad).long()  # skip the pad id
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return torch.where(mask, ids, torch.full_like(ids, pad)), mask


def weights_like(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=g) + 0.5


def fixed_loss(output: object, batch: object) -> torch.Tensor:
    """A seeded weighted sum of the logits (same weights in the audit and the ground truth)."""
    return (output.logits * weights_like(output.logits)).sum()


def gpt2_lm() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=V, n_embd=12, n_layer=1, n_head=2, n_positions=64, **NO_DROPOUT
    )
    return transformers.GPT2LMHeadModel(config)


def bert_config(**extra: object) -> object:
    return tiny_bert_config(
        V, 12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra
    )


def grads(report: object) -> dict[str, object]:
    return {f.cause: f for f in report.findings if f.check == "grad"}


# -- 1. tied heads ---------------------------------------------------------------------------
def test_gpt2_lm_head_lookup_part_is_judged_apart_from_the_head_part() -> None:
    model = gpt2_lm()
    report = audit(model, pad_idx=0, loss=fixed_loss, checks=("grad",))
    ids = torch.tensor(report.batch["ids"])
    mask = ids != 0

    # ground truth: feed the looked-up vectors as a leaf; the head still reads wte.weight
    wte = model.transformer.wte.weight
    embeds = model.transformer.wte(ids).detach().requires_grad_()
    model.train()
    out = model(inputs_embeds=embeds, attention_mask=mask.long(), use_cache=False)
    fixed_loss(out, None).backward()
    lookup = embeds.grad[ids == 0].sum(0).abs().max().item()  # row 0 through the lookups
    head = wte.grad[0].abs().max().item()  # row 0 through the tied head only
    model.zero_grad(set_to_none=True)
    assert lookup > 5 * head > 0  # pads put far more on row 0 than the head does

    table = {t.layer: t for t in report.tables}["transformer.wte"]
    assert table.grad == pytest.approx(lookup, rel=1e-4)
    assert table.head_grad == pytest.approx(head, rel=1e-4)
    found = grads(report)
    assert set(found) == {"no_padding_idx", "tied"}
    assert found["no_padding_idx"].value == table.grad
    assert found["tied"].value == table.head_grad
    for f in found.values():  # both numbers in each message
        assert f"{lookup:.3g}" in f.message and f"{head:.3g}" in f.message
    assert not audit(model, pad_idx=0, allow=("tied",)).passed  # tied covers the head only


def test_bert_mlm_lookup_part_is_zero_and_tied_allows_the_head_part() -> None:
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(bert_config())
    word = model.bert.embeddings.word_embeddings
    assert word.padding_idx == 0 and model.cls.predictions.decoder.weight is word.weight
    report = audit(model, loss=fixed_loss, checks=("grad",))
    ids = torch.tensor(report.batch["ids"])
    mask = (ids != 0).long()

    # ground truth, pass 1: the full gradient; pass 2: the head reads a detached copy
    model.train()
    fixed_loss(model(input_ids=ids, attention_mask=mask), None).backward()
    total = word.weight.grad[0].clone()
    model.zero_grad(set_to_none=True)
    decoder = model.cls.predictions.decoder
    decoder.weight = nn.Parameter(word.weight.detach().clone())
    try:
        fixed_loss(model(input_ids=ids, attention_mask=mask), None).backward()
        lookup = word.weight.grad[0] if word.weight.grad is not None else torch.zeros(12)
        head = decoder.weight.grad[0]
    finally:
        decoder.weight = word.weight
        model.zero_grad(set_to_none=True)
    assert lookup.abs().max().item() == 0.0  # padding_idx keeps the lookups off row 0
    assert torch.allclose(total, head, rtol=1e-5, atol=1e-6) and head.abs().max() > 0

    table = report.tables[0]
    assert (table.layer, table.grad) == ("bert.embeddings.word_embeddings", 0.0)
    assert table.head_grad == pytest.approx(head.abs().max().item(), rel=1e-4)
    assert set(grads(report)) == {"tied"}
    assert audit(model, allow=("tied",)).passed


def test_users_grad_hook_on_a_tied_weight_covers_the_head_part() -> None:
    model = gpt2_lm()
    model.transformer.wte.weight.register_hook(lambda g: g.index_fill(0, torch.tensor([0]), 0))
    report = audit(model, pad_idx=0, checks=("grad", "update"))
    assert report.passed, report.failure_message()
    assert (report.tables[0].grad, report.tables[0].head_grad) == (0.0, 0.0)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie is put back


# -- 2. only token tables have a pad row -----------------------------------------------------
class Wrapped(nn.Module):
    """A transformers encoder/decoder inside a user module, called with ids only."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.head = nn.Linear(12, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.inner(input_ids=ids, attention_mask=(ids != 0).long())
        return self.head(out.last_hidden_state)


def gpt2_inside() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=V, n_embd=12, n_layer=1, n_head=2, n_positions=64, **NO_DROPOUT
    )
    return Wrapped(transformers.GPT2Model(config))


def t5_encoder_inside() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=V, d_model=12, d_kv=6, d_ff=24, num_layers=1, num_heads=2, dropout_rate=0.0
    )
    return Wrapped(transformers.T5EncoderModel(config))


def bert_inside() -> nn.Module:
    torch.manual_seed(0)
    return Wrapped(transformers.BertModel(bert_config()))


def row0_grads(model: nn.Module, masked: bool) -> dict[str, float]:
    """Ground truth: max|g| of row 0 of every table after a padded, weighted backward."""
    ids, mask = padded()
    model.train()
    out = model(ids)
    w = weights_like(out) * (mask[..., None] if masked else 1)
    (out * w).sum().backward()
    found = {
        path: layer.weight.grad[0].abs().max().item()
        for path, layer in model.named_modules()
        if isinstance(layer, nn.Embedding) and layer.weight.grad is not None
    }
    model.zero_grad(set_to_none=True)
    return found


@pytest.mark.parametrize(
    ("build", "token", "others"),
    [
        (gpt2_inside, "inner.wte", ["inner.wpe"]),
        (
            t5_encoder_inside,
            "inner.shared",
            ["inner.encoder.block.0.layer.0.SelfAttention.relative_attention_bias"],
        ),
        (
            bert_inside,
            "inner.embeddings.word_embeddings",
            ["inner.embeddings.position_embeddings", "inner.embeddings.token_type_embeddings"],
        ),
    ],
    ids=["gpt2", "t5-encoder", "bert"],
)
def test_position_segment_and_bucket_tables_are_not_token_tables(build, token, others) -> None:
    model = build()
    truth = row0_grads(model, masked=True)
    assert truth[token] == 0.0  # the pad row of the token table: no gradient
    assert all(truth[o] > 0 for o in others)  # row 0 is a real position/segment/bucket
    report = audit(model, pad_idx=0, loss="masked")
    assert report.passed, report.failure_message()
    rows = {t.layer: t for t in report.tables}
    assert rows[token].audited and rows[token].grad == 0.0
    for o in others:
        assert rows[o].skipped.startswith("not a token table"), rows[o]
        assert rows[o].grad is None


def test_gpt2_inside_a_module_default_loss_flags_only_the_token_table() -> None:
    model = gpt2_inside()
    truth = row0_grads(model, masked=False)
    assert truth["inner.wte"] > 0  # pad positions weigh in: the pads train row 0
    report = audit(model, pad_idx=0, checks=("grad",))
    assert {f.layer for f in report.findings} == {"inner.wte"}
    assert {f.cause for f in report.findings} == {"no_padding_idx"}
    assert report.tables[0].grad == pytest.approx(report.findings[0].value)


def test_sentence_transformers_over_a_tiny_bert(tmp_path) -> None:
    st = pytest.importorskip("sentence_transformers")
    modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")
    torch.manual_seed(0)
    transformers.BertModel(bert_config()).save_pretrained(tmp_path)
    tokenizer = bert_tokenizer(tmp_path, pad_first=True)
    tokenizer.save_pretrained(tmp_path)
    encoder = modules.Transformer(str(tmp_path))
    model = st.SentenceTransformer(modules=[encoder, modules.Pooling(12, "mean")])

    def forward(model: nn.Module, batch: object) -> object:
        return model({"input_ids": batch.ids, "attention_mask": batch.mask.long()})

    # ground truth: word row 0 has no gradient, token-type row 0 (segment A) does
    ids, mask = padded()
    out = forward(model.train(), type("B", (), {"ids": ids, "mask": mask}))
    emb = out["sentence_embedding"]
    (emb * weights_like(emb)).sum().backward()
    tables = {p: m for p, m in model.named_modules() if isinstance(m, nn.Embedding)}
    word = next(m for p, m in tables.items() if p.endswith("word_embeddings"))
    types = next(m for p, m in tables.items() if p.endswith("token_type_embeddings"))
    assert word.weight.grad[0].abs().max() == 0 and types.weight.grad[0].abs().max() > 0
    model.zero_grad(set_to_none=True)

    report = audit(model, tokenizer=tokenizer, forward=forward)
    assert report.passed, report.failure_message()
    rows = {t.layer.rsplit(".", 1)[-1]: t for t in report.tables}
    assert rows["word_embeddings"].audited and rows["word_embeddings"].pad_idx == 0
    assert rows["token_type_embeddings"].skipped.startswith("not a token table")
    assert rows["position_embeddings"].skipped.startswith("not a token table")


def test_pad_idx_mapping_names_the_tables() -> None:
    ids, _ = padded(vocab=VOCAB)
    model = TwoTables()
    model(ids).sum().backward()
    assert model.shapes.weight.grad[0].abs().max() > 0  # shapes trains row 0 on pads
    model.zero_grad(set_to_none=True)
    report = audit(model, pad_idx={"shapes": 0}, checks=("grad",))
    assert {(f.layer, f.cause) for f in report.findings} == {("shapes", "no_padding_idx")}
    with pytest.raises(PadAuditError, match=r"pad_idx= names .nope.*shapes, words"):
        audit(model, pad_idx={"nope": 0})


class PositionsFirst(nn.Module):
    """A position table with padding_idx (listed first) and a word table without one."""

    def __init__(self) -> None:
        super().__init__()
        self.positions = nn.Embedding(64, 8, padding_idx=0)
        self.words = nn.Embedding(V, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != 0
        positions = torch.where(real, real.long().cumsum(1), 0)  # 1, 2, ... ; 0 at pads
        return self.head(self.positions(positions) + self.words(ids))


def test_batch_comes_from_the_token_table_when_the_first_guess_is_not_one() -> None:
    model = PositionsFirst()
    ids, _ = padded()
    out = model(ids)
    (out * weights_like(out)).sum().backward()
    assert model.words.weight.grad[0].abs().max() > 0  # pads train the word row 0
    model.zero_grad(set_to_none=True)

    with pytest.raises(PadAuditError, match=r"token tables of PositionsFirst \(words\)"):
        audit(model)  # words is the token table, and nothing says its pad id
    report = audit(model, pad_idx={"words": 0}, checks=("grad",))
    rows = {t.layer: t for t in report.tables}
    assert rows["positions"].skipped.startswith("not a token table")
    assert [(f.layer, f.cause) for f in report.findings] == [("words", "no_padding_idx")]
    assert max(max(r) for r in report.batch["ids"]) >= 64  # ids over the word vocabulary


def test_pad_idx_that_disagrees_with_padding_idx_pads_the_batch_and_is_a_finding() -> None:
    ids, _ = padded(vocab=VOCAB, pad=3)
    model = Tagger(padding_idx=0)
    model(ids).sum().backward()
    g = model.embed.weight.grad
    assert g[3].abs().max() > 0 and g[0].abs().max() == 0  # row 3 trains, row 0 is idle
    model.zero_grad(set_to_none=True)

    report = audit(model, pad_idx=3)
    assert report.batch["pad_idx"] == 3
    causes = {(f.check, f.cause) for f in report.findings if not f.allowed}
    assert causes == {("grad", "pad_mismatch"), ("update", "pad_mismatch")}, causes
    # the checks are the README's: the mismatch is a cause under grad, not a check of its own
    assert {f.check for f in report.findings} <= {"grad", "update", "invariance"}
    mismatch = next(f for f in report.findings if "own pad id is" in f.message)
    assert "pads with 3" in mismatch.message and "own pad id is 0" in mismatch.message
    assert "padding_idx=3" in mismatch.fix
    assert audit(model, pad_idx=3, allow=("pad_mismatch",)).passed


@pytest.mark.parametrize("pad", [50, -2000])
def test_out_of_range_pad_idx_is_an_error_even_with_padding_idx(pad: int) -> None:
    with pytest.raises(PadAuditError, match=rf"\(pad_idx={pad}\): pass pad_idx= between 0 and 49"):
        audit(Tagger(padding_idx=0), pad_idx=pad)


def test_hf_pad_idx_that_disagrees_with_config_pad_token_id() -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(bert_config())
    report = audit(model, pad_idx=5, checks=("grad",))
    mismatch = [f for f in report.findings if f.cause == "pad_mismatch"]
    assert mismatch and all(f.pad_idx == 5 for f in mismatch)
    assert any("padding_idx=0" in f.why or "pad_token_id=0" in f.why for f in mismatch)


# -- tokenizers ------------------------------------------------------------------------------
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_tokenizer(path: object, pad_first: bool = True, side: str = "right") -> object:
    words = [f"w{i}" for i in range(V - len(SPECIAL))]
    vocab = (SPECIAL if pad_first else SPECIAL[1:4] + SPECIAL[:1] + SPECIAL[4:]) + words
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    return transformers.BertTokenizerFast(vocab=str(vocab_file), padding_side=side)


def test_tokenizer_gives_pad_id_and_side_and_is_checked_against_config(tmp_path) -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(bert_config())
    matching = bert_tokenizer(tmp_path, pad_first=True, side="left")
    assert matching.pad_token_id == 0 == model.config.pad_token_id
    report = audit(model, tokenizer=matching, checks=("grad",))
    assert report.passed, report.failure_message()
    assert (report.batch["pad_idx"], report.batch["padding_side"]) == (0, "left")

    other = bert_tokenizer(tmp_path, pad_first=False)
    assert other.pad_token_id == 3
    report = audit(model, tokenizer=other, checks=("grad",))
    assert report.batch["pad_idx"] == 3
    found = [f for f in report.findings if "own pad id is" in f.message]
    assert [(f.check, f.cause) for f in found] == [("grad", "pad_mismatch")]
    assert "tokenizer.pad_token_id" in found[0].why and "0" in found[0].why
    with pytest.raises(PadAuditError, match=r"disagrees with tokenizer\.pad_token_id=3"):
        audit(model, tokenizer=other, pad_idx=0)


# -- 6. models as users run them -------------------------------------------------------------
def leaks_invariance(model: nn.Module) -> bool:
    """Ground truth: do extra pad columns change the output of the real positions?"""
    ids, _ = padded(vocab=VOCAB)
    wider = torch.cat([ids, torch.zeros(4, 8, dtype=ids.dtype)], 1)
    model.eval()
    with torch.no_grad():
        return not torch.allclose(model(ids), model(wider), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("how", ["torch.compile", "Module.compile"])
@pytest.mark.parametrize("masked", [False, True])
def test_compiled_model_gets_the_eager_verdict(masked: bool, how: str) -> None:
    torch.manual_seed(0)
    model = MeanPool(masked=masked)
    truth = leaks_invariance(model)
    assert truth is not masked
    if how == "torch.compile":
        compiled = torch.compile(model, backend="inductor", fullgraph=True)
    else:
        compiled = model
        compiled.compile(backend="inductor", fullgraph=True)
    report = audit(compiled)
    assert report.passed is not truth, report.failure_message()
    if truth:
        assert [f.cause for f in report.findings] == ["invariance"]
    assert report.invariance.skipped is None
    if how == "Module.compile":
        assert model._compiled_call_impl is not None  # still compiled after the audit


def test_tie_is_restored_when_the_pass_fails() -> None:
    model = gpt2_lm()

    def broken(output: object, batch: object) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        audit(model, pad_idx=0, loss=broken, checks=("grad",))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(p.grad is None for p in model.parameters())


def test_meta_device_model_is_one_clear_error() -> None:
    with torch.device("meta"):
        model = Tagger()
    with pytest.raises(PadAuditError, match=r"meta device.*to_empty"):
        audit(model)


def test_audit_under_inference_mode_works() -> None:
    model = Tagger(padding_idx=None)
    outside = audit(model, pad_idx=0)
    with torch.inference_mode():
        inside = audit(model, pad_idx=0)
        assert torch.is_inference_mode_enabled()  # the caller's mode is back
    assert [(f.check, f.cause, f.value) for f in inside.findings] == [
        (f.check, f.cause, f.value) for f in outside.findings
    ]
    assert not inside.passed and not model.embed.weight.is_inference()


def test_model_built_under_inference_mode_names_it() -> None:
    with torch.inference_mode():
        model = Tagger()
    with pytest.raises(PadAuditError, match=r"torch\.inference_mode\(\)") as err:
        audit(model)
    assert "unfreeze" not in str(err.value)
