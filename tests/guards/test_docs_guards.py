"""Run the README's guard snippets (## Audit your training pipeline), one per library."""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest

from pytest_padaudit import PadLeakError

from support.tiny_hf import tiny_bert_config

DOC = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Audit your training pipeline"


def snippets() -> list[str]:
    section = DOC.read_text().split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### Guards", 1)[1]  # the guards' snippets, after batch='s
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_snippet(index: int) -> dict:
    namespace: dict = {}
    code = textwrap.dedent(snippets()[index])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        exec(compile(code, f"{DOC.name}[{SECTION}][{index}]", "exec"), namespace)
    return namespace


def test_the_section_has_one_guard_snippet_per_library():
    found = snippets()
    assert len(found) == 3
    for code, guard in zip(
        found, ("TrainerPadGuard", "KerasPadGuard", "LightningPadGuard"), strict=True
    ):
        assert f"from pytest_padaudit.guards import {guard}" in code


def tiny_tokenizer_model_and_data():
    """An offline word-level tokenizer, a tiny BERT tagger and a tokenized dataset."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    torch = pytest.importorskip("torch")
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away"]
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]"
    )
    torch.manual_seed(0)
    config = tiny_bert_config(
        len(vocab),
        num_hidden_layers=2,
        max_position_embeddings=32,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
    )
    model = transformers.BertForTokenClassification(config)
    texts = ["the cat sat", "a dog ran far away", "the mat", "cat and dog sat on a mat"] * 2
    rows = []
    for text in texts:
        row = dict(tokenizer(text))
        row["labels"] = [len(w) % 2 for w in text.split()]
        rows.append(row)
    return model, tokenizer, rows


def test_trainer_snippet_trains_and_keeps_the_pad_row(tmp_path):
    torch = pytest.importorskip("torch")
    model, tokenizer, rows = tiny_tokenizer_model_and_data()
    before = model.bert.embeddings.word_embeddings.weight[0].detach().clone()
    trainer = run_snippet(0)["train"](model, tokenizer, rows, str(tmp_path))
    assert trainer.state.global_step == 3
    assert torch.equal(model.bert.embeddings.word_embeddings.weight[0], before)


def test_trainer_snippet_with_labels_padded_by_the_pad_id_is_stopped(tmp_path):
    """The snippet's guard is real: label_pad_token_id=0 is reported on the first batch."""
    model, tokenizer, rows = tiny_tokenizer_model_and_data()
    code = snippets()[0].replace("label_pad_token_id=-100", "label_pad_token_id=0")
    namespace: dict = {}
    exec(compile(code, "README[trainer, label_pad_token_id=0]", "exec"), namespace)
    with pytest.raises(PadLeakError, match="labels_at_pads"):
        namespace["train"](model, tokenizer, rows, str(tmp_path))


def test_keras_snippet_fits_and_keeps_row_0():
    keras = pytest.importorskip("keras")
    namespace = run_snippet(1)
    row = keras.ops.convert_to_numpy(namespace["table"])[0]
    assert not row.any()  # plain Keras: row 0 is still zero after fit
    assert int(keras.ops.convert_to_numpy(namespace["optimizer"].iterations)) == 4


def test_lightning_snippet_fits_and_keeps_the_pad_row():
    pytest.importorskip("lightning")
    torch = pytest.importorskip("torch")
    namespace = run_snippet(2)
    assert namespace["trainer"].global_step == 4
    module = namespace["trainer"].lightning_module
    assert not torch.any(module.tok.weight[0])
