"""The ``text`` plugin: byte-level BPE tokenizers, packed LM shards, dynamic padding, GPT and classifier tasks.

Needs ``pip install 'dltrain[text]'`` (HF ``tokenizers``).

Example:
    >>> import dltrain.plugins
    >>> text = dltrain.plugins.get("text")
    >>> tok = text.train_tokenizer(["some text", "more text"], vocab_size=300)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from dltrain.plugins import Plugin, require

require("tokenizers", plugin="text", extra="text")

from dltrain.plugins.text.data import (  # noqa: E402
    DECODERS,
    IGNORE_INDEX,
    Block,
    ClassificationTransform,
    Document,
    LengthBucketLoader,
    LMBlockTransform,
    PadCollate,
    TextStats,
    collate,
    decode_ids,
    decode_int,
    decode_text,
    iter_documents,
    lm_collate,
    pack_documents,
    write_classification_shards,
    write_lm_shards,
    write_shards,
)
from dltrain.plugins.text.metrics import BitsPerByte, Perplexity  # noqa: E402
from dltrain.plugins.text.models import CausalTransformer, TransformerEncoder  # noqa: E402
from dltrain.plugins.text.tasks import LanguageModelTask, TextClassificationTask  # noqa: E402
from dltrain.plugins.text.tokenizer import (  # noqa: E402
    EOD_TOKEN,
    PAD_TOKEN,
    TextTokenizer,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "DECODERS",
    "EOD_TOKEN",
    "IGNORE_INDEX",
    "PAD_TOKEN",
    "BitsPerByte",
    "Block",
    "CausalTransformer",
    "ClassificationTransform",
    "Document",
    "LMBlockTransform",
    "LanguageModelTask",
    "LengthBucketLoader",
    "PadCollate",
    "Perplexity",
    "TextClassificationTask",
    "TextStats",
    "TextTokenizer",
    "TransformerEncoder",
    "collate",
    "decode_ids",
    "decode_int",
    "decode_text",
    "iter_documents",
    "lm_collate",
    "load_tokenizer",
    "pack_documents",
    "plugin",
    "train_tokenizer",
    "write_classification_shards",
    "write_lm_shards",
    "write_shards",
]


def _train_transform(tokenizer: TextTokenizer | None = None, max_length: int = 256, *,
                     vocab_size: int | None = None) -> Any:
    """Per-sample transform: LM blocks when no tokenizer is given, tokenize + truncate for classification."""
    if tokenizer is None:
        return LMBlockTransform(vocab_size)
    return ClassificationTransform(tokenizer, max_length)


def _accuracy(num_classes: int, **kwargs: Any) -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes=num_classes, average=kwargs.pop("average", "micro"), **kwargs)


def _f1(num_classes: int, **kwargs: Any) -> MulticlassF1Score:
    return MulticlassF1Score(num_classes=num_classes, average=kwargs.pop("average", "macro"), **kwargs)


plugin = Plugin(
    name="text",
    extra="text",
    decoders=DECODERS,
    transforms={
        # Text needs no random augmentation: train and eval transforms are the same.
        "train": _train_transform,
        "eval": _train_transform,
        "lm": LMBlockTransform,
        "classification": ClassificationTransform,
    },
    collate=collate,
    device_transforms={},
    tasks={"language_model": LanguageModelTask, "classification": TextClassificationTask},
    metrics={
        "bits_per_byte": BitsPerByte,
        "perplexity": Perplexity,
        "accuracy": _accuracy,
        "f1": _f1,
    },
    write_shards=write_shards,
)
