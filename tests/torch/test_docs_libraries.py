"""Run the sentence-transformers, PEFT, DDP and FSDP2 snippets of docs/real-models.md."""

from __future__ import annotations

import os
import re
import socket
import textwrap
from pathlib import Path

import pytest

# tests/torch/ is a folder named torch: ask for a submodule, which only real torch has
pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")
pytest.importorskip("peft")

DOC = Path(__file__).resolve().parents[2] / "docs" / "real-models.md"
SECTION = "## sentence-transformers, PEFT, DDP and FSDP2"


def snippets() -> list[str]:
    text = DOC.read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_snippet(index: int) -> dict:
    code = snippets()[index]
    namespace: dict = {}
    exec(compile(textwrap.dedent(code), f"{DOC.name}[{index}]", "exec"), namespace)
    return namespace


def test_the_section_has_one_snippet_per_library():
    assert len(snippets()) == 3


def test_sentence_transformers_snippet(tmp_path):
    from test_libraries_torch import save_bert

    run_snippet(0)["test_sentence_transformer"](save_bert(tmp_path))


def test_peft_snippet():
    run_snippet(1)["test_lora_llama"]()


def test_ddp_fsdp2_snippet():
    """One gloo rank in this process: the snippet's wrappers need a running group."""
    import torch.distributed as dist
    from torch import nn

    from test_distributed import build

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    old = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        run_snippet(2)["audit_on_every_rank"](lambda: build(masked=True))
        leaky = nn.parallel.DistributedDataParallel(build(masked=False))
        from pytest_padaudit import audit

        assert not audit(leaky, pad_idx=0).passed  # the snippet's assert could fail
    finally:
        dist.destroy_process_group()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
