"""The ``text`` plugin: byte-level BPE tokenizers, packed LM shards, dynamic padding, GPT and classifier tasks.

Needs ``pip install 'dltrain[text]'`` (HF ``tokenizers``).

Example:
    >>> import dltrain.plugins
    >>> text = dltrain.plugins.get("text")
    >>> from dltrain.plugins.text import train_tokenizer
    >>> tok = train_tokenizer(["some text", "more text"], vocab_size=300)
    >>> tok.decode(tok.encode("more text"))
    'more text'
"""

from __future__ import annotations

from dltrain.plugins import Plugin, require

require("tokenizers", plugin="text", extra="text")

from dltrain.plugins.metrics import CLASSIFICATION_METRICS  # noqa: E402
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
    TextTransform,
    collate,
    decode_ids,
    decode_int,
    decode_text,
    iter_documents,
    lm_collate,
    pack_documents,
    sample_transform,
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
    "TextTransform",
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
    "sample_transform",
    "train_tokenizer",
    "write_classification_shards",
    "write_lm_shards",
    "write_shards",
]


plugin = Plugin(
    name="text",
    extra="text",
    decoders=DECODERS,
    transform=sample_transform,
    collate=collate,
    tasks={"language_model": LanguageModelTask, "classification": TextClassificationTask},
    metrics={**CLASSIFICATION_METRICS, "bits_per_byte": BitsPerByte, "perplexity": Perplexity},
    write_shards=write_shards,
)
