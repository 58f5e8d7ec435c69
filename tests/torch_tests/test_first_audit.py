"""Issue 21: a first audit in a fresh process steps element-wise optimizers without
importing torch._dynamo, and each update is bitwise the one a plain ``optimizer.step()`` makes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch.nn")

from pytest_padaudit.adapters.torch.optim import STEPPED_ALONE

CODE = """
import json, sys
import torch
from torch import nn
from pytest_padaudit import audit
from pytest_padaudit.adapters.torch.optim import PadRowStepper

cls = getattr(torch.optim, sys.argv[1])
torch.manual_seed(0)
model = nn.Sequential(nn.Embedding(30, 8), nn.Linear(8, 3))  # no padding_idx: row 0 trains
report = audit(model, pad_idx=0, optimizer=cls, checks=("grad", "update"))
audit_ok = "torch._dynamo" not in sys.modules

start = torch.randn(30, 8)
grads = [torch.randn(30, 8), torch.randn(30, 8)]  # two steps: the second reads the state
weight = nn.Parameter(start.clone())
stepper = PadRowStepper([(weight, 0)], cls)
mine = []
for grad in grads:
    weight.grad = grad.clone()
    stepper.step()
    mine.append(weight.detach()[0].clone())
stepper_ok = "torch._dynamo" not in sys.modules
markers_left = [  # torch sets none before it imports dynamo: any here is the audit's
    name for name, fn in vars(torch.optim.Optimizer).items()
    if hasattr(getattr(fn, "__wrapped__", None), "__dynamo_disable")
]

table = nn.Parameter(start.clone())
optimizer = cls([table])  # plain torch, dynamo and all: the whole table stepped
truth = []
for grad in grads:
    table.grad = grad.clone()
    optimizer.step()
    truth.append(table.detach()[0].clone())
print(json.dumps({
    "audit_without_dynamo": audit_ok,
    "stepper_without_dynamo": stepper_ok,
    "bitwise": all(torch.equal(a, b) for a, b in zip(mine, truth)),
    "moved": all(not torch.equal(a, start[0]) for a in truth),
    "update_found": any(f.check == "update" for f in report.findings),
    "markers_left": markers_left,
}))
"""


def _run(name: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CODE, name], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", STEPPED_ALONE)
def test_an_elementwise_optimizer_steps_bitwise_as_torch_without_importing_dynamo(
    name: str,
) -> None:
    result = _run(name)
    assert result["audit_without_dynamo"] and result["stepper_without_dynamo"]
    assert result["moved"], "the plain step did not move the row: the comparison is void"
    assert result["bitwise"]
    assert result["update_found"]  # row 0 has no padding_idx: every optimizer moves it
    assert result["markers_left"] == []


def test_a_default_audit_in_a_fresh_process_leaves_dynamo_unimported_and_it_works_after() -> None:
    code = textwrap.dedent(
        """
        import sys
        import torch
        from torch import nn
        from pytest_padaudit import audit

        model = nn.Sequential(nn.Embedding(30, 8, padding_idx=0), nn.Linear(8, 3))
        assert audit(model, pad_idx=0).passed
        assert "torch._dynamo" not in sys.modules and "sympy" not in sys.modules
        table = nn.Parameter(torch.ones(3, 2))
        optimizer = torch.optim.SGD([table], lr=0.5)  # torch's own path, dynamo and all
        table.grad = torch.ones(3, 2)
        optimizer.step()
        assert "torch._dynamo" in sys.modules and torch.equal(table, torch.full((3, 2), 0.5))
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
