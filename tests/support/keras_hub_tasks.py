"""keras-hub backbones and tasks built offline: tiny configs, tokenizers from written vocabularies.

``BARE`` holds models without a preprocessor (and what a refusal must name for each family),
``TASKS`` tasks whose preprocessor gives the pad id: (builder, pad id, has segments).
"""

from __future__ import annotations

import keras_hub

from support import zoo_keras_hub as zoo

BERT = dict(zoo.SMALL, num_heads=2, max_sequence_length=64)
GEMMA = dict(zoo.SMALL, num_query_heads=2, num_key_value_heads=1, head_dim=16)
WORDS = [f"w{i}" for i in range(20)]

#: model -> (builder without a preprocessor, what the refusal must name)
BARE = {
    "BertBackbone": (
        zoo._backbone("BertBackbone", True, **BERT),
        "keras_hub.models.BertTokenizer(vocabulary=...).pad_token_id ([PAD], 0 in BERT",
    ),
    "RobertaBackbone": (
        zoo._backbone("RobertaBackbone", **BERT),
        "keras_hub.models.RobertaTokenizer(vocabulary=..., merges=...).pad_token_id "
        "(<pad>, 1 in RoBERTa's",
    ),
    "DistilBertBackbone": (
        zoo._backbone("DistilBertBackbone", **BERT),
        "keras_hub.models.DistilBertTokenizer(vocabulary=...).pad_token_id ([PAD], 0",
    ),
    "GPT2Backbone": (
        zoo._backbone("GPT2Backbone", **BERT),
        "keras_hub.models.GPT2Tokenizer(vocabulary=..., merges=...).pad_token_id (GPT-2 has "
        "no pad token: its tokenizer pads with 0",
    ),
    "GemmaBackbone": (
        zoo._backbone("GemmaBackbone", **GEMMA),
        "keras_hub.models.GemmaTokenizer(proto=...).pad_token_id (<pad>, 0 in Gemma's",
    ),
    "BertTextClassifier": (
        zoo._task("BertTextClassifier", "BertBackbone", True, **BERT),
        "keras_hub.models.BertTokenizer(vocabulary=...).pad_token_id",
    ),
    "GPT2CausalLM": (
        zoo._task("GPT2CausalLM", "GPT2Backbone", **BERT),
        "keras_hub.models.GPT2Tokenizer(vocabulary=..., merges=...).pad_token_id",
    ),
}


def bert_tokenizer(cls: str = "BertTokenizer"):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return getattr(keras_hub.models, cls)(vocabulary=vocab)


def bpe(cls: str, specials: list[str]):
    vocab = {token: i for i, token in enumerate([*specials, "Ġ", "a", "b", "Ġa", "Ġb", *WORDS])}
    return getattr(keras_hub.models, cls)(vocabulary=vocab, merges=["Ġ a", "Ġ b"])


def roberta_tokenizer():
    return bpe("RobertaTokenizer", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])


def gpt2_tokenizer():
    return bpe("GPT2Tokenizer", ["!", "<|endoftext|>"])


def task(task_cls: str, backbone: str, pre_cls: str, tokenizer, segments: bool = False):
    def build(_):
        import keras

        keras.utils.set_random_seed(0)
        head = {"num_classes": 2} if "Classifier" in task_cls else {}
        model = getattr(keras_hub.models, task_cls)(
            backbone=getattr(keras_hub.models, backbone)(**BERT),
            preprocessor=getattr(keras_hub.models, pre_cls)(tokenizer(), sequence_length=16),
            **head,
        )
        return zoo._built(model, segments)

    return build


TASKS = {
    "BertTextClassifier": (
        task(
            "BertTextClassifier",
            "BertBackbone",
            "BertTextClassifierPreprocessor",
            bert_tokenizer,
            True,
        ),
        0,
        True,
    ),
    "DistilBertTextClassifier": (
        task(
            "DistilBertTextClassifier",
            "DistilBertBackbone",
            "DistilBertTextClassifierPreprocessor",
            lambda: bert_tokenizer("DistilBertTokenizer"),
        ),
        0,
        False,
    ),
    "RobertaTextClassifier": (
        task(
            "RobertaTextClassifier",
            "RobertaBackbone",
            "RobertaTextClassifierPreprocessor",
            roberta_tokenizer,
        ),
        1,
        False,
    ),
    "GPT2CausalLM": (
        task("GPT2CausalLM", "GPT2Backbone", "GPT2CausalLMPreprocessor", gpt2_tokenizer),
        0,
        False,
    ),
}
