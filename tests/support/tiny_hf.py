"""Tiny Hugging Face configs, built offline: the one place the tests' BERT shape is written."""

from __future__ import annotations

from typing import Any


def tiny_bert_config(
    vocab_size: int,
    hidden_size: int = 16,
    *,
    num_hidden_layers: int = 1,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 64,
    **extra: Any,
) -> Any:
    """Return a ``transformers.BertConfig`` with 2 heads; ``extra`` as BertConfig takes it.

    The feed-forward width defaults to twice ``hidden_size``.
    """
    import transformers

    return transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        **extra,
    )
