"""Guards refuse bad input at construction (or at train start) saying what to pass; the
package imports no framework until a guard is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import pytest_padaudit
from pytest_padaudit import PadAuditError

SRC = Path(pytest_padaudit.__file__).resolve().parents[1]
GUARDS = {
    "TrainerPadGuard": ("transformers", "every_n_steps"),
    "KerasPadGuard": ("keras", "every_n_batches"),
    "LightningPadGuard": ("lightning", "every_n_steps"),
}


def guard_class(name: str):
    pytest.importorskip(GUARDS[name][0])
    import pytest_padaudit.guards as guards

    return getattr(guards, name)


@pytest.mark.parametrize("name", sorted(GUARDS))
@pytest.mark.parametrize("every", [0, -3, 1.5, "2", True, None])
def test_a_bad_step_count_is_refused_with_what_to_pass(name, every):
    cls = guard_class(name)
    arg = GUARDS[name][1]
    with pytest.raises(PadAuditError) as err:
        cls(**{arg: every})
    message = str(err.value)
    assert f"{name}({arg}={every!r})" in message
    assert f"pass {arg}= a positive int" in message


@pytest.mark.parametrize("name", sorted(GUARDS))
@pytest.mark.parametrize("on_leak", ["fail", "Raise", None, "ignore"])
def test_a_bad_on_leak_is_refused_with_what_to_pass(name, on_leak):
    cls = guard_class(name)
    with pytest.raises(PadAuditError, match=r"pass on_leak='raise' .* or on_leak='warn'"):
        cls(on_leak=on_leak)


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_a_bad_pad_idx_is_refused_with_what_to_pass(name):
    cls = guard_class(name)
    for bad in ("0", 1.0, {"emb": "0"}, [0]):
        with pytest.raises(PadAuditError, match=r"pass pad_idx= the int your data pads with"):
            cls(pad_idx=bad)


def test_a_model_without_a_pad_row_is_refused_at_train_start_naming_pad_idx():
    torch = pytest.importorskip("torch")
    guard = guard_class("TrainerPadGuard")()

    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = torch.nn.Embedding(10, 4)  # no padding_idx, no pad_idx=

        def forward(self, input_ids):
            return self.tok(input_ids).mean()

    state = SimpleNamespace(global_step=0)
    with pytest.raises(PadAuditError) as err:
        guard.on_train_begin(None, state, None, model=Bag())
    message = str(err.value)
    assert "TrainerPadGuard found no embedding table with a pad row in " in message
    assert "tok (Embedding, 10 rows)" in message
    assert "TrainerPadGuard(pad_idx=0)" in message


def test_pad_idx_naming_an_unknown_table_lists_the_paths():
    torch = pytest.importorskip("torch")
    guard = guard_class("TrainerPadGuard")(pad_idx={"tokens": 0})
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    with pytest.raises(PadAuditError, match=r"names 'tokens'.*use paths from 0"):
        guard.on_train_begin(None, SimpleNamespace(global_step=0), None, model=model)


def test_importing_the_guards_loads_no_framework():
    code = (
        "import sys, pytest_padaudit.guards as g\n"
        "from pytest_padaudit.guards import PadLeakWarning\n"
        "heavy = ('torch', 'keras', 'tensorflow', 'jax', 'transformers', 'lightning')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error():
    import pytest_padaudit.guards as guards

    with pytest.raises(AttributeError, match="no attribute 'TorchPadGuard'"):
        guards.TorchPadGuard  # noqa: B018
