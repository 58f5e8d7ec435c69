"""Where a keras-hub user finds the pad id of a model that has no preprocessor to say it."""

from __future__ import annotations

from typing import Any

#: model family -> (tokenizer constructor, its pad token and the id it has in that family)
_FAMILIES = {
    "Bert": ("BertTokenizer(vocabulary=...)", "[PAD], 0 in BERT vocabularies"),
    "DistilBert": ("DistilBertTokenizer(vocabulary=...)", "[PAD], 0 in BERT vocabularies"),
    "Roberta": (
        "RobertaTokenizer(vocabulary=..., merges=...)",
        "<pad>, 1 in RoBERTa's vocabulary",
    ),
    "GPT2": (
        "GPT2Tokenizer(vocabulary=..., merges=...)",
        "GPT-2 has no pad token: its tokenizer pads with 0, a real token ('!')",
    ),
    "Gemma": ("GemmaTokenizer(proto=...)", "<pad>, 0 in Gemma's vocabulary"),
}


def family(model: Any) -> str:
    """Return the keras-hub family of a backbone or task ("Bert", "GPT2", ...), else ""."""
    backbone = getattr(model, "backbone", model)
    name = type(backbone).__name__
    return name[: -len("Backbone")] if name.endswith("Backbone") else ""


def pad_hint(model: Any) -> str:
    """Return where the pad id of ``model``'s family is found, in keras-hub's own words."""
    fam = family(model)
    where = (
        "model.preprocessor.tokenizer.pad_token_id once a preprocessor is attached (a task "
        "built with preprocessor= takes it from there by itself)"
    )
    if fam in _FAMILIES:
        ctor, token = _FAMILIES[fam]
        return f"keras-hub: it is keras_hub.models.{ctor}.pad_token_id ({token}), or {where}"
    if fam:
        return f"keras-hub: it is keras_hub.models.{fam}Tokenizer(...).pad_token_id, or {where}"
    return f"keras-hub: it is the tokenizer's pad_token_id, or {where}"
