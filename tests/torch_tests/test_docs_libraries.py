"""Run the README's library snippets (Real models: sentence-transformers ... tf-keras)."""

from __future__ import annotations

import os
import re
import socket
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")
pytest.importorskip("peft")

DOC = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### sentence-transformers, PEFT, DDP, FSDP2, keras-hub and tf-keras"


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
    assert len(snippets()) == 5


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


def test_keras_hub_snippet(tmp_path):
    pytest.importorskip("keras_hub")
    from pytest_padaudit import audit

    from support import zoo_keras_hub as zoo
    from support.keras_hub_tasks import TASKS, WORDS, gpt2_tokenizer

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    run_snippet(3)["test_keras_hub"](vocabulary, gpt2_tokenizer())
    # the snippet's asserts could fail: plain TF finds the unmasked loss leaking in the
    # backbone, and the tied head in the LM
    bare = zoo._backbone("BertBackbone", True, **dict(zoo.SMALL, num_heads=2))
    truth, _ = zoo.truth(zoo._entry("b", bare, 0, "-", True), bare(tmp_path))
    assert truth["grad"] and not audit(bare(tmp_path), pad_idx=0).passed
    lm = TASKS["GPT2CausalLM"][0]
    truth, _ = zoo.truth(zoo._entry("lm", lm, 0, "-"), lm(tmp_path))
    assert truth["tied"] and not audit(lm(tmp_path), loss="masked").passed


def test_tf_keras_snippet():
    tf = pytest.importorskip("tensorflow")
    tf_keras = pytest.importorskip("tf_keras")
    from pytest_padaudit import audit

    from support.keras_backend_truth import batch_of
    from support.keras_truth import pad_row_grad

    namespace = run_snippet(4)
    namespace["test_tf_keras"]()
    ids = tf_keras.Input((None,), dtype="int32")
    x = tf_keras.layers.Embedding(1000, 16, mask_zero=True, name="tok")(ids)
    for dense, leaks in ((namespace["MaskedDense"], False), (tf_keras.layers.Dense, True)):
        model = tf_keras.Model(ids, dense(1)(x))
        report = audit(model)
        batch, _ = batch_of(report)
        table = model.get_layer("tok").embeddings
        truth = pad_row_grad(lambda m=model, b=batch: m(tf.constant(b)), table, 0, None)
        assert (truth > 0) == leaks == (not report.passed)
        assert all("tf.cast(mask" in f.fix for f in report.findings if f.check == "grad")
