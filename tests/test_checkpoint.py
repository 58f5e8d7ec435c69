"""Checkpoint audits on files the tests write: PyTorch, safetensors and Keras."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from pytest_padaudit import PadAuditError, PadLeakError, audit_checkpoint
from pytest_padaudit.checkpoint import is_token_table

torch = pytest.importorskip("torch")


def state(pad_row: float = 0.0, rows: int = 10) -> dict[str, object]:
    """A small state dict: a token table (pad row set), positions and a head."""
    torch.manual_seed(0)
    emb = torch.randn(rows, 4)
    emb[0] = pad_row
    return {
        "encoder.embed_tokens.weight": emb,
        "encoder.embed_positions.weight": torch.randn(8, 4),
        "encoder.layer_norm.weight": torch.ones(4),
        "head.weight": torch.randn(3, 4),
    }


def test_token_table_names() -> None:
    for key in (
        "bert.embeddings.word_embeddings.weight",
        "transformer.wte.weight",
        "shared.weight",
        "layers/embedding/vars/0",
        "model.embed_tokens.weight",
    ):
        assert is_token_table(key), key
    for key in (
        "bert.embeddings.position_embeddings.weight",
        "transformer.wpe.weight",
        "embeddings.token_type_embeddings.weight",
        "gpt_neox.embed_out.weight",
        "lm_head.weight",
        "encoder.embed_positions.weight",
    ):
        assert not is_token_table(key), key


def test_torch_state_dict_clean(tmp_path: Path) -> None:
    path = tmp_path / "clean.pt"
    torch.save(state(0.0), path)
    report = audit_checkpoint(path, pad_idx=0)
    assert report.passed, report.failure_message()
    assert [(t.key, t.pad_idx, t.norm, t.zero) for t in report.tables] == [
        ("encoder.embed_tokens.weight", 0, 0.0, True)
    ]
    assert report.expect == ("zero",)
    assert report.raise_if_leaking() is report


def test_torch_state_dict_nonzero_pad_row(tmp_path: Path) -> None:
    path = tmp_path / "dirty.pt"
    torch.save(state(0.5), path)
    report = audit_checkpoint(str(path), pad_idx=0)
    assert not report.passed
    (table,) = report.tables
    assert table.norm == pytest.approx(1.0)  # sqrt(4 * 0.25)
    assert not table.zero
    (finding,) = report.findings
    assert finding.startswith("[zero] encoder.embed_tokens.weight (pad id 0, shape [10, 4])")
    assert "norm 1" in finding and "cause:" in finding and "fix:" in finding
    with pytest.raises(PadLeakError, match="not zero"):
        report.raise_if_leaking()
    assert audit_checkpoint(path, pad_idx=0, atol=0.6).passed


def test_torch_changed_against_baseline(tmp_path: Path) -> None:
    before, after = tmp_path / "before.pt", tmp_path / "after.pt"
    torch.save(state(0.5), before)
    torch.save(state(0.5), after)
    # a non-zero pad row that stays put is fine under expect="unchanged" (the default)
    report = audit_checkpoint(after, baseline=before, pad_idx=0)
    assert report.passed and report.expect == ("unchanged",)
    assert report.tables[0].change == 0.0

    moved = state(0.5)
    moved["encoder.embed_tokens.weight"][0, 2] += 0.25
    torch.save(moved, after)
    report = audit_checkpoint(after, baseline=before, pad_idx=0)
    assert not report.passed
    assert report.tables[0].change == pytest.approx(0.25)
    assert report.findings[0].startswith("[unchanged] encoder.embed_tokens.weight")
    both = audit_checkpoint(after, baseline=before, pad_idx=0, expect=("zero", "unchanged"))
    assert [f.split("]")[0] for f in both.findings] == ["[zero", "[unchanged"]
    assert "max|Δ| vs baseline" in str(both)


def test_in_memory_state_and_nested_checkpoints(tmp_path: Path) -> None:
    assert audit_checkpoint(state(0.0), pad_idx=0).passed
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": state(0.0), "epoch": 3}, path)
    report = audit_checkpoint(path, pad_idx=0)
    assert [t.key for t in report.tables] == ["state_dict.encoder.embed_tokens.weight"]
    numpy_state = {"emb.weight": np.eye(5, dtype=np.float32)}
    assert not audit_checkpoint(numpy_state, pad_idx=0).passed
    assert audit_checkpoint(numpy_state, pad_idx=0, keys=["emb.weight"]).tables[0].norm == 1.0


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (open, (str(Path(__file__).parent / "SHOULD_NOT_EXIST"), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"emb.weight": torch.zeros(3, 2), "boom": _Boom()}, path)
    with pytest.raises(PadAuditError, match=r"weights_only=True\) refused.*state_dict"):
        audit_checkpoint(path, pad_idx=0)
    assert not (Path(__file__).parent / "SHOULD_NOT_EXIST").exists()
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps({"x": _Boom()}))
    with pytest.raises(PadAuditError, match="never unpickles"):
        audit_checkpoint(raw, pad_idx=0)


def test_bad_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "clean.pt"
    torch.save(state(0.0), path)
    with pytest.raises(PadAuditError, match="pass pad_idx="):
        audit_checkpoint(path)
    with pytest.raises(PadAuditError, match="pass baseline="):
        audit_checkpoint(path, pad_idx=0, expect="unchanged")
    with pytest.raises(PadAuditError, match="expect='nope' is not valid"):
        audit_checkpoint(path, pad_idx=0, expect="nope")
    with pytest.raises(PadAuditError, match=r"no key 'wte\.weight': pass keys= from"):
        audit_checkpoint(path, pad_idx=0, keys="wte.weight")
    with pytest.raises(PadAuditError, match="out of range"):
        audit_checkpoint(path, pad_idx=10)
    with pytest.raises(PadAuditError, match="does not exist"):
        audit_checkpoint(tmp_path / "missing.pt", pad_idx=0)
    with pytest.raises(PadAuditError, match="no tensor named like a token embedding"):
        audit_checkpoint({"head.weight": np.ones((3, 3))}, pad_idx=0)


def test_safetensors_with_config_json_pad(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tables = state(0.0, rows=6)
    tables["encoder.embed_tokens.weight"][1] = 0.0  # RoBERTa-style pad id 1
    tables["encoder.embed_tokens.weight"][0] = 2.0
    safetensors_torch.save_file(tables, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"pad_token_id": 1}))
    report = audit_checkpoint(tmp_path / "model.safetensors")
    assert report.passed, report.failure_message()
    assert report.tables[0].pad_idx == 1
    assert not audit_checkpoint(tmp_path / "model.safetensors", pad_idx=0).passed


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    keras = pytest.importorskip("keras")
    root = tmp_path_factory.mktemp("keras")
    with warnings.catch_warnings():  # Keras' own NumPy 2 copy= deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return _write_keras_files(keras, root)


def _write_keras_files(keras: object, root: Path) -> dict[str, Path]:
    model = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(10, 4, mask_zero=True, name="token_embedding"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2),
        ]
    )
    table = model.get_layer("token_embedding")
    weights = np.asarray(table.get_weights()[0])
    files = {"random": root / "random.weights.h5"}  # Keras does not zero the pad row
    model.save_weights(files["random"])
    weights[0] = 0.0
    table.set_weights([weights])
    files["clean"] = root / "clean.weights.h5"
    model.save_weights(files["clean"])
    files["clean_keras"] = root / "clean.keras"
    model.save(files["clean_keras"])
    weights[0, 1] = 0.125
    table.set_weights([weights])
    files["changed"] = root / "changed.weights.h5"
    model.save_weights(files["changed"])
    files["changed_keras"] = root / "changed.keras"
    model.save(files["changed_keras"])
    return files


def test_keras_weights_h5(keras_files: dict[str, Path]) -> None:
    clean = audit_checkpoint(keras_files["clean"], pad_idx=0)
    assert clean.passed, clean.failure_message()
    assert [t.key for t in clean.tables] == ["layers/embedding/vars/0"]
    random = audit_checkpoint(keras_files["random"], pad_idx=0)
    assert not random.passed and random.tables[0].norm > 0
    changed = audit_checkpoint(keras_files["changed"], baseline=keras_files["clean"], pad_idx=0)
    assert changed.tables[0].change == pytest.approx(0.125)
    assert changed.findings[0].startswith("[unchanged] layers/embedding/vars/0")


def test_keras_archive_reads_pad_zero_from_mask_zero(keras_files: dict[str, Path]) -> None:
    clean = audit_checkpoint(keras_files["clean_keras"])  # mask_zero=True: pad id 0
    assert clean.passed and clean.tables[0].pad_idx == 0
    changed = audit_checkpoint(keras_files["changed_keras"], baseline=keras_files["clean_keras"])
    assert not changed.passed
    assert changed.tables[0].change == pytest.approx(0.125)
