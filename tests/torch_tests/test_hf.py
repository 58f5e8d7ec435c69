"""Hugging Face transformers models on tiny offline configs: one verdict per model."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_padaudit import PadAuditError, audit
from pytest_padaudit.adapters.torch.hf import HFHandle, shift_right
from pytest_padaudit.core.options import AuditOptions

# hidden sizes differ from seq_len (16) so no (batch, hidden) output looks token-aligned
SMALL = dict(vocab_size=99, num_hidden_layers=1, num_attention_heads=2)


def bert_config(cls: str = "BertConfig") -> object:
    return getattr(transformers, cls)(
        **SMALL, hidden_size=12, intermediate_size=24, max_position_embeddings=64
    )


def roberta() -> object:
    torch.manual_seed(0)
    return transformers.RobertaModel(bert_config("RobertaConfig"))


def llama(**extra: object) -> object:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        **SMALL,
        hidden_size=12,
        intermediate_size=24,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **extra,
    )
    return transformers.LlamaForCausalLM(config)


#: GPT-2 without padding_idx: pads train wte through the lookups and the tied head.
TIED = ("tied", "no_padding_idx")


def gpt2() -> object:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=99,
        n_embd=12,
        n_layer=1,
        n_head=2,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.GPT2LMHeadModel(config)


def t5() -> object:
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=99, d_model=12, d_kv=6, d_ff=24, num_layers=1, num_heads=2
    )
    return transformers.T5ForConditionalGeneration(config)


def only(report: object, check: str) -> object:
    found = [f for f in report.findings if f.check == check]
    assert len(found) == 1, report.findings
    return found[0]


def test_bert_base_is_clean() -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(bert_config())
    report = audit(model)
    assert report.passed, report.failure_message()
    rows = {t.layer: t for t in report.tables}
    word = rows["embeddings.word_embeddings"]
    assert (word.pad_idx, word.grad, word.update) == (0, 0.0, 0.0)
    # pad ids index tokens: the position and token type tables are not audited
    assert not rows["embeddings.position_embeddings"].audited
    assert report.invariance.value < 1e-4


def test_bert_mlm_tied_head_leaks_and_can_be_allowed() -> None:
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(bert_config())
    report = audit(model)
    assert not report.passed
    grad = only(report, "grad")
    assert (grad.layer, grad.cause, grad.pad_idx) == ("bert.embeddings.word_embeddings", "tied", 0)
    assert grad.value > 0
    assert "LM head cls.predictions.decoder" in grad.why
    assert "tie_word_embeddings=True" in grad.why
    assert "allow=('tied',)" in grad.fix
    assert only(report, "update").cause == "tied"  # the update follows the gradient
    message = report.failure_message()
    assert "[grad] bert.embeddings.word_embeddings (pad id 0)" in message
    assert "seed" in message

    accepted = audit(model, allow=("tied",))
    assert accepted.passed
    assert {f.check for f in accepted.findings} == {"grad", "update"}
    assert all(f.allowed for f in accepted.findings)
    assert "allowed" in str(accepted)


def test_roberta_pad_id_one_and_padding_aware_positions() -> None:
    model = roberta()
    assert model.config.pad_token_id == 1
    report = audit(model)
    assert report.passed, report.failure_message()
    rows = {t.layer: t for t in report.tables}
    word = rows["embeddings.word_embeddings"]
    assert (word.pad_idx, word.grad, word.update) == (1, 0.0, 0.0)
    # padding_idx=1 on the position table too, but it is looked up with positions
    assert rows["embeddings.position_embeddings"].skipped.startswith("not a token table")
    assert report.batch["pad_idx"] == 1


def test_gpt2_without_pad_token_says_pass_pad_idx() -> None:
    model = gpt2()
    with pytest.raises(PadAuditError, match=r"config\.pad_token_id is None.*Pass pad_idx="):
        audit(model)


def test_gpt2_with_pad_idx_leaks_through_lookups_and_the_tied_head() -> None:
    report = audit(gpt2(), pad_idx=0)
    grads = {f.cause: f for f in report.findings if f.check == "grad"}
    assert set(grads) == {"no_padding_idx", "tied"}
    assert {f.layer for f in grads.values()} == {"transformer.wte"}
    assert "LM head lm_head" in grads["tied"].why
    rows = {t.layer: t for t in report.tables}
    assert rows["transformer.wte"].grad == grads["no_padding_idx"].value
    assert rows["transformer.wte"].head_grad == grads["tied"].value
    assert rows["transformer.wpe"].skipped.startswith("not a token table")
    assert not audit(gpt2(), pad_idx=0, allow=("tied",)).passed  # tied covers the head only
    assert audit(gpt2(), pad_idx=0, allow=("tied", "no_padding_idx")).passed


def test_llama_untied_is_clean() -> None:
    report = audit(llama())
    assert report.passed, report.failure_message()
    assert [(t.layer, t.pad_idx, t.grad) for t in report.tables] == [("model.embed_tokens", 0, 0)]


def test_llama_tied_leaks_through_lm_head() -> None:
    report = audit(llama(tie_word_embeddings=True))
    grad = only(report, "grad")  # padding_idx=0 keeps the lookups off the pad row
    assert (grad.layer, grad.cause) == ("model.embed_tokens", "tied")
    assert "LM head lm_head" in grad.why
    assert report.tables[0].grad == 0.0 and report.tables[0].head_grad == grad.value


def test_t5_encoder_decoder_tied_and_decoder_start() -> None:
    model = t5()
    report = audit(model)
    assert [t.layer for t in report.tables if t.audited] == ["shared"]  # once per weight
    grads = {f.cause: f for f in report.findings if f.check == "grad"}
    assert set(grads) == {"no_padding_idx", "tied"}  # T5's shared has no padding_idx
    assert {(f.layer, f.pad_idx) for f in grads.values()} == {("shared", 0)}
    assert "LM head lm_head" in grads["tied"].why
    assert "decoder_start_token_id=0" in grads["no_padding_idx"].why
    assert report.invariance.value < 1e-4
    assert not audit(model, allow=("tied",)).passed
    assert audit(model, allow=("tied", "no_padding_idx")).passed


def test_t5_decoder_inputs_come_from_the_same_batch() -> None:
    model = t5()
    handle = HFHandle(model, AuditOptions())
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    batch = handle._tensors(_batch(ids, ids != 0))
    inputs = handle.inputs(batch)
    assert inputs["decoder_input_ids"].tolist() == [[0, 5, 6], [0, 8, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert inputs["use_cache"] is False


def test_shift_right_left_padding() -> None:
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 4]])
    out = shift_right(ids, ids != 0, start=3, pad=0)
    assert out.tolist() == [[0, 0, 3, 5], [3, 7, 8, 9]]


def test_llama_left_padding_is_invariant() -> None:
    # rotary positions are relative: shifting every real token keeps attention the same
    report = audit(llama(), padding_side="left")
    assert report.passed, report.failure_message()
    assert report.batch["padding_side"] == "left"


def test_gpt2_left_padding_shifts_absolute_positions() -> None:
    report = audit(gpt2(), pad_idx=0, padding_side="left", allow=TIED)
    inv = only(report, "invariance")
    assert not inv.allowed and inv.cause == "invariance"
    assert "left padding shifts the position" in inv.why
    assert "transformer.wpe" in inv.why
    assert "position_ids=" in inv.fix

    def with_positions(model: object, batch: object) -> object:
        mask = batch.mask.long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return model(input_ids=batch.ids, attention_mask=mask, position_ids=positions)

    fixed = audit(gpt2(), pad_idx=0, padding_side="left", allow=TIED, forward=with_positions)
    assert fixed.passed, fixed.failure_message()


def test_roberta_left_padding_names_the_pooler() -> None:
    model = roberta()
    inv = only(audit(model, padding_side="left", checks=("invariance",)), "invariance")
    assert inv.layer == "pooler"
    assert "first column" in inv.why


def test_audit_leaves_the_hf_model_unchanged() -> None:
    model = llama(tie_word_embeddings=True)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    audit(model, steps=2)
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_plain_torch_audit_does_not_import_transformers() -> None:
    code = (
        "import sys, torch\n"
        "from pytest_padaudit import audit\n"
        "model = torch.nn.Sequential(torch.nn.Embedding(10, 4, padding_idx=0))\n"
        "assert audit(model, checks=('grad',)).passed\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _batch(ids: object, mask: object) -> object:
    from pytest_padaudit.core.batch import PadBatch

    ids, mask = ids.numpy(), mask.numpy()
    return PadBatch(ids, mask, mask.sum(1), 0)
