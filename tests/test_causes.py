"""One list of causes: every cause the code can emit is listed, documented and allowable."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pytest_padaudit import audit, audit_checkpoint
from pytest_padaudit.core import causes
from pytest_padaudit.core.options import CAUSES

torch = pytest.importorskip("torch")
from torch import nn
from torch.nn import functional as F

from support.torch_models import MeanPool, Tagger, TiedLM

SRC = Path(__file__).resolve().parents[1] / "src" / "pytest_padaudit"
#: the modules that decide a finding's cause.
EMITTERS = [
    *sorted((SRC / "adapters").rglob("*.py")),  # every framework subpackage
    SRC / "core" / "explain.py",
    SRC / "core" / "engine.py",
    SRC / "core" / "checkpoint.py",
    SRC / "core" / "pipeline.py",
]
CODE = re.compile(r"^[a-z][a-z_]*$")


def _returned(node: ast.AST) -> ast.expr | None:
    """Return what a ``return`` statement or a lambda gives back, else None."""
    if isinstance(node, ast.Return):
        return node.value
    return node.body if isinstance(node, ast.Lambda) else None


def emitted_codes() -> set[str]:
    """Read every cause code the emitters can produce from their source.

    A cause is the first item of a returned ``(cause, why, fix)`` tuple, or the ``cause``
    argument of a ``Finding(...)`` written as a literal.
    """
    found: set[str] = set()
    for path in EMITTERS:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            value = _returned(node)
            if isinstance(value, ast.Tuple) and len(value.elts) == 3:
                first = value.elts[0]
                if isinstance(first, ast.Constant) and CODE.match(str(first.value)):
                    found.add(first.value)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding":
                cause = node.args[4] if len(node.args) > 4 else None
                cause = next((k.value for k in node.keywords if k.arg == "cause"), cause)
                if isinstance(cause, ast.Constant) and isinstance(cause.value, str):
                    found.add(cause.value)
    return found


def test_every_emitted_cause_is_in_the_one_list() -> None:
    found = emitted_codes()
    # the reader works: it finds the causes we know the adapters emit
    assert {"no_padding_idx", "tied", "weight_reuse", "unmasked", "forward"} <= found
    assert {"max_norm", "weight_decay", "optimizer", "nonfinite", "invariance"} <= found
    assert {"pad_row_nonzero", "pad_row_changed"} <= found
    assert found <= set(CAUSES), f"emitted but not allowable: {sorted(found - set(CAUSES))}"


def test_options_take_their_causes_from_the_one_owner() -> None:
    assert CAUSES == causes.CODES == tuple(c.code for c in causes.ALL)
    assert len(set(CAUSES)) == len(CAUSES)
    for cause in causes.ALL:
        assert cause.meaning and cause.checks, cause


def test_readme_documents_every_cause() -> None:
    readme = (SRC.parents[1] / "README.md").read_text()
    assert "## Causes" in readme and causes.markdown_table() in readme
    section = readme.split("## Causes", 1)[1]
    for code in CAUSES:
        assert f"`{code}`" in section, code
    assert "allow=('gradient',)" not in readme and 'allow=("gradient",)' not in readme


# -- models that emit each cause ------------------------------------------------------------
def _nonzero_pad(model: Tagger, value: float = 0.5) -> Tagger:
    with torch.no_grad():
        model.embed.weight[0] = value
    return model


class WeightReuse(Tagger):
    """padding_idx is set, but the weight is also read by a matmul (a hand-tied head)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids) @ self.embed.weight.T


class NanAtPads(Tagger):
    """Divides by the pad mask: inf at pad positions, nan gradients."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return self.head(x / (ids != 0).float()[..., None])


class WritesWeight(Tagger):
    """Shrinks the pad row in place inside forward (no max_norm)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.embed.weight[0].mul_(0.5)
        return super().forward(ids)


class Shaker(torch.optim.SGD):
    """An optimizer that moves every element, gradient or not (no weight decay)."""

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(0.01)


def _keras_unmasked() -> object:
    keras = pytest.importorskip("keras")
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(20, 4, mask_zero=True),
            keras.layers.Dense(3),
        ]
    )


def _checkpoint(kind: str) -> Callable[..., object]:
    def run(**allow: object) -> object:
        table = np.eye(6, 4, dtype=np.float32)
        state = {"embed.weight": table}
        if kind == "pad_row_changed":
            moved = {"embed.weight": table + np.float32(0.25)}
            return audit_checkpoint(moved, baseline=state, pad_idx=0, **allow)
        return audit_checkpoint(state, pad_idx=0, **allow)

    return run


def _audit(make: Callable[[], object], **options: object) -> Callable[..., object]:
    return lambda **allow: audit(make(), **options, **allow)


class FixedWidthDirect(nn.Module):
    """Takes exactly 16 columns and looks its table up with F.embedding, not the module:
    neither a wider batch nor noise at the module's pad outputs can measure it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4, padding_idx=0)
        self.head = nn.Linear(64, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(F.embedding(ids, self.embed.weight, padding_idx=0).flatten(1))


#: cause -> how to run an audit that emits it (keyword allow= passed through).
EMITS: dict[str, Callable[..., object]] = {
    "no_padding_idx": _audit(lambda: Tagger(padding_idx=None), pad_idx=0),
    "pad_mismatch": _audit(lambda: nn.Embedding(10, 4, padding_idx=1), pad_idx=0),
    "weight_reuse": _audit(WeightReuse, checks=("grad",)),
    "tied": _audit(TiedLM, checks=("grad",)),
    "unmasked": _audit(_keras_unmasked, checks=("grad",)),
    "nonfinite": _audit(lambda: NanAtPads(padding_idx=None), pad_idx=0, checks=("grad",)),
    "max_norm": _audit(lambda: _nonzero_pad(Tagger(max_norm=0.1)), checks=("grad", "update")),
    "forward": _audit(lambda: _nonzero_pad(WritesWeight()), checks=("grad", "update")),
    "weight_decay": _audit(
        lambda: _nonzero_pad(Tagger()),
        checks=("update",),
        optimizer=lambda params: torch.optim.AdamW(params, weight_decay=0.1),
    ),
    "optimizer": _audit(Tagger, checks=("update",), optimizer=Shaker),
    "invariance": _audit(lambda: MeanPool(masked=False), checks=("invariance",)),
    "not_checked": _audit(FixedWidthDirect, checks=("invariance",)),
    "labels_at_pads": _audit(
        Tagger,
        batch={
            "input_ids": torch.tensor([[3, 4, 0], [5, 6, 7]]),
            "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
            "labels": torch.tensor([[1, 2, 0], [0, 1, 2]]),  # 0 at the pad, not -100
        },
        step=lambda m, b: m(b["input_ids"]).sum(),
    ),
    "pad_row_nonzero": _checkpoint("pad_row_nonzero"),
    "pad_row_changed": _checkpoint("pad_row_changed"),
}


def test_every_cause_has_a_model() -> None:
    assert set(EMITS) == set(CAUSES)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("cause", CAUSES)
def test_allow_each_cause(cause: str) -> None:
    """Without allow= the cause fails the audit; allow=(cause,) allows exactly its findings."""
    report = EMITS[cause]()
    assert cause in {f.cause for f in report.findings}, report.failure_message()
    assert not report.passed
    allowed = EMITS[cause](allow=(cause,))
    assert [f.cause for f in allowed.findings] == [f.cause for f in report.findings]
    for finding in allowed.findings:
        assert finding.allowed == (finding.cause == cause), finding
    if {f.cause for f in report.findings} == {cause}:
        assert allowed.passed
