"""batch= and step=: the user's own batch and training step, against plain-torch truth.

Every expected verdict is computed here with transformers' own collator and loss and plain
torch autograd, with no padaudit in the loop; then the audit must agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch import nn

from pytest_padaudit import PadAuditError, audit

from support.tiny_hf import tiny_bert_config

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]
TEXTS = ["w1 w2 w3 w4 w5 w6", "w7 w8", "w9 w10 w11 w12", "w13"]
#: the pad value of each per-position key when the truth widens a batch.
FILL = {"attention_mask": 0, "labels": -100, "token_type_ids": 0}
RTOL = 1e-4


def tokenizer(tmp_path: Any) -> Any:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(vocab))


def token_classifier() -> nn.Module:
    torch.manual_seed(0)
    config = tiny_bert_config(
        len(WORDS),
        num_hidden_layers=2,
        hidden_dropout_prob=0.0,  # dropout changes outputs on its own
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    return transformers.BertForTokenClassification(config)


def collated(tok: Any, **collator: Any) -> dict[str, torch.Tensor]:
    """Tokenize TEXTS, label every token, and pad with transformers' own collator."""
    rng = torch.Generator().manual_seed(1)
    examples = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        labels = torch.randint(0, 3, (len(ids),), generator=rng).tolist()
        examples.append({"input_ids": ids, "labels": labels})
    pad = transformers.DataCollatorForTokenClassification(tok, return_tensors="pt", **collator)
    return dict(pad(examples))


def own_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def without_mask(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss


# -- plain-torch truth ----------------------------------------------------------------------
def widened(batch: Mapping[str, torch.Tensor], n: int, pad: int) -> dict[str, torch.Tensor]:
    """Append ``n`` pad columns on the right of every per-position key."""
    out = {}
    for key, value in batch.items():
        fill = pad if key == "input_ids" else FILL[key]
        pads = torch.full((value.shape[0], n), fill, dtype=value.dtype)
        out[key] = torch.cat([value, pads], dim=1)
    return out


def grads(model: nn.Module, step: Callable, batch: Mapping[str, torch.Tensor]) -> dict:
    model.zero_grad()
    step(model, batch).backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


def truth(model: nn.Module, step: Callable, batch: dict, pad: int) -> set[str]:
    """Return the leaks plain torch sees: pad-row grad, labels at pads, invariance."""
    leaks = set()
    base = grads(model, step, batch)
    table = model.get_input_embeddings()
    if base["bert.embeddings.word_embeddings.weight"][table.padding_idx].abs().max() > 0:
        leaks.add("grad")
    pads = batch["attention_mask"] == 0
    if (batch["input_ids"][pads] != pad).any():
        leaks.add("pad_mismatch")
    if "labels" in batch and (batch["labels"][pads] != -100).any():
        leaks.add("labels_at_pads")
    if changed(base, grads(model, step, widened(batch, 8, pad))):
        leaks.add("invariance")
    return leaks


def changed(base: dict, wide: dict) -> bool:
    """Say whether any parameter's gradient differs by more than RTOL of its size.

    A gradient that is zero in exact arithmetic (a key bias under softmax) is float noise:
    sizes are floored at 1e-6 of the largest gradient.
    """
    floor = max(g.abs().max() for g in base.values()) * 1e-6
    for name, g in base.items():
        diff = (wide[name] - g).abs().max() / torch.maximum(g.abs().max(), floor)
        if diff > RTOL:
            return True
    return False


def verdict(report: Any) -> set[str]:
    names = {"invariance": "invariance", "pad_mismatch": "pad_mismatch"}
    out = set()
    for f in report.findings:
        out.add("labels_at_pads" if f.cause == "labels_at_pads" else names.get(f.cause, f.check))
    return out


# -- the cases of the issue -----------------------------------------------------------------
def test_token_classifier_with_its_collator_and_own_loss_is_clean(tmp_path: Any) -> None:
    tok, model = tokenizer(tmp_path), token_classifier()
    batch = collated(tok)
    assert truth(model, own_loss, batch, 0) == set()
    report = audit(model, batch=batch, step=own_loss)
    assert report.passed, report.failure_message()
    assert verdict(report) == set()
    assert report.invariance is not None and report.invariance.value is not None


def test_labels_padded_with_the_pad_id_train_on_pads(tmp_path: Any) -> None:
    tok, model = tokenizer(tmp_path), token_classifier()
    batch = collated(tok, label_pad_token_id=0)
    assert truth(model, own_loss, batch, 0) == {"labels_at_pads"}
    report = audit(model, batch=batch, step=own_loss)
    assert verdict(report) == {"labels_at_pads"}
    finding = report.findings[0]
    assert finding.check == "pipeline" and "(1, 4)" in finding.message
    assert "label_pad_token_id=-100" in finding.fix


def test_a_step_that_drops_the_attention_mask_leaks_and_is_blamed(tmp_path: Any) -> None:
    tok, model = tokenizer(tmp_path), token_classifier()
    batch = collated(tok)
    assert truth(model, without_mask, batch, 0) == {"invariance"}
    report = audit(model, batch=batch, step=without_mask)
    assert verdict(report) == {"invariance"}
    (finding,) = report.findings
    assert "your step=" in finding.why and "m(**b).loss" in finding.fix


def test_roberta_fed_zeros_for_its_pad_id_one_is_a_pad_mismatch() -> None:
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.RobertaModel(config)
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 0, 0]])  # padded with 0, not 1
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])}
    pads = batch["attention_mask"] == 0
    assert (ids[pads] != config.pad_token_id).any()  # truth, plainly
    report = audit(model, batch=batch)
    assert "pad_mismatch" in {f.cause for f in report.findings}
    finding = next(f for f in report.findings if f.cause == "pad_mismatch")
    assert finding.pad_idx == 1 and "(1, 3), (1, 4)" in finding.message


class MeanPool(nn.Module):
    def __init__(self, masked: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 4, padding_idx=0)
        self.head = nn.Linear(4, 2)
        self.masked = masked

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if not self.masked:
            return self.head(x.mean(1))
        m = (ids != 0).float()[..., None]
        return self.head((x * m).sum(1) / m.sum(1))


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_a_bare_tensor_batch_for_a_plain_module(masked: bool) -> None:
    model = MeanPool(masked)
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 2], [5, 0, 0, 0, 0]])
    weights = torch.rand(3, 2, generator=torch.Generator().manual_seed(3))

    def loss(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (m(x) * weights).sum()

    wide = torch.cat([ids, torch.zeros(3, 4, dtype=ids.dtype)], dim=1)
    leaks = changed(grads(model, loss, ids), grads(model, loss, wide))
    assert leaks == (not masked)  # truth
    report = audit(model, batch=ids)
    assert report.passed == masked, report.failure_message()
    assert {f.cause for f in report.findings} == (set() if masked else {"invariance"})


# -- bad input: one clear error each ----------------------------------------------------------
def test_a_batch_with_no_pad_position_is_refused_not_passed() -> None:
    with pytest.raises(PadAuditError, match="holds no pad position"):
        audit(MeanPool(True), batch=torch.tensor([[3, 4], [5, 6]]))


def test_an_attention_mask_of_another_width_is_refused() -> None:
    batch = {"input_ids": torch.tensor([[3, 4, 0]]), "attention_mask": torch.ones(1, 5)}
    with pytest.raises(PadAuditError, match=r"attention_mask has shape \[1, 5\] but input_ids"):
        audit(MeanPool(True), batch=batch)


def test_a_step_returning_a_non_scalar_is_refused(tmp_path: Any) -> None:
    model, batch = token_classifier(), collated(tokenizer(tmp_path))
    with pytest.raises(PadAuditError, match=r"step= returned a tensor of shape \[4, 8, 3\]"):
        audit(model, batch=batch, step=lambda m, b: m(**b).logits)


def test_a_key_padaudit_cannot_pad_asks_for_widen(tmp_path: Any) -> None:
    model, batch = token_classifier(), collated(tokenizer(tmp_path))
    batch["word_ids"] = torch.zeros_like(batch["input_ids"])
    with pytest.raises(PadAuditError, match=r"'word_ids' has one value per position.*widen="):
        audit(model, batch=batch, step=own_loss)


def test_widen_pads_the_keys_the_user_knows(tmp_path: Any) -> None:
    model, batch = token_classifier(), collated(tokenizer(tmp_path))
    batch["word_ids"] = torch.zeros_like(batch["input_ids"])

    def widen(b: dict, n: int) -> dict:
        out = widened({k: v for k, v in b.items() if k != "word_ids"}, n, 0)
        return {**out, "word_ids": torch.cat([b["word_ids"], torch.zeros(4, n).long()], 1)}

    def step(m: nn.Module, b: dict) -> torch.Tensor:
        return own_loss(m, {k: v for k, v in b.items() if k != "word_ids"})

    report = audit(model, batch=batch, step=step, widen=widen)
    assert report.passed, report.failure_message()


def test_step_and_forward_together_are_refused() -> None:
    with pytest.raises(PadAuditError, match="step= and forward= both"):
        audit(MeanPool(True), step=lambda m, b: m(b).sum(), forward=lambda m, b: m(b.ids))


def test_step_on_the_synthetic_batch_gets_the_keys_the_model_takes() -> None:
    seen: list[set[str]] = []

    def step(m: nn.Module, b: dict) -> torch.Tensor:
        seen.append(set(b))
        return m(**b).loss

    report = audit(token_classifier(), step=step)
    assert report.passed, report.failure_message()
    assert seen and seen[0] >= {"input_ids", "attention_mask", "labels"}


def test_an_audit_with_batch_leaves_the_batch_and_model_as_given(tmp_path: Any) -> None:
    model, batch = token_classifier(), collated(tokenizer(tmp_path), label_pad_token_id=0)
    before = {k: v.clone() for k, v in batch.items()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    audit(model, batch=batch, step=own_loss)
    assert all(torch.equal(before[k], batch[k]) for k in before) and set(batch) == set(before)
    assert all(torch.equal(params[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_the_readme_snippet_runs_and_its_assert_could_fail(tmp_path: Any) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    part = readme.split("### Your batch and your training step", 1)[1].split("\n### ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", part, re.S)[0]  # the torch one; then Keras
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md[batch=]", "exec"), namespace)
    tok = tokenizer(tmp_path)
    rng = torch.Generator().manual_seed(1)
    examples = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        labels = torch.randint(0, 3, (len(ids),), generator=rng).tolist()
        examples.append({"input_ids": ids, "labels": labels})
    namespace["test_the_training_step_keeps_pads_out"](token_classifier(), tok, examples)
    # the same snippet fails where plain torch finds the leak: labels padded with the pad id
    batch = collated(tok, label_pad_token_id=0)
    assert "labels_at_pads" in truth(token_classifier(), own_loss, batch, 0)
    code = code.replace("(tokenizer)", "(tokenizer, label_pad_token_id=0)")
    exec(compile(code, "README.md[batch=]", "exec"), namespace)
    with pytest.raises(AssertionError, match="labels_at_pads"):
        namespace["test_the_training_step_keeps_pads_out"](token_classifier(), tok, examples)
