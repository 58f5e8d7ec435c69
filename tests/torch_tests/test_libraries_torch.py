"""sentence-transformers and PEFT models audited as they are, against plain-torch ground truth.

Every verdict is computed here without padaudit: a padded batch, a weighted sum of the
outputs, backward, the pad row (or LoRA's effective pad row), and for invariance the same
batch with pad columns appended, comparing outputs at real positions and every gradient.
"""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("torch.nn")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st = pytest.importorskip("sentence_transformers")
peft = pytest.importorskip("peft")

from pytest_padaudit import audit

from support.tiny_hf import tiny_bert_config

VOCAB = 30
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]


def save_bert(path, pad_token_id: int = 0, head: str = "BertModel", **config: int) -> str:
    """Save a tiny BERT (``head``: a transformers class name) and its tokenizer to ``path``.

    The BertTokenizerFast's vocab is written here; ``config`` adds to the BertConfig.
    """
    torch.manual_seed(0)
    tiny = tiny_bert_config(
        VOCAB, 8, max_position_embeddings=32, pad_token_id=pad_token_id, **config
    )
    getattr(transformers, head)(tiny).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    return str(path)


class MeanOverAll(torch.nn.Module):
    """A pooling that ignores attention_mask: mean over every position, pads included."""

    def forward(self, features):
        features["sentence_embedding"] = features["token_embeddings"].mean(1)
        return features


def sentence_transformer(path: str, mode: str):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformer = Transformer(path)
    dim = transformer.get_embedding_dimension()
    pooling = MeanOverAll() if mode == "ignores_mask" else Pooling(dim, pooling_mode=mode)
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_bert(tmp_path_factory.mktemp("bert"))


# -- ground truth, plain torch -------------------------------------------------------------
LENGTHS = (10, 7, 5, 3)


def padded(pad: int, width: int = 10, seed: int = 0):
    """A right-padded batch of width 10; a wider one is the same with pad columns appended."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (len(LENGTHS), 10), generator=g)
    ids = torch.cat([ids, torch.full((len(LENGTHS), width - 10), pad)], 1)
    mask = torch.arange(width)[None, :] < torch.tensor(LENGTHS)[:, None]
    return ids.masked_fill(~mask, pad), mask


def weighted(outputs: list, mask, seed: int = 1, real: bool = True):
    """Sum of outputs times fixed weights; ``real``: (batch, seq, ...) outputs at real
    positions only (else every position, as the audit's default loss="all")."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for out in outputs:
        if real and out.dim() >= 2 and out.shape[:2] == mask.shape:
            out = out[mask]
        total = total + (out * torch.randn(out.shape, generator=g)).sum()
    return total


def st_outputs(model, ids, mask):
    features = {"input_ids": ids, "attention_mask": mask.long(), "token_type_ids": 0 * ids}
    out = model(features)
    return [out["token_embeddings"], out["sentence_embedding"]]


def truth(model, run, table, pad: int, extra: int = 4, skip=()):
    """Return (pad-row max|g| in train mode, outputs/gradients moved by pad columns)."""
    model.train()
    model.zero_grad()
    ids, mask = padded(pad)
    weighted(run(model, ids, mask), mask, real=False).backward()
    grad = table.weight.grad
    pad_grad = 0.0 if grad is None else float(grad[pad].abs().max())
    model.eval()
    got = []
    for width in (10, 10 + extra):
        model.zero_grad()
        ids, mask = padded(pad, width)
        outs = run(model, ids, mask)
        weighted(outs, mask).backward()
        cut = [
            o[mask].detach() if o.dim() >= 2 and o.shape[:2] == mask.shape else o.detach()
            for o in outs
        ]
        grads = {}
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad.clone()
            if p is table.weight:
                g[pad] = 0  # the pad row is the grad check's, not invariance's
            if any(s in name for s in skip):
                continue
            grads[name] = g
        got.append((cut, grads))
    (out_a, g_a), (out_b, g_b) = got
    moved = max(
        float((a - b).abs().max() / (a.abs().max() + 1e-12))
        for a, b in zip(out_a, out_b, strict=True)
    )
    scale = max(float(g.abs().max()) for g in g_a.values())  # float-noise floor: 1e-6 of it
    for k in g_a:
        floor = max(float(g_a[k].abs().max()), 1e-6 * scale)
        moved = max(moved, float((g_a[k] - g_b[k]).abs().max()) / floor)
    model.zero_grad()
    return pad_grad, moved


# -- sentence-transformers ------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode", ["mean", "cls", "max", "lasttoken", "weightedmean", "ignores_mask"]
)
def test_sentence_transformer_pooling(bert_dir, mode):
    model = sentence_transformer(bert_dir, mode)
    word = model[0].model.embeddings.word_embeddings
    pad_grad, moved = truth(model, st_outputs, word, pad=0)
    report = audit(model)  # no forward=, no pad_idx=: the tokenizer's pad id
    table = next(t for t in report.tables if t.layer.endswith("word_embeddings"))
    assert table.pad_idx == model.tokenizer.pad_token_id == 0
    assert pad_grad == 0.0 and table.grad == 0.0  # padding_idx=0 holds
    leaks = moved > 1e-4
    assert leaks == (mode == "ignores_mask"), moved
    found = [f for f in report.findings if f.check == "invariance"]
    assert bool(found) == leaks
    assert report.passed == (not leaks)
    if leaks:
        why, fix = found[0].why, found[0].fix
        assert "module 1" in why and "MeanOverAll" in why and "attention_mask" in why
        assert "features['attention_mask']" in fix and "Pooling(" in fix
    skipped = {t.layer.rsplit(".", 1)[-1]: t.skipped for t in report.tables}
    assert skipped["position_embeddings"] and skipped["token_type_embeddings"]


def test_sentence_transformer_tokenizer_pad_disagrees_with_config(bert_dir):
    model = sentence_transformer(bert_dir, "mean")
    model.tokenizer.pad_token = "[UNK]"  # pads with 1; the embedding's padding_idx is 0
    word = model[0].model.embeddings.word_embeddings
    pad_grad, _ = truth(model, st_outputs, word, pad=1)
    assert pad_grad > 0  # row 1 trains: padding_idx=0 does not cover it
    report = audit(model, checks=("grad",))
    causes = {f.cause for f in report.findings}
    assert "pad_mismatch" in causes and not report.passed
    finding = next(f for f in report.findings if f.cause == "pad_mismatch")
    assert "model.tokenizer.pad_token_id=1" in finding.why and "=0" in finding.why


# -- PEFT -----------------------------------------------------------------------------------
def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config)


def lora(model, targets):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets)
    return peft.get_peft_model(model, config)


def lm_outputs(model, ids, mask):
    return [model(input_ids=ids, attention_mask=mask.long()).logits]


def effective(layer, pad: int):
    """W[pad] + scaling * B @ A[:, pad] over the active adapters, in plain torch."""
    row = layer.base_layer.weight[pad].detach().clone()
    for name in layer.active_adapters:
        a, b = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
        row += layer.scaling[name] * (b @ a[:, pad]).detach()
    return row


def lora_truth(model, layer, pad: int):
    """Effective pad row: its gradient direction, and its change after one SGD step."""
    model.train()
    model.zero_grad()
    ids, mask = padded(pad)
    weighted(lm_outputs(model, ids, mask), mask, real=False).backward()
    name = layer.active_adapters[0]
    a, b, s = layer.lora_embedding_A[name], layer.lora_embedding_B[name], layer.scaling[name]
    direction = s * (b.grad @ a[:, pad] + b @ a.grad[:, pad])
    before = effective(layer, pad)
    params = [a, b]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p -= p.grad
    change = float((effective(layer, pad) - before).abs().max())
    with torch.no_grad():
        for p, v in zip(params, saved, strict=True):
            p.copy_(v)
    model.zero_grad()
    return float(direction.detach().abs().max()), change


def test_peft_lora_on_attention():
    model = lora(llama(), ["q_proj", "v_proj"])
    embed = model.get_base_model().model.embed_tokens
    pad_grad, moved = truth(model, lm_outputs, embed, pad=0)
    assert not embed.weight.requires_grad and pad_grad == 0.0 and moved <= 1e-4
    report = audit(model)
    assert report.model == "PeftModel(LlamaForCausalLM)"
    assert report.passed, report.findings
    assert report.invariance is not None


@pytest.mark.parametrize("zero_pad_column", [True, False])
def test_peft_lora_on_the_embedding(zero_pad_column):
    model = lora(llama(), ["embed_tokens", "q_proj"])
    layer = model.get_base_model().model.embed_tokens
    if not zero_pad_column:  # A initialised as by init_lora_weights=False: column 0 non-zero
        with torch.no_grad():
            for a in layer.lora_embedding_A.values():
                a.normal_(generator=torch.Generator().manual_seed(3))
    grad, change = lora_truth(model, layer, pad=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = audit(model, checks=("grad", "update"))
    table = next(t for t in report.tables if t.layer.endswith("embed_tokens.base_layer"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    if zero_pad_column:
        assert grad == 0.0 and change == 0.0
        assert report.passed and table.grad == 0.0 and table.update == 0.0
    else:
        assert grad > 0 and change > 0
        assert not report.passed and table.grad > 0 and table.update > 0
        finding = next(f for f in report.findings if f.check == "grad")
        assert finding.cause == "weight_reuse" and "lora_embedding_A[:, 0]" in finding.why


def test_peft_lora_on_bert_word_embeddings():
    torch.manual_seed(0)
    config = tiny_bert_config(VOCAB, 8, max_position_embeddings=32)
    model = lora(transformers.BertModel(config), ["word_embeddings", "query"])
    layer = model.get_base_model().embeddings.word_embeddings

    def run(m, ids, mask):
        out = m(input_ids=ids, attention_mask=mask.long())
        return [out.last_hidden_state, out.pooler_output]

    model.train()
    ids, mask = padded(0)
    weighted(run(model, ids, mask), mask).backward()
    a = layer.lora_embedding_A["default"]
    assert float(a.grad[:, 0].abs().max()) == 0.0  # padding_idx reaches the LoRA lookup too
    model.zero_grad()
    report = audit(model)
    assert report.passed, report.findings
    kinds = {t.layer: t.kind for t in report.tables}
    assert kinds["base_model.model.embeddings.word_embeddings.base_layer"].endswith("(lora)")


# -- --padaudit-model -----------------------------------------------------------------------
FACTORIES = """
import os
import pathlib
import sys

sys.path[:0] = {tests!r}  # this folder, and tests/ for the shared helpers
from test_libraries_torch import save_bert, sentence_transformer

DIR = pathlib.Path(os.environ["ST_MODEL_DIR"])


def clean():
    return sentence_transformer(save_bert(DIR / "clean"), "mean")


def leaky():
    return sentence_transformer(save_bert(DIR / "leaky"), "ignores_mask")
"""


def test_padaudit_model_takes_a_sentence_transformer_factory(pytester, tmp_path, monkeypatch):
    from pathlib import Path

    here = Path(__file__).resolve().parent
    tests = [str(here), str(here.parent)]
    pytester.makepyfile(stfactories=FACTORIES.format(tests=tests))
    (tmp_path / "clean").mkdir()
    (tmp_path / "leaky").mkdir()
    monkeypatch.setenv("ST_MODEL_DIR", str(tmp_path))
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--padaudit-model=stfactories:clean",
        "--padaudit-model=stfactories:leaky",
    )
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "stfactories:leaky" in out and "attention_mask" in out and "MeanOverAll" in out


def test_cross_encoder_is_fed_its_features_with_its_tokenizers_pad_id(tmp_path):
    """A CrossEncoder (a sibling of SentenceTransformer) audited with no options at all."""
    path = save_bert(tmp_path, head="BertForSequenceClassification", num_labels=1)
    model = st.CrossEncoder(path, device="cpu")
    word = model[0].model.bert.embeddings.word_embeddings

    def scores(model, ids, mask):  # the library's own forward on its features dict
        features = {"input_ids": ids, "attention_mask": mask.long(), "token_type_ids": 0 * ids}
        return [model(features)["scores"]]

    pad_grad, moved = truth(model, scores, word, pad=0)
    report = audit(model)  # failed with AttributeError: 'Tensor' object has no attribute 'get'
    table = next(t for t in report.tables if t.layer.endswith("word_embeddings"))
    assert table.pad_idx == model.tokenizer.pad_token_id == 0
    assert (pad_grad, table.grad) == (0.0, 0.0)
    assert moved < 1e-4 and report.invariance.value < 1e-4
    assert report.passed, str(report)
