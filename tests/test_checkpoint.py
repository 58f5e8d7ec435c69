"""Checkpoint audits on files the tests write: PyTorch, safetensors and Keras."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from pytest_padaudit import PadAuditError, PadLeakError, audit_checkpoint
from pytest_padaudit.core.checkpoint import is_token_table

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
    assert [(t.layer, t.pad_idx, t.pad_norm) for t in report.tables] == [
        ("encoder.embed_tokens.weight", 0, 0.0)
    ]
    assert report.options["expect"] == ["zero"] and report.kind == "checkpoint"
    assert report.framework == "torch" and report.seed is None
    assert report.raise_if_leaking() is report


def test_torch_state_dict_nonzero_pad_row(tmp_path: Path) -> None:
    path = tmp_path / "dirty.pt"
    torch.save(state(0.5), path)
    report = audit_checkpoint(str(path), pad_idx=0)
    assert not report.passed
    (table,) = report.tables
    assert table.pad_norm == pytest.approx(1.0)  # sqrt(4 * 0.25)
    (finding,) = report.findings
    assert (finding.check, finding.layer, finding.pad_idx) == (
        "zero",
        "encoder.embed_tokens.weight",
        0,
    )
    assert finding.cause == "pad_row_nonzero" and finding.value == pytest.approx(1.0)
    assert "norm 1" in finding.message and "shape [10, 4]" in finding.message
    assert "padding_idx" in finding.why and "state_dict[" in finding.fix
    message = report.failure_message()
    assert "[zero] encoder.embed_tokens.weight (pad id 0)" in message
    assert "cause:" in message and "fix:" in message and "--padaudit-seed" not in message
    assert f"reproduce: audit_checkpoint({str(path)!r}, pad_idx=0)" in message
    with pytest.raises(PadLeakError, match="not zero") as err:
        report.raise_if_leaking()
    assert err.value.report is report
    allowed = audit_checkpoint(str(path), pad_idx=0, allow="pad_row_nonzero")
    assert allowed.passed and allowed.findings[0].allowed
    assert audit_checkpoint(path, pad_idx=0, atol=0.6).passed


def test_torch_changed_against_baseline(tmp_path: Path) -> None:
    before, after = tmp_path / "before.pt", tmp_path / "after.pt"
    torch.save(state(0.5), before)
    torch.save(state(0.5), after)
    # a non-zero pad row that stays put is fine under expect="unchanged" (the default)
    report = audit_checkpoint(after, baseline=before, pad_idx=0)
    assert report.passed and report.options["expect"] == ["unchanged"]
    assert report.tables[0].update == 0.0

    moved = state(0.5)
    moved["encoder.embed_tokens.weight"][0, 2] += 0.25
    torch.save(moved, after)
    report = audit_checkpoint(after, baseline=before, pad_idx=0)
    assert not report.passed
    assert report.tables[0].update == pytest.approx(0.25)
    (finding,) = report.findings
    assert (finding.check, finding.layer, finding.cause) == (
        "unchanged",
        "encoder.embed_tokens.weight",
        "pad_row_changed",
    )
    assert report.tables[0].update_cause == "pad_row_changed"
    both = audit_checkpoint(after, baseline=before, pad_idx=0, expect=("zero", "unchanged"))
    assert [f.check for f in both.findings] == ["zero", "unchanged"]
    assert "max|Δ| vs baseline" in str(both)


def test_in_memory_state_and_nested_checkpoints(tmp_path: Path) -> None:
    assert audit_checkpoint(state(0.0), pad_idx=0).passed
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": state(0.0), "epoch": 3}, path)
    report = audit_checkpoint(path, pad_idx=0)
    assert [t.layer for t in report.tables] == ["state_dict.encoder.embed_tokens.weight"]
    numpy_state = {"emb.weight": np.eye(5, dtype=np.float32)}
    assert not audit_checkpoint(numpy_state, pad_idx=0).passed
    checked = audit_checkpoint(numpy_state, pad_idx=0, keys=["emb.weight"])
    assert checked.tables[0].pad_norm == 1.0 and checked.framework == "numpy"
    (finding,) = checked.findings  # NumPy arrays: plain words, no framework's idiom
    assert "state['emb.weight'][0] = 0" in finding.fix and "padding_idx" not in finding.why


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
    clean = audit_checkpoint(keras_files["clean"], pad_idx=0, expect="zero")
    assert clean.passed, clean.failure_message()
    assert [t.layer for t in clean.tables] == ["layers/embedding/vars/0"]
    random = audit_checkpoint(keras_files["random"], pad_idx=0, expect="zero")
    assert not random.passed and random.tables[0].pad_norm > 0
    changed = audit_checkpoint(keras_files["changed"], baseline=keras_files["clean"], pad_idx=0)
    assert changed.tables[0].update == pytest.approx(0.125)
    assert [(f.check, f.layer) for f in changed.findings] == [
        ("unchanged", "layers/embedding/vars/0")
    ]


def test_keras_archive_reads_pad_zero_from_mask_zero(keras_files: dict[str, Path]) -> None:
    clean = audit_checkpoint(keras_files["clean_keras"])  # mask_zero=True: pad id 0
    assert clean.passed and clean.tables[0].pad_idx == 0
    changed = audit_checkpoint(keras_files["changed_keras"], baseline=keras_files["clean_keras"])
    assert not changed.passed
    assert changed.tables[0].update == pytest.approx(0.125)


def test_keras_default_fits_keras(keras_files: dict[str, Path]) -> None:
    """Keras initialises row 0 randomly: a random pad row is no finding by default."""
    weights = np.asarray(_h5_table(keras_files["random"]))
    assert np.abs(weights[0]).max() > 0  # ground truth: the saved pad row is not zero
    report = audit_checkpoint(keras_files["random"], pad_idx=0)
    assert report.passed, report.failure_message()
    assert report.framework == "keras" and report.options["expect"] == ["finite"]
    assert report.tables[0].pad_norm == pytest.approx(float(np.linalg.norm(weights[0])))
    assert any("mask_zero keeps it out of training" in n for n in report.notes)
    # asked for a zero row, the finding speaks Keras, not torch
    (finding,) = audit_checkpoint(keras_files["random"], pad_idx=0, expect="zero").findings
    words = finding.why + finding.fix
    assert "set_weights" in finding.fix and "mask_zero" in finding.why
    for torch_idiom in ("state_dict", "padding_idx", "torch", "no_grad"):
        assert torch_idiom not in words, torch_idiom
    changed = audit_checkpoint(keras_files["changed"], baseline=keras_files["clean"], pad_idx=0)
    words = changed.findings[0].why + changed.findings[0].fix
    assert "mask_zero" in words and "padding_idx" not in words and "state_dict" not in words


def _h5_table(path: Path) -> np.ndarray:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as f:
        return f["layers/embedding/vars/0"][()]


def test_nonfinite_pad_row_is_a_finding_whatever_is_expected(tmp_path: Path) -> None:
    before, after = state(0.0), state(0.0)
    after["encoder.embed_tokens.weight"][0, 1] = float("nan")
    report = audit_checkpoint(after, baseline=before, pad_idx=0)
    assert [(f.check, f.cause) for f in report.findings] == [("finite", "nonfinite")]
    assert not report.passed


def test_checkpoint_finding_in_json_report_like_a_model_finding(pytester: pytest.Pytester) -> None:
    """A zero-code checkpoint audit lands in --padaudit-report=json beside a model audit."""
    torch.save(state(0.5), pytester.path / "dirty.pt")
    pytester.makepyfile(
        """
        import torch

        def test_model(padaudit):
            padaudit(torch.nn.Embedding(10, 4), pad_idx=0, checks=("grad",))

        def test_saved(padaudit):
            padaudit.checkpoint("dirty.pt", pad_idx=0)
        """
    )
    result = pytester.runpytest(
        "--padaudit-checkpoint=dirty.pt?pad_idx=0",
        "--padaudit-report=json:out.json",
        "--junitxml=junit.xml",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*PadLeakError: padaudit found 1 pad leak in*dirty.pt*"])
    data = json.loads((pytester.path / "out.json").read_text())
    saved_in_test = [a for a in data["audits"] if a["test"].endswith("::test_saved")]
    assert [a["findings"][0]["cause"] for a in saved_in_test] == ["pad_row_nonzero"]
    by_kind = {a["kind"]: a for a in data["audits"] if a is not saved_in_test[0]}
    model, saved = by_kind["model"], by_kind["checkpoint"]
    assert set(model) == set(saved)  # one shape for both
    assert set(model["findings"][0]) == set(saved["findings"][0])
    (finding,) = saved["findings"]
    assert finding["cause"] == "pad_row_nonzero" and finding["layer"] == (
        "encoder.embed_tokens.weight"
    )
    assert saved["test"] == "padaudit-checkpoint[dirty.pt?pad_idx=0]" and not saved["passed"]
    assert data["summary"]["audits"] == 3 and data["summary"]["leaking"] == 3
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count('name="padaudit_json"') == 3
    assert "pad_row_nonzero" in junit

    allowed = pytester.runpytest(
        "--padaudit-checkpoint=dirty.pt?pad_idx=0&allow=('pad_row_nonzero',)",
        "--padaudit-report=json:allowed.json",
        "-k",
        "padaudit-checkpoint",
        "-p",
        "no:cacheprovider",
    )
    allowed.assert_outcomes(passed=1)
    (audit,) = json.loads((pytester.path / "allowed.json").read_text())["audits"]
    assert audit["passed"] and audit["findings"][0]["allowed"]
