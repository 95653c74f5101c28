"""Text data: safe decoding, packing for language modelling, dynamic padding for classification, shard writers.

Design of LM packing. Packing tokens across document boundaries turns a stream of documents into a stream of
fixed-length blocks; it does not map 1:1 onto documents. We therefore pack **when the shards are written**
(``write_lm_shards``): each shard sample is one block, so ``StreamingDataset``'s guarantees (every sample exactly
once per epoch, sharded across ranks and workers, exact resume) apply to blocks unchanged, and a batch needs no
padding. The stream is ``EOD doc0 EOD doc1 EOD ...``; block ``i`` holds stream tokens
``[i*L, i*L + L]`` (``L + 1`` tokens, the last one shared with the next block) so that every token after the
first EOD is a training target exactly once: nothing lost, nothing duplicated, and the model learns to end
documents and to start new ones after EOD. A document longer than a block simply continues in the next block.
Only the very last block of a corpus can be shorter; ``lm_collate`` pads it with ignored targets.

Each block carries the number of UTF-8 bytes its target tokens stand for, so bits per byte is exact:
``bpb = sum(nats of targets) / (ln 2 * sum(bytes))`` (EOD targets cost nats but cover 0 bytes).

Bad input (counted in ``TextStats``, never fatal):

- bytes that are not UTF-8 are replaced by U+FFFD (``invalid_utf8_docs``, ``replaced_chars``);
- empty (or whitespace-only) documents are skipped (``empty_docs``);
- documents longer than the context are split across blocks for LM (``split_docs``) and truncated to
  ``max_length`` tokens for classification (``truncated_docs``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
import torch
from torch import Tensor

from dltrain.data.domain import check_stage
from dltrain.errors import ConfigurationError, DataError
from dltrain.plugins.text.tokenizer import TextTokenizer

__all__ = [
    "Block",
    "ClassificationTransform",
    "Document",
    "LMBlockTransform",
    "LengthBucketLoader",
    "PadCollate",
    "TextStats",
    "TextTransform",
    "collate",
    "decode_ids",
    "decode_int",
    "decode_text",
    "lm_collate",
    "pack_documents",
    "sample_transform",
    "write_classification_shards",
    "write_lm_shards",
]

IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------- decoding
class Document(NamedTuple):
    """A decoded text field: the text, how many characters were replaced, and its size in UTF-8 bytes.

    Example:
        >>> decode_text("café".encode())
        Document(text='café', n_replaced=0, n_bytes=5)
    """

    text: str
    n_replaced: int
    n_bytes: int


def decode_text(data: bytes | str) -> Document:
    r"""Decode shard bytes as UTF-8; invalid bytes become U+FFFD and are counted instead of failing.

    Example:
        >>> decode_text(b"caf\xe9!")
        Document(text='caf\ufffd!', n_replaced=1, n_bytes=7)
    """
    if isinstance(data, str):
        return Document(data, 0, len(data.encode("utf-8")))
    try:
        text = data.decode("utf-8")
        return Document(text, 0, len(data))
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        # Count only the replacements the decoding made, not U+FFFD characters already in the text.
        n = text.count("\ufffd") - data.count("\ufffd".encode())
        return Document(text, max(n, 1), len(text.encode("utf-8")))


def decode_ids(data: bytes) -> np.ndarray:
    """Token ids stored by ``write_lm_shards`` (little-endian int32)."""
    if len(data) % 4:
        raise DataError(f"a token-id field of {len(data)} bytes is not a whole number of int32 ids; "
                        "was the shard written by dltrain.plugins.text.write_lm_shards?")
    return np.frombuffer(data, dtype="<i4").astype(np.int64)


def decode_int(data: bytes) -> int:
    """An integer stored as ASCII (the ``cls`` and ``nbytes`` fields)."""
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"expected an integer, got {data[:40]!r}") from None


#: Shard field extension -> decoder, for ``StreamingDataset(decode=...)``.
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "txt": decode_text,
    "text": decode_text,
    "ids": decode_ids,
    "nbytes": decode_int,
    "cls": decode_int,
}


# ---------------------------------------------------------------------------------------------- stats
@dataclass
class TextStats:
    """Counts of what happened to the input (filled by the shard writers and ``iter_documents``).

    Example:
        >>> stats = TextStats()
        >>> [d.text for d in iter_documents(["a", "", b"b"], stats)]
        ['a', 'b']
        >>> stats.summary()
        'docs=2, empty_docs=1, invalid_utf8_docs=0, replaced_chars=0, split_docs=0, truncated_docs=0, tokens=0, bytes=2, blocks=0'
    """

    docs: int = 0
    empty_docs: int = 0
    invalid_utf8_docs: int = 0
    replaced_chars: int = 0
    split_docs: int = 0
    truncated_docs: int = 0
    tokens: int = 0
    bytes: int = 0
    blocks: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """The counts as one ``name=value, ...`` line."""
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())


def iter_documents(
    documents: Iterable[str | bytes | Document], stats: TextStats | None = None
) -> Iterator[Document]:
    """Decode documents safely and drop empty ones, counting both in ``stats``."""
    stats = stats if stats is not None else TextStats()
    for raw in documents:
        doc = raw if isinstance(raw, Document) else decode_text(raw)
        if doc.n_replaced:
            stats.invalid_utf8_docs += 1
            stats.replaced_chars += doc.n_replaced
        if not doc.text.strip():
            stats.empty_docs += 1
            continue
        stats.docs += 1
        stats.bytes += doc.n_bytes
        yield doc


# ---------------------------------------------------------------------------------------------- packing
class Block(NamedTuple):
    """One packed LM sample.

    ``ids`` (``L + 1`` tokens, fewer only for the last block) and the UTF-8 bytes of the text its targets
    ``ids[1:]`` stand for.

    Example:
        >>> block = next(pack_documents([[5, 6, 7]], seq_len=3, eod_id=0))
        >>> block.ids.tolist()  # EOD, then the document: inputs ids[:-1], targets ids[1:]
        [0, 5, 6, 7]
    """

    ids: np.ndarray
    n_bytes: int


def pack_documents(
    token_docs: Iterable[Sequence[int]],
    seq_len: int,
    eod_id: int,
    token_bytes: np.ndarray | None = None,
    stats: TextStats | None = None,
) -> Iterator[Block]:
    """Pack tokenized documents into blocks of ``seq_len + 1`` tokens across document boundaries.

    The stream is ``EOD d0 EOD d1 EOD ...``; consecutive blocks overlap by one token so each stream token after
    the first is a target exactly once (see the module docstring). Never pads; the last block may be shorter.

    Args:
        token_docs: token ids of each document (without EOD).
        seq_len: model context length ``L``.
        eod_id: the end-of-document token id.
        token_bytes: UTF-8 bytes per token id (``TextTokenizer.token_bytes``) to fill ``Block.n_bytes``.
        stats: counts documents split across blocks and tokens seen.

    Example:
        >>> [b.ids.tolist() for b in pack_documents([[5, 6, 7], [8]], seq_len=3, eod_id=0)]
        [[0, 5, 6, 7], [7, 0, 8, 0]]
    """
    if seq_len < 1:
        raise ConfigurationError(f"seq_len must be >= 1, got {seq_len}")
    stats = stats if stats is not None else TextStats()
    width = seq_len + 1
    buf = np.empty(4 * width, dtype=np.int64)
    buf[0] = eod_id
    n = 1  # tokens in buf
    for doc in token_docs:
        ids = np.asarray(doc, dtype=np.int64)
        stats.tokens += len(ids)
        if len(ids) + 1 > seq_len:
            stats.split_docs += 1
        need = n + len(ids) + 1
        if need > len(buf):
            grown = np.empty(max(need, 2 * len(buf)), dtype=np.int64)
            grown[:n] = buf[:n]
            buf = grown
        buf[n : n + len(ids)] = ids
        buf[n + len(ids)] = eod_id
        n = need
        start = 0
        while n - start >= width:
            block = buf[start : start + width].copy()
            stats.blocks += 1
            yield Block(block, _covered_bytes(block, token_bytes))
            start += seq_len  # keep the last token: it is the input of the next block's first target
        if start:
            buf[: n - start] = buf[start:n]
            n -= start
    if n > 1:  # the tail: fewer than seq_len targets left
        block = buf[:n].copy()
        stats.blocks += 1
        yield Block(block, _covered_bytes(block, token_bytes))


def _covered_bytes(block: np.ndarray, token_bytes: np.ndarray | None) -> int:
    return int(token_bytes[block[1:]].sum()) if token_bytes is not None else 0


def write_lm_shards(
    documents: Iterable[str | bytes | Document],
    tokenizer: TextTokenizer,
    pattern: str,
    *,
    seq_len: int,
    key_prefix: str = "block",
    stats: TextStats | None = None,
    encode_batch_size: int = 256,
    **shard_kwargs: Any,
) -> list[str]:
    """Tokenize documents, pack them into blocks of ``seq_len + 1`` tokens and write them as shards.

    Each sample has ``__key__``, ``ids`` (int32 little-endian token ids) and ``nbytes`` (ASCII integer). The
    tokenizer is saved as ``tokenizer.json`` next to the shards so the data can always be read with the
    tokenizer that made it. Empty documents are skipped and invalid UTF-8 is replaced (both counted in
    ``stats``).

    Args:
        documents: texts (``str``, or ``bytes`` decoded as UTF-8 with replacement).
        tokenizer: the tokenizer (see ``train_tokenizer``).
        pattern: shard path pattern for ``dltrain.data.write_shards``, e.g. ``"out/train-%06d.tar"``.
        seq_len: context length of the model that will read them.
        key_prefix: sample keys are ``f"{key_prefix}{i:09d}"``.
        stats: filled with what happened to the input.
        encode_batch_size: documents tokenized together (multi-threaded).
        shard_kwargs: passed to ``write_shards`` (``max_count``, ``max_size``).

    Example:
        >>> docs = ["The for statement iterates.", "The while statement loops."] * 50
        >>> from dltrain.plugins.text import train_tokenizer
        >>> tok = train_tokenizer(docs, vocab_size=280)
        >>> paths = write_lm_shards(docs, tok, "lm/train-%06d.tar", seq_len=16)
        >>> paths
        ['lm/train-000000.tar']
    """
    from dltrain.data import write_shards

    stats = stats if stats is not None else TextStats()
    token_bytes = tokenizer.token_bytes

    def token_docs() -> Iterator[list[int]]:
        batch: list[str] = []
        for doc in iter_documents(documents, stats):
            batch.append(doc.text)
            if len(batch) >= encode_batch_size:
                yield from tokenizer.encode_batch(batch)
                batch = []
        if batch:
            yield from tokenizer.encode_batch(batch)

    def samples() -> Iterator[dict[str, Any]]:
        for i, block in enumerate(pack_documents(token_docs(), seq_len, tokenizer.eod_id, token_bytes, stats)):
            yield {
                "__key__": f"{key_prefix}{i:09d}",
                "ids": block.ids.astype("<i4").tobytes(),
                "nbytes": str(block.n_bytes).encode("ascii"),
            }

    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    paths = write_shards(samples(), pattern, **shard_kwargs)
    tokenizer.save(Path(pattern).parent / "tokenizer.json")
    return paths


def write_classification_shards(
    examples: Iterable[tuple[str | bytes, int]],
    pattern: str,
    *,
    key_prefix: str = "doc",
    stats: TextStats | None = None,
    **shard_kwargs: Any,
) -> list[str]:
    """Write ``(text, label)`` pairs as shards with ``txt`` (UTF-8) and ``cls`` (ASCII integer) fields.

    Tokenization happens when reading (``ClassificationTransform``), so the same shards serve any tokenizer.
    Empty texts are skipped and counted; undecodable bytes are replaced and counted.

    Example:
        >>> write_classification_shards([("good film", 1), ("bad", 0)], "data/cls-%06d.tar")
        ['data/cls-000000.tar']
    """
    from dltrain.data import write_shards

    stats = stats if stats is not None else TextStats()

    def samples() -> Iterator[dict[str, Any]]:
        i = 0
        for text, label in examples:
            docs = list(iter_documents([text], stats))
            if not docs:
                continue
            yield {"__key__": f"{key_prefix}{i:09d}", "txt": docs[0].text.encode("utf-8"),
                   "cls": str(int(label)).encode("ascii")}
            i += 1

    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    return write_shards(samples(), pattern, **shard_kwargs)


def write_shards(*args: Any, **kwargs: Any) -> NoReturn:
    """Not a shard builder: text has two, with their own signatures. Raises a `ConfigurationError` naming them.

    Use ``write_lm_shards(documents, tokenizer, pattern, seq_len=...)`` for language modelling and
    ``write_classification_shards(examples, pattern)`` for ``(text, label)`` pairs.
    """
    raise ConfigurationError(
        "the text plugin has two shard writers with their own signatures and no write_shards: "
        "dltrain.plugins.text.write_lm_shards(documents, tokenizer, pattern, seq_len=...) for language modelling, "
        "dltrain.plugins.text.write_classification_shards(examples, pattern) for (text, label) pairs")


# ---------------------------------------------------------------------------------------------- per-sample
class LMBlockTransform:
    """Sample dict of an LM shard -> ``{"ids": LongTensor[L+1], "n_bytes": int}``.

    Args:
        vocab_size: when given, ids outside ``[0, vocab_size)`` raise a ``DataError`` (the shards were written
            with another tokenizer).

    Example:
        >>> out = LMBlockTransform(vocab_size=100)({"ids": torch.tensor([0, 5, 6, 7]), "nbytes": 9})
        >>> out["ids"].tolist(), out["n_bytes"]
        ([0, 5, 6, 7], 9)
    """

    def __init__(self, vocab_size: int | None = None) -> None:
        self.vocab_size = vocab_size

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The block's ``{"ids", "n_bytes"}``, its ids checked against ``vocab_size``."""
        key = sample.get("__key__")
        if "ids" not in sample:
            raise DataError("an LM sample has no 'ids' field; write LM shards with write_lm_shards", key=key)
        ids = sample["ids"]
        ids = decode_ids(ids) if isinstance(ids, bytes) else np.asarray(ids)
        if len(ids) < 2:
            raise DataError(f"an LM block of {len(ids)} tokens has no target", key=key)
        if self.vocab_size is not None and (ids.max() >= self.vocab_size or ids.min() < 0):
            raise DataError(
                f"token id {int(ids.max())} is outside the model's vocabulary of {self.vocab_size}: the shards "
                "were written with a different tokenizer (see tokenizer.json next to the shards)", key=key)
        n_bytes = sample.get("nbytes", 0)
        n_bytes = decode_int(n_bytes) if isinstance(n_bytes, bytes) else int(n_bytes)
        return {"ids": torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)), "n_bytes": n_bytes}


class ClassificationTransform:
    """Sample dict with ``txt`` and ``cls`` -> ``{"input_ids", "label", "n_replaced", "truncated"}``.

    ``None`` for an empty document (``PadCollate`` drops and counts it).

    Args:
        tokenizer: the tokenizer.
        max_length: longer documents are truncated to their first ``max_length`` tokens.
        text_field: field holding the text.
        label_field: field holding the integer label (``None``: unlabelled data, the label is ``-1``).

    Example:
        >>> from dltrain.plugins.text import train_tokenizer
        >>> tok = train_tokenizer(["a short review", "a long and glowing review"] * 10, vocab_size=280)
        >>> out = ClassificationTransform(tok, max_length=3)({"txt": b"a long and glowing review", "cls": 1})
        >>> len(out["input_ids"]), out["label"], out["truncated"]
        (3, 1, 1)
    """

    def __init__(self, tokenizer: TextTokenizer, max_length: int = 256, *, text_field: str = "txt",
                 label_field: str | None = "cls") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_field = text_field
        self.label_field = label_field

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any] | None:
        """A document -> ``{"input_ids", "label", "n_replaced", "truncated"}``; ``None`` if empty."""
        key = sample.get("__key__")
        if self.text_field not in sample or (self.label_field is not None and self.label_field not in sample):
            raise DataError(f"a classification sample needs the fields {self.text_field!r} and "
                            f"{self.label_field!r}, it has {sorted(sample)}", key=key)
        raw = sample[self.text_field]
        doc = raw if isinstance(raw, Document) else decode_text(raw)
        if not doc.text.strip():
            return None
        ids = self.tokenizer.encode(doc.text)
        truncated = len(ids) > self.max_length
        label = -1 if self.label_field is None else sample[self.label_field]
        label = decode_int(label) if isinstance(label, bytes) else int(label)
        return {"input_ids": torch.tensor(ids[: self.max_length], dtype=torch.long), "label": label,
                "n_replaced": doc.n_replaced, "truncated": int(truncated)}


class TextTransform:
    """The plugin's per-sample transform for both kinds of text shards, told apart by their fields.

    As ``collate`` does: an LM block (``ids``) -> `LMBlockTransform`'s output; a document with a label
    (``txt`` and ``cls``) -> `ClassificationTransform`'s, which needs ``tokenizer``.

    Args:
        tokenizer: the tokenizer of classification documents.
        max_length: classification documents are truncated to this many tokens.
        vocab_size: LM ids are checked against it (default: the tokenizer's vocabulary size, if given).
        text_field: the field holding a document's text.
        label_field: the field holding a document's label.

    Example:
        >>> transform = TextTransform(vocab_size=100)  # LM blocks only: no tokenizer for documents
        >>> transform({"ids": torch.tensor([0, 5, 6]), "nbytes": 4})["ids"].tolist()
        [0, 5, 6]
    """

    def __init__(self, tokenizer: TextTokenizer | None = None, max_length: int = 256, *,
                 vocab_size: int | None = None, text_field: str = "txt", label_field: str | None = "cls") -> None:
        if vocab_size is None and tokenizer is not None:
            vocab_size = tokenizer.vocab_size
        self.lm = LMBlockTransform(vocab_size)
        self.classification = (ClassificationTransform(tokenizer, max_length, text_field=text_field,
                                                       label_field=label_field) if tokenizer is not None else None)

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any] | None:
        """An LM block or a document, by its fields (see the class docstring)."""
        if "ids" in sample:
            return self.lm(sample)
        if self.classification is None:
            raise ConfigurationError("a text sample without 'ids' is a document to classify: give the transform a "
                                     "tokenizer (plugin.transform(stage, tokenizer=...))")
        return self.classification(sample)


def sample_transform(stage: str, **options: Any) -> TextTransform:
    """The plugin's ``transform(stage, **options)``.

    A :class:`TextTransform` with ``options`` as its keyword arguments. Text has no random augmentation, so
    every stage gets the same transform.
    """
    check_stage(stage)
    return TextTransform(**options)


# ---------------------------------------------------------------------------------------------- collate
def lm_collate(samples: Sequence[Mapping[str, Any]], pad_id: int = 0) -> dict[str, Tensor]:
    """Stack LM blocks into ``input_ids``/``targets`` ``[B, L]`` and ``n_bytes`` ``[B]``.

    Full blocks need no padding. A short tail block is padded with ``pad_id`` inputs and ``-100`` targets,
    which the loss ignores.
    """
    if not samples:
        raise DataError("lm_collate got an empty batch")
    width = max(len(s["ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(samples), width - 1), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        t = torch.as_tensor(s["ids"], dtype=torch.long)
        ids[i, : len(t)] = t
        targets[i, : len(t) - 1] = t[1:]
    n_bytes = torch.tensor([int(s["n_bytes"]) for s in samples], dtype=torch.long)
    return {"input_ids": ids[:, :-1].contiguous(), "targets": targets, "n_bytes": n_bytes}


class PadCollate:
    """Dynamic padding: pad to the longest sequence of the batch and return an attention mask.

    Output: ``input_ids`` ``[B, T]``, ``attention_mask`` ``[B, T]`` (bool, True for real tokens), ``labels``
    ``[B]``, and counters ``n_skipped`` (empty documents dropped), ``n_replaced``, ``n_truncated`` (scalars).

    Args:
        pad_id: id written at padded positions (never attended to).
        pad_to_multiple_of: round ``T`` up (helps kernels on GPUs).

    Example:
        >>> batch = PadCollate(pad_id=0)([{"input_ids": torch.tensor([5, 6, 7]), "label": 1},
        ...                               {"input_ids": torch.tensor([8]), "label": 0}, None])
        >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist(), int(batch["n_skipped"])
        ([[5, 6, 7], [8, 0, 0]], [[True, True, True], [True, False, False]], 1)
    """

    def __init__(self, pad_id: int = 1, pad_to_multiple_of: int = 1) -> None:
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence[Mapping[str, Any] | None]) -> dict[str, Tensor]:
        """Pad a batch's ``input_ids`` to one width (a multiple of ``pad_to_multiple_of``); drops ``None``."""
        kept = [s for s in samples if s is not None]
        width = max((len(s["input_ids"]) for s in kept), default=0)
        width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(kept), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(kept), width), dtype=torch.bool)
        for i, s in enumerate(kept):
            n = len(s["input_ids"])
            ids[i, :n] = torch.as_tensor(s["input_ids"], dtype=torch.long)
            mask[i, :n] = True
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.tensor([int(s["label"]) for s in kept], dtype=torch.long),
            "n_skipped": torch.tensor(len(samples) - len(kept)),
            "n_replaced": torch.tensor(sum(int(s.get("n_replaced", 0)) for s in kept)),
            "n_truncated": torch.tensor(sum(int(s.get("truncated", 0)) for s in kept)),
        }


_default_pad = PadCollate()


def collate(samples: Sequence[Any]) -> dict[str, Tensor]:
    """The plugin's collate: LM blocks (``ids``) -> ``lm_collate``; classification samples -> ``PadCollate``."""
    first = next((s for s in samples if s is not None), None)
    if first is not None and "ids" in first:
        return lm_collate(samples)
    return _default_pad(samples)


# ---------------------------------------------------------------------------------------------- bucketing
class LengthBucketLoader:
    """Length bucketing for classification on top of a resumable loader.

    The inner loader yields *pools* of ``k * batch_size`` samples as plain lists (give it
    ``collate_fn=list`` and ``batch_size=k * batch_size``). Each pool is sorted by length and cut into ``k``
    batches of similar lengths (less padding), visited in a random order seeded by epoch and pool index, so it
    is reproducible. Resume is exact: the state is the inner loader's state before the current pool plus how
    many of its batches were consumed.

    Args:
        loader: the inner loader (e.g. ``StreamingDataset(..., batch_size=k * b, collate_fn=list).loader()``).
        buckets: ``k``, batches per pool.
        collate_fn: turns each bucket into a batch (default ``PadCollate()``).
        shuffle: visit a pool's batches in random order (training); sorted order otherwise.
        seed: base seed.

    Example:
        >>> docs = [{"input_ids": torch.ones(n, dtype=torch.long), "label": 0} for n in (1, 9, 2, 8, 3, 7, 4, 6)]
        >>> pools = torch.utils.data.DataLoader(docs, batch_size=4, collate_fn=list)  # 2 buckets of 2
        >>> loader = LengthBucketLoader(pools, buckets=2, shuffle=False)
        >>> [batch["input_ids"].shape[1] for batch in loader]  # padded to the longest of similar lengths
        [2, 9, 4, 7]
    """

    def __init__(self, loader: Any, buckets: int, collate_fn: Callable[[list], Any] | None = None, *,
                 shuffle: bool = True, seed: int = 0) -> None:
        if buckets < 1:
            raise ConfigurationError(f"buckets must be >= 1, got {buckets}")
        self.loader = loader
        self.buckets = buckets
        self.collate_fn = collate_fn or PadCollate()
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._pool_state: Any = None  # inner state before the current pool
        self._consumed = 0  # batches of the current pool already yielded
        self._pool_idx = 0
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader) * self.buckets

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (for the inner loader too); the bucketing order depends on it."""
        self.epoch = epoch
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def set_split(self, rank: int, world_size: int) -> None:
        """Hand the Trainer's data-parallel rank and size to an inner loader that splits itself.

        That is a ``StreamingDataLoader`` (``set_split``); another inner loader keeps the split it was built with.
        """
        if callable(getattr(self.loader, "set_split", None)):
            self.loader.set_split(rank, world_size)

    @property
    def split(self) -> tuple[int, int] | None:
        """The inner loader's (rank, world size) given by ``set_split``; ``None``: it resolves its own."""
        return getattr(self.loader, "split", None)

    def state_dict(self) -> dict[str, Any]:
        """The inner loader's state at the current pool and the batches taken from it."""
        return {"inner": self._pool_state, "consumed": self._consumed, "pool": self._pool_idx}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict`'s position on the next ``iter()``."""
        self._resume = dict(state)

    def _split(self, pool: list, pool_idx: int) -> list[list]:
        kept_idx = sorted(range(len(pool)), key=lambda i: -1 if pool[i] is None else len(pool[i]["input_ids"]))
        parts = [list(p) for p in np.array_split(np.array(kept_idx, dtype=np.int64), self.buckets) if len(p)]
        order = list(range(len(parts)))
        if self.shuffle:
            random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + pool_idx).shuffle(order)
        return [[pool[i] for i in parts[j]] for j in order]

    def __iter__(self) -> Iterator[Any]:
        skip = 0
        pool_idx = 0
        if self._resume is not None:
            if self._resume.get("inner") is not None and hasattr(self.loader, "load_state_dict"):
                self.loader.load_state_dict(self._resume["inner"])
            skip = int(self._resume.get("consumed", 0))
            pool_idx = int(self._resume.get("pool", 0))
            self._resume = None
        has_state = hasattr(self.loader, "state_dict")
        it = iter(self.loader)
        while True:
            self._pool_state = self.loader.state_dict() if has_state else None
            try:
                pool = next(it)
            except StopIteration:
                break
            self._pool_idx = pool_idx
            self._consumed = 0
            for j, bucket in enumerate(self._split(list(pool), pool_idx)):
                if j < skip:
                    continue
                self._consumed = j + 1
                yield self.collate_fn(bucket)
            skip = 0
            pool_idx += 1
        self._pool_state, self._consumed, self._pool_idx = None, 0, 0
