"""Byte-level BPE tokenizers (HF ``tokenizers``): train, save, reload, and check against a checkpoint.

A byte-level BPE never fails on any input: every string is covered by the 256 byte symbols, so no text is
ever mapped to an "unknown" token. Two special tokens are always present: ``<|endoftext|>`` (id 0, the
end-of-document token used when packing) and ``<|pad|>`` (id 1, only ever used under an attention mask or an
ignored target).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dltrain.errors import CheckpointError, ConfigurationError
from dltrain.plugins import require

__all__ = ["EOD_TOKEN", "PAD_TOKEN", "TextTokenizer", "load_tokenizer", "train_tokenizer"]

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

#: Key under which tasks store the tokenizer in a checkpoint (see ``TextTokenizer.state_dict``).
CHECKPOINT_KEY = "text_tokenizer"


def _tokenizers() -> Any:
    return require("tokenizers", plugin="text", extra="text")


class TextTokenizer:
    """A thin wrapper of a ``tokenizers.Tokenizer`` with what training needs.

    - ``encode`` treats special-token strings inside a document as plain text, so a document that happens to
      contain ``"<|endoftext|>"`` cannot forge a document boundary; boundaries are added only by the packer.
    - ``fingerprint`` identifies the vocabulary and merges (not the file layout), to tell whether a checkpoint
      was trained with this tokenizer.
    - ``token_bytes[i]`` is the number of UTF-8 bytes token ``i`` decodes to (0 for special tokens), used to
      compute bits per byte.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` with a byte-level pre-tokenizer (what ``train_tokenizer`` makes).

    Example:
        >>> tok = train_tokenizer(["hello world", "hello there"], vocab_size=300)
        >>> tok.decode(tok.encode("hello world"))
        'hello world'
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        # Special tokens in document text are tokenized as text; see the class docstring.
        self._tok.encode_special_tokens = True
        eod = tokenizer.token_to_id(EOD_TOKEN)
        if eod is None:
            raise ConfigurationError(
                f"the tokenizer has no {EOD_TOKEN!r} token; train it with dltrain.plugins.text.train_tokenizer "
                "or add the special token before using it for language modelling"
            )
        self.eod_id: int = int(eod)
        pad = tokenizer.token_to_id(PAD_TOKEN)
        self.pad_id: int = int(pad) if pad is not None else self.eod_id
        self._fingerprint: str | None = None
        self._token_bytes: np.ndarray | None = None

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> Any:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of the vocabulary, merges and special tokens."""
        if self._fingerprint is None:
            spec = json.loads(self._tok.to_str())
            model = spec.get("model", {})
            canonical = {
                "type": model.get("type"),
                "vocab": sorted(model.get("vocab", {}).items(), key=lambda kv: kv[1]),
                "merges": model.get("merges"),
                "added": sorted((t["id"], t["content"]) for t in spec.get("added_tokens", [])),
                "pre_tokenizer": spec.get("pre_tokenizer"),
            }
            blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode("utf-8")
            self._fingerprint = hashlib.sha256(blob).hexdigest()
        return self._fingerprint

    @property
    def token_bytes(self) -> np.ndarray:
        """``int64[vocab_size]``: UTF-8 bytes each token stands for (special tokens: 0)."""
        if self._token_bytes is None:
            decoder = self._tok.decoder
            special = {t.content for t in self._tok.get_added_tokens_decoder().values()}
            counts = np.zeros(self.vocab_size, dtype=np.int64)
            for token, idx in self._tok.get_vocab(with_added_tokens=True).items():
                if token in special:
                    continue
                if type(decoder).__name__ == "ByteLevel":
                    # Byte-level alphabet: one visible character per byte, so the length is the byte count
                    # (decoding a lone continuation byte would give U+FFFD and a wrong count).
                    counts[idx] = len(token)
                else:
                    counts[idx] = len(self._tok.decode([idx], skip_special_tokens=True).encode("utf-8"))
            self._token_bytes = counts
        return self._token_bytes

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts at once (multi-threaded inside ``tokenizers``)."""
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special tokens are kept (as ``<|endoftext|>``) unless ``skip_special_tokens``."""
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    # ------------------------------------------------------------------ persistence
    def to_str(self) -> str:
        """The tokenizer as Hugging Face ``tokenizers`` JSON."""
        return str(self._tok.to_str())

    @classmethod
    def from_str(cls, spec: str) -> TextTokenizer:
        """A tokenizer from `to_str`'s JSON."""
        return cls(_tokenizers().Tokenizer.from_str(spec))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer as ``tokenizer.json`` (atomically); returns the path written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(self.to_str(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        """Read a ``tokenizer.json`` written by ``save`` (or any HF ``tokenizers`` JSON with the EOD token)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ConfigurationError(f"no tokenizer file at {str(path)!r}")
        return cls.from_str(path.read_text(encoding="utf-8"))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores.

        The full JSON plus its fingerprint and vocabulary size (plain types only, so the checkpoint still
        loads with ``torch.load(weights_only=True)``).
        """
        return {"json": self.to_str(), "fingerprint": self.fingerprint, "vocab_size": self.vocab_size}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TextTokenizer:
        """A tokenizer from `state_dict`'s output (as stored in checkpoints)."""
        return cls.from_str(state["json"])

    def check_matches(self, state: dict[str, Any], *, where: str = "the checkpoint") -> None:
        """Raise ``CheckpointError`` unless ``state`` (from ``state_dict``) describes this same tokenizer."""
        if int(state.get("vocab_size", -1)) != self.vocab_size:
            raise CheckpointError(
                f"tokenizer mismatch: {where} was trained with a tokenizer of {state.get('vocab_size')} tokens, "
                f"the tokenizer given has {self.vocab_size}. Load the tokenizer saved with the checkpoint "
                "(TextTokenizer.from_checkpoint(path)) or pass tokenizer=None to take it from the checkpoint."
            )
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"tokenizer mismatch: {where} was trained with tokenizer {str(state.get('fingerprint'))[:12]}, "
                f"the tokenizer given is {self.fingerprint[:12]} (same vocabulary size, different merges or "
                "tokens): token ids would mean different text. Use the tokenizer saved with the checkpoint "
                "(TextTokenizer.from_checkpoint(path)) or pass tokenizer=None."
            )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        """The tokenizer a text task stored in the checkpoint at ``path``."""
        import torch

        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        state = _find_tokenizer_state(ckpt)
        if state is None:
            raise CheckpointError(f"the checkpoint {str(path)!r} holds no text tokenizer (key {CHECKPOINT_KEY!r})")
        return cls.from_state_dict(state)

    def __getstate__(self) -> dict[str, Any]:  # pickled into loader workers: ship the JSON, rebuild there
        return {"json": self.to_str()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(_tokenizers().Tokenizer.from_str(state["json"]))  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]!r})"


def _find_tokenizer_state(ckpt: Any) -> dict[str, Any] | None:
    if isinstance(ckpt, dict):
        if CHECKPOINT_KEY in ckpt and isinstance(ckpt[CHECKPOINT_KEY], dict):
            return ckpt[CHECKPOINT_KEY]
        for value in ckpt.values():  # the Trainer may nest the task's entries
            found = _find_tokenizer_state(value) if isinstance(value, dict) else None
            if found is not None:
                return found
    return None


def train_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    files: Sequence[str | os.PathLike[str]] | None = None,
    vocab_size: int = 4096,
    min_frequency: int = 2,
    extra_special_tokens: Sequence[str] = (),
) -> TextTokenizer:
    """Train a byte-level BPE tokenizer on local text.

    Args:
        texts: an iterable of documents (strings), e.g. a generator over a corpus.
        files: or/and paths of UTF-8 text files (invalid bytes are replaced, not fatal).
        vocab_size: final vocabulary size including the 256 byte symbols and the special tokens.
        min_frequency: a pair must occur this often to be merged.
        extra_special_tokens: more special tokens, after ``<|endoftext|>`` (id 0) and ``<|pad|>`` (id 1).

    Example:
        >>> tok = train_tokenizer(["the cat sat", "the dog sat"], vocab_size=280)
        >>> tok.eod_id, tok.pad_id
        (0, 1)
    """
    tk = _tokenizers()
    special = [EOD_TOKEN, PAD_TOKEN, *extra_special_tokens]
    if vocab_size < 256 + len(special):
        raise ConfigurationError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
                                 f"{256 + len(special)} (256 bytes + {len(special)} special tokens)")
    if texts is None and not files:
        raise ConfigurationError("train_tokenizer needs texts=... or files=...")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def stream() -> Iterable[str]:
        if texts is not None:
            yield from texts
        for f in files or ():
            yield Path(f).read_bytes().decode("utf-8", errors="replace")

    tok.train_from_iterator(stream(), trainer=trainer)
    return TextTokenizer(tok)


def load_tokenizer(path: str | os.PathLike[str]) -> TextTokenizer:
    """Load a ``tokenizer.json`` file, a directory holding one, or the tokenizer in a ``.ckpt``/``.pt`` file."""
    p = Path(path)
    if p.is_file() and p.suffix in (".ckpt", ".pt", ".pth"):
        return TextTokenizer.from_checkpoint(p)
    return TextTokenizer.load(p)
