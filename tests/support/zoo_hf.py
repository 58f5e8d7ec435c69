"""PyTorch side of the real-library zoo: tiny Hugging Face, sentence-transformers, PEFT models.

Every model is built offline from a tiny config (hidden 32, 1-2 layers, vocab 100, dropout 0)
and its ground truth computed with plain torch autograd (zoo_torch_truth.py), no padaudit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from support.zoo_common import Entry

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
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

        folder = _write_bert(path)
        torch.manual_seed(0)
        word = Transformer(str(folder), max_seq_length=64)
        dim = word.get_embedding_dimension()
        pool = UnmaskedMean() if pooling == "unmasked" else Pooling(dim, pooling)
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
