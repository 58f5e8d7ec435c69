"""keras-hub backbones and tasks, audited as they are, against a plain TensorFlow truth.

Every model is built from tiny constructor arguments (no download). The audit feeds the
dict a keras-hub model takes; the truth is tf.GradientTape on the audit's own batch.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub")

from pytest_padaudit import PadAuditError, audit

from support.keras_backend_truth import batch_of
from support.keras_truth import pad_row_grad, tied_split, weights_for

V = 64
SMALL = {"vocabulary_size": V, "num_layers": 1, "hidden_dim": 8, "intermediate_dim": 16}
TRAIN = ("grad", "update")
NOT_TOKEN = "not a token table"


def bert(**kw):
    return keras_hub.models.BertBackbone(
        **SMALL, num_heads=2, max_sequence_length=32, dropout=0.0, **kw
    )


def gpt2():
    return keras_hub.models.GPT2Backbone(**SMALL, num_heads=2, max_sequence_length=32, dropout=0.0)


def gemma():
    return keras_hub.models.GemmaBackbone(
        **SMALL, num_query_heads=2, num_key_value_heads=1, head_dim=4
    )


def inputs_of(model, ids, mask):
    """The dict a keras-hub model takes, built by hand from the audit's batch."""
    names = set(model._inputs_struct)
    feed = {"token_ids": ids, "padding_mask": mask.astype("int32")}
    if "segment_ids" in names:
        feed["segment_ids"] = np.zeros_like(ids)
    return feed


def table(report, name):
    (found,) = [t for t in report.tables if t.layer.endswith(name)]
    return found


def findings_on(report, name):
    return [f for f in report.findings if f.layer.endswith(name)]


def truth(model, report, layer, *, masked):
    ids, mask = batch_of(report)
    feed = inputs_of(model, ids, mask)
    pad = report.batch["pad_idx"]
    variable = getattr(layer, "embeddings", None)
    variable = layer.position_embeddings if variable is None else variable
    return pad_row_grad(lambda: model(feed, training=True), variable, pad, mask if masked else None)


# -- BERT: one token table; segment and position tables are not audited ---------------
@pytest.mark.parametrize("loss", ["all", "masked"])
def test_bert_backbone_token_table_verdict_matches_truth(loss):
    model = bert()
    report = audit(model, pad_idx=0, loss=loss, checks=TRAIN)
    masked = loss == "masked"
    token = truth(model, report, model.token_embedding, masked=masked)
    assert (token > 0) == (loss == "all")  # pad positions reach the loss only via loss="all"
    assert bool(findings_on(report, "token_embedding")) == (token > 0)
    if token > 0:
        assert findings_on(report, "token_embedding")[0].cause == "unmasked"
        assert "padding_mask" in findings_on(report, "token_embedding")[0].fix
    # row 0 of the segment and position tables is segment A / position 0: real tokens
    # train it, so auditing it as a pad row would be a false alarm
    assert truth(model, report, model.segment_embedding, masked=masked) > 0
    assert truth(model, report, model.position_embedding, masked=masked) > 0
    for name in ("segment_embedding", "position_embedding"):
        assert NOT_TOKEN in (table(report, name).skipped or ""), str(report)
        assert not findings_on(report, name)
    assert report.passed == (token == 0)


def test_bert_backbone_masked_loss_passes_every_check():
    report = audit(bert(), pad_idx=0, loss="masked")
    assert report.passed, report.failure_message()
    assert report.invariance is not None and report.invariance.value is not None


def test_backbone_without_a_pad_id_asks_for_one_and_says_where_to_find_it():
    hint = r"pass pad_idx=.*preprocessor\.tokenizer\.pad_token_id"
    with pytest.raises(PadAuditError, match=hint):
        audit(bert())


def test_task_takes_the_pad_id_from_its_preprocessor(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(V - 5)]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab)
    pre = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
    model = keras_hub.models.BertTextClassifier(bert(), num_classes=2, preprocessor=pre)
    report = audit(model, checks=TRAIN)  # no pad_idx=: [PAD] is id 0
    assert table(report, "token_embedding").pad_idx == 0 == tokenizer.pad_token_id
    # the classifier reads [CLS] only and attention masks the pads: the truth is clean
    layer = model.backbone.token_embedding
    assert truth(model, report, layer, masked=False) == 0.0
    assert report.passed, report.failure_message()
    clash = audit(model, pad_idx=3, checks=TRAIN)
    found = [f for f in clash.findings if f.cause == "pad_mismatch"]
    assert found and "3" in found[0].message and "0" in found[0].message
    assert clash.batch["pad_idx"] == 3


def test_lookups_records_the_ids_each_table_receives():
    from pytest_padaudit.adapters.keras.handle import KerasHandle
    from pytest_padaudit.core.batch import make_batch
    from pytest_padaudit.core.options import AuditOptions

    model = bert()
    handle = KerasHandle(model, AuditOptions(pad_idx=0), keras)
    handle.tables(0)
    batch = make_batch(batch_size=4, seq_len=16, vocab_size=V, pad_idx=0, seed=0)
    seen = handle.lookups(batch)
    # plain TF: the ids fed as token_ids and segment_ids; a position table gets no ids
    assert seen["token_embedding"].tolist() == np.unique(batch.ids).tolist()
    assert seen["segment_embedding"].tolist() == [0]
    assert seen["position_embedding"].size == 0


def test_an_int_pad_idx_applies_to_the_tables_that_can_hold_it():
    # 40 is past the 2 segment rows and the 32 positions, but a valid token id
    report = audit(bert(), pad_idx=40, loss="masked", checks=TRAIN)
    assert table(report, "token_embedding").pad_idx == 40 and report.passed
    assert table(report, "segment_embedding").skipped
    with pytest.raises(PadAuditError, match=r"^pad_idx=100 is out of range for token_embedding"):
        audit(bert(), pad_idx=100)


# -- RoBERTa and DistilBERT (tables inside TokenAndPositionEmbedding) -----------------
ENCODERS = {
    "roberta": (keras_hub.models.RobertaBackbone, 1),  # <pad> is 1 in RoBERTa
    "distil_bert": (keras_hub.models.DistilBertBackbone, 0),  # [PAD] is 0
}


@pytest.mark.parametrize("loss", ["all", "masked"])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_backbone_verdict_matches_truth(name, loss):
    cls, pad = ENCODERS[name]
    model = cls(**SMALL, num_heads=2, max_sequence_length=32, dropout=0.0)
    report = audit(model, pad_idx=pad, loss=loss, checks=TRAIN)
    token = truth(model, report, model.token_embedding, masked=loss == "masked")
    assert bool(findings_on(report, "token_embedding")) == (token > 0) == (loss == "all")
    assert NOT_TOKEN in (table(report, "position_embedding").skipped or "")
    assert report.passed == (token == 0)


# -- GPT-2 backbone: pad id given --------------------------------------------------------
@pytest.mark.parametrize("loss", ["all", "masked"])
def test_gpt2_backbone_verdict_matches_truth(loss):
    model = gpt2()
    report = audit(model, pad_idx=0, loss=loss, checks=TRAIN)
    token = truth(model, report, model.token_embedding, masked=loss == "masked")
    assert bool(findings_on(report, "token_embedding")) == (token > 0) == (loss == "all")
    assert NOT_TOKEN in (table(report, "position_embedding").skipped or "")
    assert report.passed == (token == 0)


# -- causal LMs with tied heads: the split ---------------------------------------------
def _fixed_loss(masked):
    def loss(output, batch):
        mask = batch.mask.numpy() if masked else None
        return tf.reduce_sum(output * weights_for(output, mask)[0])

    return loss


CAUSAL = {
    "gpt2": lambda: keras_hub.models.GPT2CausalLM(backbone=gpt2(), preprocessor=None),
    "gemma": lambda: keras_hub.models.GemmaCausalLM(backbone=gemma(), preprocessor=None),
}


@pytest.mark.parametrize("name", sorted(CAUSAL))
@pytest.mark.parametrize("masked", [True, False])
def test_causal_lm_tied_split_matches_truth(name, masked):
    model = CAUSAL[name]()
    report = audit(model, pad_idx=0, loss=_fixed_loss(masked), checks=TRAIN)
    ids, mask = batch_of(report)
    feed = inputs_of(model, ids, mask)
    lookup, head = tied_split(
        lambda: model.backbone(feed),
        model.backbone.token_embedding,
        0,
        mask if masked else None,
        check=lambda: model(feed),
    )
    result = table(report, "token_embedding")
    assert head > 0 and result.head_grad == pytest.approx(head, rel=1e-3)
    assert result.grad == pytest.approx(lookup, rel=1e-3, abs=1e-6)
    # causal attention and the masked loss keep right-padded pads out: no lookup part
    assert (lookup == 0.0) == masked
    lookup_findings = [
        f for f in findings_on(report, "token_embedding") if f.check == "grad" and f.cause != "tied"
    ]
    assert bool(lookup_findings) == (lookup > 0)
    allowed = audit(model, pad_idx=0, loss=_fixed_loss(masked), checks=TRAIN, allow=("tied",))
    assert allowed.passed == masked, str(allowed)


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_causal_lm_default_loss_audits_without_forward(name):
    model = CAUSAL[name]()
    report = audit(model, pad_idx=0, allow=("tied",))  # raised a raw ValueError before
    result = table(report, "token_embedding")
    assert result.grad > 0 and result.head_grad > 0
    assert not report.passed
    assert {f.cause for f in report.leaks} == {"unmasked"}
    masked = audit(model, pad_idx=0, loss="masked", allow=("tied",))
    assert masked.passed, masked.failure_message()
    assert [f.cause for f in masked.findings if f.check == "grad"] == ["tied"]


def test_causal_lm_is_left_bitwise_unchanged():
    model = CAUSAL["gpt2"]()
    before = [np.array(v.numpy(), copy=True) for v in model.variables]
    report = audit(model, pad_idx=0, optimizer=keras.optimizers.AdamW(1e-2), steps=2)
    assert table(report, "token_embedding").update > 0  # the audit really stepped
    after = [v.numpy() for v in model.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
