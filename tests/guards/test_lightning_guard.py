"""LightningPadGuard in a real lightning.pytorch.Trainer run, against plain-torch truth."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from torch import nn

from pytest_padaudit import PadLeakError
from pytest_padaudit.guards import LightningPadGuard, PadLeakWarning

VOCAB, PAD = 50, 0


class Pooled(pl.LightningModule):
    """Masked mean pooling over a padding_idx table, a linear head, AdamW."""

    def __init__(self, weight_decay: float, pad_value: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(VOCAB, 8, padding_idx=PAD)
        self.head = nn.Linear(8, 3)
        self.weight_decay = weight_decay
        with torch.no_grad():
            self.tok.weight[PAD] = pad_value

    def forward(self, input_ids, attention_mask):
        mask = attention_mask[..., None].float()
        return self.head((self.tok(input_ids) * mask).sum(1) / mask.sum(1))

    def training_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"])
        return nn.functional.cross_entropy(logits, batch["labels"])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=self.weight_decay)


def loader(labels_per_token: bool = False, label_pad: int = -100):
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(12):
        length = 3 + i % 4
        ids = torch.full((8,), PAD)
        ids[:length] = torch.randint(1, VOCAB, (length,), generator=g)
        mask = (torch.arange(8) < length).long()
        labels = torch.tensor(i % 3)
        if labels_per_token:
            labels = torch.where(mask.bool(), torch.tensor(1), torch.tensor(label_pad))
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return torch.utils.data.DataLoader(rows, batch_size=4)


def fit(module, callbacks=(), steps: int = 3, **data):
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(module, loader(**data))
    return trainer


def test_plain_lightning_with_weight_decay_moves_a_non_zero_pad_row():
    module = Pooled(weight_decay=0.1, pad_value=0.5)
    before = module.tok.weight[PAD].detach().clone()
    fit(module)
    after = module.tok.weight[PAD].detach()
    assert not torch.equal(before, after) and (after.abs() < before.abs()).all()


def test_guard_raises_on_weight_decay():
    module = Pooled(weight_decay=0.1, pad_value=0.5)
    with pytest.raises(PadLeakError) as err:
        fit(module, [LightningPadGuard(every_n_steps=1)])
    message = str(err.value)
    assert "the pad row of tok (pad id 0) changed" in message
    assert "optimizer step 1 " in message
    assert "(weight_decay)" in message and "AdamW(weight_decay=0.1)" in message
    assert "configure_optimizers()" in message and "(lookup)" not in message


def test_no_decay_trains_through_and_the_row_stays():
    module = Pooled(weight_decay=0.0, pad_value=0.5)
    before = module.tok.weight[PAD].detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PadLeakWarning)
        trainer = fit(module, [LightningPadGuard(every_n_steps=2)])
    assert trainer.global_step == 3
    assert torch.equal(module.tok.weight[PAD].detach(), before)


def test_on_leak_warn_trains_on():
    module = Pooled(weight_decay=0.1, pad_value=0.5)
    with pytest.warns(PadLeakWarning, match="pad row of tok"):
        trainer = fit(module, [LightningPadGuard(on_leak="warn")])
    assert trainer.global_step == 3


def test_first_batch_pipeline_check():
    class Tagger(Pooled):
        def training_step(self, batch, batch_idx):
            logits = self.head(self.tok(batch["input_ids"]))
            return nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"])

    with pytest.raises(PadLeakError, match="labels_at_pads"):
        fit(Tagger(weight_decay=0.0), [LightningPadGuard()], labels_per_token=True, label_pad=0)
