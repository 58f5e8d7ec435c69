"""PyTorch side of the real-library zoo: tiny Hugging Face, sentence-transformers, PEFT models.

Every model is built offline from a tiny config (hidden 32, 1-2 layers, vocab 100, dropout 0)
and its ground truth computed with plain torch autograd (:func:`truth`), no padaudit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn

from zoo_common import (
    EXTRA,
    RTOL,
    Entry,
    audit_batch,
    cut_real,
    real_weights,
    relative,
    weights,
)

VOCAB, HIDDEN = 100, 32
#: pad id of the decoder-only models that pad with their end token (tokenizer.eos_token)
EOS = 99
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BERTISH = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    **NO_DROPOUT,
)
DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _seeded(cls: Any, config: Any) -> nn.Module:
    torch.manual_seed(0)
    return cls(config)


def _hf(cls: str, config: str, **kwargs: Any) -> Any:
    def build(_: Path) -> nn.Module:
        return _seeded(getattr(transformers, cls), getattr(transformers, config)(**kwargs))

    return build


def shift_right(ids: torch.Tensor, mask: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Decoder inputs of a right-padded batch: ``start`` then the sequence, pads kept."""
    shifted = torch.cat([torch.full_like(ids[:, :1], start), ids[:, :-1]], dim=1)
    return torch.where(mask, shifted, torch.full_like(ids, pad))


def hf_call(start: int | None = None) -> Any:
    """Return the forward a user runs on a transformers model (plus decoder inputs)."""

    def call(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Any:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask.long()}
        if start is not None:
            kwargs["decoder_input_ids"] = shift_right(ids, mask, start, model.config.pad_token_id)
            kwargs["decoder_attention_mask"] = mask.long()
        return model(**kwargs, use_cache=False) if start is not None else model(**kwargs)

    return call


def hf_token(model: nn.Module) -> list[nn.Parameter]:
    return [model.get_input_embeddings().weight]


def _entry(id: str, build: Any, pad: int, source: str, **extra: Any) -> Entry:
    extra.setdefault("call", hf_call())
    extra.setdefault("token", hf_token)
    return Entry(id, "transformers", build, pad=pad, pad_source=source, **extra)


# -- models a user wraps: their own module around a transformers model ---------------------
class UserEncoder(nn.Module):
    """A user's module: a T5 encoder, mean-pooled over real tokens, called with ids only."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.T5Config(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=16,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            dropout_rate=0.0,
        )
        torch.manual_seed(0)
        self.encoder = transformers.T5EncoderModel(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).long()
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class UserGPT2(nn.Module):
    """A user's module: GPT-2 features padded with the end token, called with ids only."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=1,
            n_head=2,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            eos_token_id=EOS,
            bos_token_id=EOS,
        )
        torch.manual_seed(0)
        self.gpt2 = transformers.GPT2Model(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.gpt2(input_ids=ids, attention_mask=(ids != EOS).long()).last_hidden_state


def _user_call(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Any:
    return model(ids)


# -- sentence-transformers ----------------------------------------------------------------
def _write_bert(path: Path) -> Path:
    """Save a tiny BERT and a word-piece vocabulary of VOCAB entries to ``path``."""
    folder = path / "tiny-bert"
    if (folder / "config.json").exists():
        return folder
    model = _seeded(transformers.BertModel, transformers.BertConfig(**BERTISH, pad_token_id=0))
    model.save_pretrained(folder)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(VOCAB - len(special))]
    (folder / "vocab.txt").write_text("\n".join(special + words) + "\n")
    return folder


class UnmaskedMean(nn.Module):
    """A pooling that ignores the attention mask: pad positions count in the mean."""

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features["sentence_embedding"] = features["token_embeddings"].mean(dim=1)
        return features


def sentence_transformer(pooling: str) -> Any:
    def build(path: Path) -> nn.Module:
        from sentence_transformers import SentenceTransformer, models

        folder = _write_bert(path)
        torch.manual_seed(0)
        word = models.Transformer(str(folder), max_seq_length=64)
        dim = word.get_word_embedding_dimension()
        pool = UnmaskedMean() if pooling == "unmasked" else models.Pooling(dim, pooling)
        return SentenceTransformer(modules=[word, pool], device="cpu")

    return build


def _st_call(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Any:
    return model({"input_ids": ids, "attention_mask": mask.long()})


def _st_token(model: nn.Module) -> list[nn.Parameter]:
    return [model[0].auto_model.get_input_embeddings().weight]


def _st_forward(model: nn.Module, batch: Any) -> Any:
    return model({"input_ids": batch.ids, "attention_mask": batch.mask.long()})


# -- PEFT ----------------------------------------------------------------------------------
def peft_lora(base: str) -> Any:
    def build(_: Path) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        if base == "bert":
            model = _seeded(transformers.BertModel, transformers.BertConfig(**BERTISH))
            targets = ["query", "value"]
        else:
            config = transformers.LlamaConfig(**DECODER, pad_token_id=0, tie_word_embeddings=True)
            model = _seeded(transformers.LlamaForCausalLM, config)
            targets = ["q_proj", "v_proj"]
        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
        peft_model = get_peft_model(model, lora)
        for name, param in peft_model.named_parameters():  # B starts at 0: make it live
            if "lora_B" in name:
                nn.init.normal_(param, std=0.1)
        return peft_model

    return build


def _peft_token(model: nn.Module) -> list[nn.Parameter]:
    return [model.get_base_model().get_input_embeddings().weight]


def _peft_forward(model: nn.Module, batch: Any) -> Any:
    return model(input_ids=batch.ids, attention_mask=batch.mask.long())


def entries() -> list[Entry]:
    """Return the PyTorch zoo: transformers, sentence-transformers and PEFT models."""
    gpt2 = dict(n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=64, resid_pdrop=0.0)
    gpt2.update(embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS)
    t5 = dict(d_model=HIDDEN, d_kv=16, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0)
    bart = dict(d_model=HIDDEN, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2)
    bart.update(decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)
    bart.update(max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    return [
        _entry("bert", _hf("BertModel", "BertConfig", **BERTISH), 0, "config.pad_token_id"),
        _entry(
            "bert-attentions",
            _hf(
                "BertModel",
                "BertConfig",
                **BERTISH,
                output_attentions=True,
                attn_implementation="eager",
            ),
            0,
            "config.pad_token_id",
        ),
        _entry(
            "bert-mlm-tied",
            _hf("BertForMaskedLM", "BertConfig", **BERTISH),
            0,
            "config.pad_token_id",
        ),
        _entry(
            "roberta",
            _hf("RobertaModel", "RobertaConfig", **BERTISH, pad_token_id=1),
            1,
            "config.pad_token_id",
        ),
        _entry(
            "distilbert",
            _hf(
                "DistilBertModel",
                "DistilBertConfig",
                vocab_size=VOCAB,
                dim=HIDDEN,
                n_layers=1,
                n_heads=2,
                hidden_dim=64,
                max_position_embeddings=64,
                dropout=0.0,
                attention_dropout=0.0,
            ),
            0,
            "config.pad_token_id",
        ),
        _entry(
            "albert",
            _hf("AlbertModel", "AlbertConfig", **BERTISH, embedding_size=16, pad_token_id=0),
            0,
            "config.pad_token_id",
        ),
        _entry(
            "electra",
            _hf("ElectraModel", "ElectraConfig", **BERTISH, embedding_size=16),
            0,
            "config.pad_token_id",
        ),
        _entry(
            "deberta-v2",
            _hf(
                "DebertaV2Model",
                "DebertaV2Config",
                **BERTISH,
                relative_attention=True,
                position_buckets=8,
                max_relative_positions=16,
                position_biased_input=False,
                pos_att_type=["p2c", "c2p"],
                pad_token_id=0,
            ),
            0,
            "config.pad_token_id",
        ),
        _entry(
            "gpt2-lm-tied",
            _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, **gpt2, pad_token_id=EOS),
            EOS,
            "config.pad_token_id (= eos)",
        ),
        _entry(
            "llama-tied",
            _hf(
                "LlamaForCausalLM",
                "LlamaConfig",
                **DECODER,
                pad_token_id=0,
                tie_word_embeddings=True,
            ),
            0,
            "config.pad_token_id",
        ),
        _entry(
            "llama-untied",
            _hf(
                "LlamaForCausalLM",
                "LlamaConfig",
                **DECODER,
                pad_token_id=None,
                eos_token_id=EOS,
                tie_word_embeddings=False,
            ),
            EOS,
            "pad_idx= (eos)",
            options={"pad_idx": EOS},
            zero_config={"pad_idx": EOS},
        ),
        _entry(
            "qwen2",
            _hf(
                "Qwen2ForCausalLM",
                "Qwen2Config",
                **DECODER,
                num_key_value_heads=1,
                pad_token_id=EOS,
                tie_word_embeddings=False,
            ),
            EOS,
            "config.pad_token_id (= eos)",
        ),
        _entry(
            "mistral",
            _hf(
                "MistralForCausalLM",
                "MistralConfig",
                **DECODER,
                num_key_value_heads=1,
                pad_token_id=0,
                head_dim=16,
            ),
            0,
            "config.pad_token_id",
        ),
        _entry(
            "opt-tied",
            _hf(
                "OPTForCausalLM",
                "OPTConfig",
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=1,
                ffn_dim=64,
                num_attention_heads=2,
                max_position_embeddings=64,
                word_embed_proj_dim=HIDDEN,
                dropout=0.0,
                attention_dropout=0.0,
                pad_token_id=1,
            ),
            1,
            "config.pad_token_id",
        ),
        _entry(
            "gpt-neox",
            _hf(
                "GPTNeoXForCausalLM",
                "GPTNeoXConfig",
                **DECODER,
                hidden_dropout=0.0,
                attention_dropout=0.0,
                pad_token_id=None,
                eos_token_id=EOS,
            ),
            EOS,
            "pad_idx= (eos)",
            options={"pad_idx": EOS},
            zero_config={"pad_idx": EOS},
        ),
        _entry(
            "t5-tied",
            _hf("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, **t5),
            0,
            "config.pad_token_id (= decoder start)",
            call=hf_call(start=0),
        ),
        _entry(
            "bart-tied",
            _hf("BartForConditionalGeneration", "BartConfig", vocab_size=VOCAB, **bart),
            1,
            "config.pad_token_id",
            call=hf_call(start=2),
        ),
        _entry(
            "user-t5-encoder",
            lambda _: UserEncoder(),
            0,
            "pad_idx=",
            call=_user_call,
            token=lambda m: [m.encoder.get_input_embeddings().weight],
            options={"pad_idx": 0},
            zero_config={"pad_idx": 0},
        ),
        _entry(
            "user-gpt2",
            lambda _: UserGPT2(),
            EOS,
            "pad_idx= (eos)",
            call=_user_call,
            token=lambda m: [m.gpt2.get_input_embeddings().weight],
            options={"pad_idx": EOS},
            zero_config={"pad_idx": EOS},
        ),
        *[
            Entry(
                f"st-{pooling}",
                "sentence-transformers",
                sentence_transformer(pooling),
                _st_call,
                _st_token,
                pad=0,
                pad_source="tokenizer (pad_idx=tokenizer.pad_token_id)",
                options={"pad_idx": 0, "forward": _st_forward},
            )
            for pooling in ("mean", "cls", "unmasked")
        ],
        *[
            Entry(
                f"peft-lora-{base}",
                "peft",
                peft_lora(base),
                hf_call(),
                _peft_token,
                pad=0,
                pad_source="base config.pad_token_id",
                options={"forward": _peft_forward} if base == "bert" else {},
            )
            for base in ("bert", "llama")
        ],
    ]


# -- ground truth --------------------------------------------------------------------------
def floats(output: Any) -> Iterator[torch.Tensor]:
    """Yield the floating-point tensors of a (nested) output, in order."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point():
            yield output
    elif isinstance(output, dict):  # ModelOutput and sentence-transformers features
        for value in output.values():
            yield from floats(value)
    elif isinstance(output, (tuple, list)):
        for value in output:
            yield from floats(value)


def tables(model: nn.Module) -> dict[str, nn.Module]:
    """Return every embedding table once per weight, by its first module path."""
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for path, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            found[path] = module
    return found


def _grad_truth(entry: Entry, model: nn.Module, token: dict[str, nn.Parameter]) -> dict:
    """Split each token table's pad-row gradient into its lookup part and its head part.

    Each embedding module that holds a token weight gets a copy of it for the measurement,
    so its lookups write their gradient to the copy and only other users of the weight (a
    tied LM head) write to the weight itself.
    """
    batch = audit_batch(VOCAB, entry.pad)
    ids, mask = torch.from_numpy(batch.ids), torch.from_numpy(batch.mask)
    copies: dict[str, nn.Parameter] = {}
    swapped: list[tuple[nn.Module, nn.Parameter]] = []
    for path, weight in token.items():
        copies[path] = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
        for module in model.modules():
            if isinstance(module, nn.Embedding) and module.weight is weight:
                swapped.append((module, weight))
                module.weight = copies[path]
    model.train()
    try:
        out = list(floats(entry.call(model, ids, mask)))
        loss = sum(
            (t.float() * torch.from_numpy(weights(i, tuple(t.shape), 1))).sum()
            for i, t in enumerate(out)
        )
        loss.backward()
    finally:
        for module, weight in swapped:
            module.weight = weight
    result = {}
    for path, weight in token.items():
        if not weight.requires_grad:
            result[path] = ("frozen", 0.0, 0.0)
            continue
        lookup = copies[path].grad
        head = weight.grad
        result[path] = (
            "trainable",
            0.0 if lookup is None else float(lookup[entry.pad].abs().max()),
            0.0 if head is None else float(head[entry.pad].abs().max()),
        )
    return result


def _invariance_truth(entry: Entry, model: nn.Module, token: dict[str, nn.Parameter]) -> dict:
    """Compare every gradient and the real outputs with and without EXTRA pad columns."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    token_ids = {id(w) for w in token.values()}
    runs = []
    for extra in (0, EXTRA):
        batch = audit_batch(VOCAB, entry.pad, extra)
        ids, mask = torch.from_numpy(batch.ids), torch.from_numpy(batch.mask)
        runs.append(list(floats(entry.call(model, ids, mask))))
    mask = audit_batch(VOCAB, entry.pad).mask
    short, long = runs
    if len(short) != len(long):
        raise AssertionError(f"{entry.id}: the two runs return {len(short)} vs {len(long)} leaves")
    loss_short = loss_long = 0.0
    for i, (a, b) in enumerate(zip(short, long, strict=True)):
        wa, wb = real_weights(i, tuple(a.shape), tuple(b.shape), mask)
        loss_short = loss_short + (a.float() * torch.from_numpy(wa)).sum()
        loss_long = loss_long + (b.float() * torch.from_numpy(wb)).sum()
    params = [p for _, p in named]
    ga = torch.autograd.grad(loss_short, params, allow_unused=True, retain_graph=True)
    gb = torch.autograd.grad(loss_long, params, allow_unused=True, retain_graph=True)
    a_list, b_list = [], []
    for p, x, y in zip(params, ga, gb, strict=True):
        if x is None and y is None:
            continue
        x = torch.zeros_like(p) if x is None else x
        y = torch.zeros_like(p) if y is None else y
        if id(p) in token_ids:  # extra pads only ever look up the pad row
            keep = torch.arange(p.shape[0]) != entry.pad
            x, y = x[keep], y[keep]
        a_list.append(x.detach().numpy().astype(np.float32))
        b_list.append(y.detach().numpy().astype(np.float32))
    grad_rel = relative(a_list, b_list, each=False)
    cuts = [
        cut_real(a.detach().float().numpy(), b.detach().float().numpy(), mask)
        for a, b in zip(short, long, strict=True)
    ]
    out_rel = relative([c[0] for c in cuts], [c[1] for c in cuts], each=True)
    return {"grad_rel": grad_rel, "out_rel": out_rel}


def truth(entry: Entry, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the ground truth per check and the numbers behind it (plain torch)."""
    found = tables(model)
    token_weights = {id(w) for w in entry.token(model)}
    token = {p: m.weight for p, m in found.items() if id(m.weight) in token_weights}
    if len(token) != len(token_weights):
        raise AssertionError(f"{entry.id}: a token weight is not held by any nn.Embedding")
    grads = _grad_truth(entry, model, token)
    model.zero_grad(set_to_none=True)
    inv = _invariance_truth(entry, model, token)
    leak = max(inv["grad_rel"], inv["out_rel"]) > RTOL
    verdict = {
        "tables": sorted(token),
        "grad": sorted(p for p, (_, lookup, _) in grads.items() if lookup > 0),
        "tied": sorted(p for p, (_, _, head) in grads.items() if head > 0),
        "invariance": "leak" if leak else "clean",
    }
    numbers = {
        "grads": {p: (state, lookup, head) for p, (state, lookup, head) in grads.items()},
        "not_token": sorted(set(found) - set(token)),
        **inv,
    }
    return verdict, numbers


def name(path: str) -> str:
    """Table names compare as module paths in PyTorch."""
    return path
