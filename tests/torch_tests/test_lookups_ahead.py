"""The lookups recorded in the train pass: the same report as a separate lookups pass.

``run_audit(..., ahead=False)`` is the plain way (a quiet lookups forward, then the train
pass on the tables it names); the default runs the train pass first on the tables the
audit will most likely keep and classifies from the ids it recorded. Every report must be
identical, value for value, and the default must run one forward fewer when the guess
holds, or start again the plain way when it does not.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_padaudit.core.engine import adapt, run_audit
from pytest_padaudit.core.options import AuditOptions

from support.tiny_hf import tiny_bert_config
from support.torch_models import Encoder, MeanPool, Tagger, TiedLM, TwoTables


class WithPositions(nn.Module):
    """Token and position tables; with pad_idx=0 both get pad id 0, only one is a token table."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(64, 8)
        self.positions = nn.Embedding(32, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        where = torch.arange(ids.shape[1]).expand_as(ids)
        return self.head(self.tokens(ids) + self.positions(where))


def bert() -> nn.Module:
    import transformers

    torch.manual_seed(0)
    return transformers.BertModel(tiny_bert_config(40, pad_token_id=0))


CASES = {  # name: (model factory, options, forwards with the guess, the guess holds)
    "tagger-leaky": (lambda: Tagger(padding_idx=None), {"pad_idx": 0}, True),
    "meanpool-dropout": (lambda: MeanPool(masked=False, dropout=0.3), {"steps": 2}, True),
    "tied-lm": (TiedLM, {"optimizer": torch.optim.Adam}, True),
    "two-tables": (TwoTables, {"pad_idx": 0}, True),
    "encoder-masked": (lambda: Encoder(masked=True), {}, True),
    "bert": (bert, {}, True),
    "positions-pad-given": (WithPositions, {"pad_idx": 0}, False),
}


def forwards(model: nn.Module) -> list[int]:
    """Count the model's forward calls (the returned list grows by one per call)."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("name", list(CASES))
def test_the_report_is_the_plain_ways_value_for_value(name):
    build, options, holds = CASES[name]
    torch.manual_seed(0)
    model = build()
    opts = AuditOptions.from_kwargs(**options)
    handle = adapt(model, opts)
    calls = forwards(model)
    plain = run_audit(handle, opts, ahead=False).to_dict()
    plain_calls = len(calls)
    calls.clear()
    ahead = run_audit(handle, opts).to_dict()
    assert ahead == plain
    steps = options.get("steps", 1)
    if holds:  # the lookups forward is gone
        assert len(calls) == plain_calls - 1
    else:  # one train pass per step spent on the guess, then the plain way
        assert len(calls) == plain_calls + steps
    assert any(t["skipped"] for t in plain["tables"]) or name != "positions-pad-given"


def test_only_the_first_train_pass_on_a_batch_records_its_lookups(monkeypatch):
    """Later steps look up the same ids: they run without the recorder; a new batch records."""
    import numpy as np

    from pytest_padaudit.adapters.torch import passes

    made: list[object] = []

    class Counted(passes.Lookups):
        def __init__(self, path_of: dict) -> None:
            super().__init__(path_of)
            made.append(self)

    monkeypatch.setattr(passes, "Lookups", Counted)
    opts = AuditOptions.from_kwargs(pad_idx=0, steps=3)
    handle = adapt(Tagger(padding_idx=None), opts)
    assert not run_audit(handle, opts).passed
    assert len(made) == 1  # three train passes, one recorder
    seen, batch = handle.recorded_lookups(), handle._seen_of
    made.clear()
    plain = handle.lookups(batch)  # the plain way's quiet pass on the same batch
    assert seen.keys() == plain.keys() and len(made) == 1
    for path, ids in plain.items():
        np.testing.assert_array_equal(seen[path], ids)
    made.clear()
    run_audit(handle, opts)  # a new batch: recorded again, once
    assert len(made) == 1 and handle._seen_of is not batch
