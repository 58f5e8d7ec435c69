"""keras-hub, zero-config: backbones and tasks audited with no forward=, pad ids from the model.

A task with a preprocessor gives its pad id (``preprocessor.tokenizer.pad_token_id``); a
model without one is refused with a PadAuditError that names, for its family, where the id
is found. Verdicts are compared with the zoo's plain-TensorFlow ground truth
(:func:`zoo_keras_hub.truth`: padded batch, weighted sum, GradientTape, densified rows).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")
pytest.importorskip("keras.layers")
keras_hub = pytest.importorskip("keras_hub")

from pytest_padaudit import PadAuditError, audit

from support import zoo_keras_hub as zoo
from support.keras_hub_tasks import BARE, TASKS, bert_tokenizer, gpt2_tokenizer, roberta_tokenizer
from support.zoo_common import verdict


@pytest.mark.parametrize("name", sorted(BARE))
def test_no_pad_id_is_refused_naming_where_the_family_keeps_it(name, tmp_path):
    build, where = BARE[name]
    model = build(tmp_path)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(PadAuditError) as info:
        audit(model)
    message = str(info.value)
    assert message.startswith(f"no pad id is known for the embedding tables of {name} (")
    assert "token_embedding" in message and "pass pad_idx= the id your data pads with" in message
    assert where in message, message
    assert "model.preprocessor.tokenizer.pad_token_id" in message
    assert "forward=" not in message  # the model is fed as it is: only the id is missing
    assert all((a == b).all() for a, b in zip(before, model.get_weights(), strict=True))


# -- the hints are true: each family's tokenizer, built offline, has the id they name ---------
def test_the_ids_the_hints_name_are_the_tokenizers_ids():
    assert bert_tokenizer().pad_token_id == 0
    assert bert_tokenizer("DistilBertTokenizer").pad_token_id == 0
    assert roberta_tokenizer().pad_token_id == 1
    gpt2 = gpt2_tokenizer()
    assert gpt2.pad_token_id == 0 and gpt2.id_to_token(0) == "!"  # a real token


# -- tasks with a preprocessor: the pad id comes from it, no option at all -------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_with_a_preprocessor_is_audited_with_no_options(name, tmp_path):
    build, pad, segments = TASKS[name]
    model = build(tmp_path)
    report = audit(model, allow=("tied",))  # no forward=, no pad_idx=
    (table,) = [t for t in report.tables if t.audited]
    assert table.pad_idx == pad == model.preprocessor.tokenizer.pad_token_id
    entry = zoo._entry(name, build, pad, "preprocessor", segments)
    expected, numbers = zoo.truth(entry, build(tmp_path))
    assert verdict(report, zoo.name) == expected, (numbers, str(report))
    assert report.passed == (not expected["grad"] and expected["invariance"] == "clean")
    assert not [f for f in report.findings if f.cause == "pad_mismatch"]


# -- --padaudit-model with keras-hub factories ------------------------------------------------
FACTORIES = """
import pathlib
import sys
import tempfile

sys.path[:0] = {tests!r}  # this folder, and tests/ for the shared helpers
from support.keras_hub_tasks import BARE, TASKS

TMP = pathlib.Path(tempfile.gettempdir())


def gpt2_lm():
    return TASKS["GPT2CausalLM"][0](TMP)


def bert_classifier():
    return TASKS["BertTextClassifier"][0](TMP)


def bert_backbone():
    return BARE["BertBackbone"][0](TMP)
"""


def test_padaudit_model_takes_keras_hub_factories(pytester, tmp_path):
    from pathlib import Path

    here = Path(__file__).resolve().parent
    tests = [str(here), str(here.parent)]
    pytester.makepyfile(khfactories=FACTORIES.format(tests=tests))

    # ground truth (plain TF) for what each item must conclude
    def clean(build, segments, allow=()):
        truth, _ = zoo.truth(zoo._entry("t", build, 0, "-", segments), build(tmp_path))
        tied = truth["tied"] if "tied" not in allow else []
        return not truth["grad"] and not tied and truth["invariance"] == "clean"

    lm, classifier, bare = (
        TASKS["GPT2CausalLM"][0],
        TASKS["BertTextClassifier"][0],
        BARE["BertBackbone"][0],
    )
    expected = [
        clean(lm, False),
        clean(lm, False, ("tied",)),
        clean(classifier, True),
        False,  # no pad id: the PadAuditError fails the item
        clean(bare, True),
    ]
    assert not expected[0]  # the tied head alone fails the LM
    specs = [
        "khfactories:gpt2_lm",  # the tied head: a finding
        "khfactories:gpt2_lm?allow=('tied',)",
        "khfactories:bert_classifier",
        "khfactories:bert_backbone",  # no preprocessor: asks for pad_idx=
        "khfactories:bert_backbone?pad_idx=0",
    ]
    args = [f"--padaudit-model={spec}" for spec in specs]
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args)
    summary = result.stdout.str().split("short test summary info")[1].splitlines()
    for spec, passes in zip(specs, expected, strict=True):
        # one outcome line per item (CI=true makes pytest print whole messages below it)
        outcome = ("PASSED", "FAILED", "ERROR")
        lines = [line for line in summary if line.startswith(outcome) and f"[{spec}]" in line]
        assert len(lines) == 1, (spec, summary)
        assert lines[0].startswith("PASSED" if passes else "FAILED"), (spec, lines[0])
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == sum(expected), out
    assert outcomes.get("failed", 0) == len(expected) - sum(expected), out
    assert "[grad] token_embedding (pad id 0)" in out and "cause: tied" in out
    assert "PadAuditError: no pad id is known for the embedding tables of BertBackbone" in out
    assert "keras_hub.models.BertTokenizer(vocabulary=...).pad_token_id" in out
    assert "forward=" not in out.split("short test summary")[0].replace("--padaudit", "")


@pytest.mark.parametrize(("cls", "segments"), [("BertBackbone", True), ("GPT2Backbone", False)])
def test_a_position_table_longer_than_the_vocabulary_does_not_set_the_batch(
    cls, segments, tmp_path
):
    """max_sequence_length=512 > vocabulary 100: ids come from the token table's rows."""
    build = zoo._backbone(cls, segments, **dict(zoo.SMALL, num_heads=2))  # 512 positions
    model = build(tmp_path)
    assert model.get_layer("position_embedding").sequence_length > zoo.VOCAB
    report = audit(model, pad_idx=0)  # raised "indices ... not in [0, 100)" before
    assert max(max(row) for row in report.batch["ids"]) < zoo.VOCAB
    tables = {t.layer: t.skipped for t in report.tables}
    assert tables["token_embedding"] is None and tables["position_embedding"]
    expected, numbers = zoo.truth(zoo._entry(cls, build, 0, "pad_idx=", segments), build(tmp_path))
    assert verdict(report, zoo.name) == expected, (numbers, str(report))
