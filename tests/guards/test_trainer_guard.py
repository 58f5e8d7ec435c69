"""TrainerPadGuard in a real transformers.Trainer run, against plain-torch ground truth."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_padaudit import PadLeakError
from pytest_padaudit.guards import PadLeakWarning, TrainerPadGuard

from support.tiny_hf import tiny_bert_config

TABLE = "bert.embeddings.word_embeddings"
VOCAB, PAD = 50, 0


def tiny_bert(token: bool = False, pad_value: float | None = None):
    torch.manual_seed(0)
    config = tiny_bert_config(
        VOCAB, num_hidden_layers=2, max_position_embeddings=32, pad_token_id=PAD, num_labels=3
    )
    cls = (
        transformers.BertForTokenClassification
        if token
        else transformers.BertForSequenceClassification
    )
    model = cls(config)
    if pad_value is not None:
        with torch.no_grad():
            model.bert.embeddings.word_embeddings.weight[PAD] = pad_value
    return model


def dataset(
    n: int = 8, token: bool = False, label_pad: int = -100, masked: bool = True
) -> list[dict]:
    """Rows of different lengths, padded with PAD to one width (a collator's output)."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        length = 4 + i % 4
        ids = torch.full((8,), PAD)
        ids[:length] = torch.randint(1, VOCAB, (length,), generator=g)
        mask = (torch.arange(8) < length).long()
        if token:
            labels = torch.full((8,), label_pad)
            labels[:length] = torch.randint(0, 3, (length,), generator=g)
        else:
            labels = torch.tensor(i % 3)
        row = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if not masked:  # no attention_mask: real tokens attend to the pads
            del row["attention_mask"]
        rows.append(row)
    return rows


def train(model, tmp_path: Path, callbacks=(), weight_decay: float = 0.1, steps: int = 3, **data):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=weight_decay,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset(**data), callbacks=list(callbacks)
    )
    trainer.train()
    return trainer


def pad_row(model) -> torch.Tensor:
    return model.bert.embeddings.word_embeddings.weight[PAD].detach().clone()


def test_plain_training_with_weight_decay_moves_a_non_zero_pad_row(tmp_path):
    """Ground truth for the leak case: no guard, AdamW decay shrinks the 0.5 pad row."""
    model = tiny_bert(pad_value=0.5)
    before = pad_row(model)
    train(model, tmp_path)
    after = pad_row(model)
    assert not torch.equal(before, after)
    assert (after.abs() < before.abs()).all()  # shrunk toward zero: decay, not gradient


def test_guard_raises_on_weight_decay_naming_table_step_and_cause(tmp_path):
    model = tiny_bert(pad_value=0.5)
    with pytest.raises(PadLeakError) as err:
        train(model, tmp_path, [TrainerPadGuard(every_n_steps=1)])
    message = str(err.value)
    assert err.value.report is None
    assert f"the pad row of {TABLE} (pad id {PAD}) changed" in message
    assert "optimizer step 1 " in message
    assert "max|Δ| " in message
    assert "(weight_decay)" in message and "AdamW(weight_decay=0.1)" in message
    assert "'weight_decay': 0.0" in message and "Trainer(optimizers=" in message
    assert "(lookup)" not in message  # padding_idx gave the row no gradient
    for line in message.splitlines():
        assert TABLE in line or line.startswith("fix"), line


def test_guard_checks_every_n_steps(tmp_path):
    model = tiny_bert(pad_value=0.5)
    with pytest.raises(PadLeakError, match="optimizer step 2 "):
        train(model, tmp_path, [TrainerPadGuard(every_n_steps=2)], steps=3)


def test_no_decay_and_zero_pad_row_trains_through_and_the_row_stays(tmp_path):
    model = tiny_bert()
    before = pad_row(model)
    assert not before.any()  # BERT's init zeroes the padding_idx row
    with warnings.catch_warnings():
        warnings.simplefilter("error", PadLeakWarning)
        trainer = train(model, tmp_path, [TrainerPadGuard(every_n_steps=1)], weight_decay=0.0)
    assert trainer.state.global_step == 3
    assert torch.equal(pad_row(model), before)  # ground truth: plain torch reads the row


def test_on_leak_warn_warns_and_training_completes(tmp_path):
    model = tiny_bert(pad_value=0.5)
    with pytest.warns(PadLeakWarning, match=TABLE) as seen:
        trainer = train(model, tmp_path, [TrainerPadGuard(every_n_steps=1, on_leak="warn")])
    assert trainer.state.global_step == 3
    assert len([w for w in seen if issubclass(w.category, PadLeakWarning)]) == 1  # said once
    assert issubclass(PadLeakWarning, UserWarning)


def no_padding_idx():
    model = tiny_bert()
    model.bert.embeddings.word_embeddings.padding_idx = None
    return model


def test_plain_training_without_padding_idx_or_mask_moves_the_pad_row(tmp_path):
    """Ground truth for the lookup case: pads attended, no padding_idx, no decay."""
    model = no_padding_idx()
    before = pad_row(model)
    train(model, tmp_path, weight_decay=0.0, masked=False)
    assert not torch.equal(before, pad_row(model))


def test_a_lookup_leak_is_named_as_such(tmp_path):
    """No padding_idx: the pad row gets gradient, and the guard says so."""
    with pytest.raises(PadLeakError) as err:
        train(
            no_padding_idx(),
            tmp_path,
            [TrainerPadGuard(pad_idx=PAD)],
            weight_decay=0.0,
            masked=False,
        )
    message = str(err.value)
    assert "(lookup)" in message and "has no padding_idx" in message
    assert "config.pad_token_id=0" in message


def test_pipeline_check_reports_labels_padded_with_the_pad_id(tmp_path):
    model = tiny_bert(token=True)
    with pytest.raises(PadLeakError) as err:
        train(model, tmp_path, [TrainerPadGuard()], weight_decay=0.0, token=True, label_pad=PAD)
    message = str(err.value)
    assert "labels_at_pads" in message and "first training batch" in message
    assert "label_pad_token_id=-100" in message


def test_pipeline_check_passes_labels_padded_with_minus_100(tmp_path):
    model = tiny_bert(token=True)
    trainer = train(model, tmp_path, [TrainerPadGuard()], weight_decay=0.0, token=True)
    assert trainer.state.global_step == 3
    assert not model._forward_pre_hooks  # the one-shot hook is gone
