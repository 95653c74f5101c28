"""Tokenizer training, save/reload with identical encodings, and the tokenizer check against checkpoints."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

from dltrain.errors import CheckpointError, ConfigurationError
from dltrain.plugins.text import EOD_TOKEN, TextTokenizer, load_tokenizer, train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "def f(x):\n    return x ** 2  # squares\n",
    "Ünïcödé, emoji 🙂 and tabs\tare all bytes in the end.",
] * 10
PROBES = ["brand new words never seen", "🙂🙂 \x00 control", "<|endoftext|> is plain text here", ""]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return train_tokenizer(CORPUS, vocab_size=320)


def test_roundtrip_and_special_ids(tok: TextTokenizer) -> None:
    assert (tok.eod_id, tok.pad_id) == (0, 1)
    for text in CORPUS[:4] + PROBES:
        assert tok.decode(tok.encode(text)) == text  # byte-level: every string round-trips
    # A document cannot forge a boundary: the EOD string inside text is not the EOD token.
    assert tok.eod_id not in tok.encode(f"a {EOD_TOKEN} b")
    assert tok.token_bytes[tok.eod_id] == 0
    for text in PROBES:
        assert int(tok.token_bytes[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_save_and_reload_give_identical_encodings(tok: TextTokenizer, tmp_path: Path) -> None:
    path = tok.save(tmp_path / "tokenizer.json")
    for again in (TextTokenizer.load(path), load_tokenizer(tmp_path), pickle.loads(pickle.dumps(tok))):
        assert again.fingerprint == tok.fingerprint and again.vocab_size == tok.vocab_size
        for text in CORPUS[:4] + PROBES:
            assert again.encode(text) == tok.encode(text)
        assert again.encode_batch(PROBES) == tok.encode_batch(PROBES)
    with pytest.raises(ConfigurationError, match="no tokenizer file"):
        TextTokenizer.load(tmp_path / "missing.json")


def test_mismatch_is_a_clear_error(tok: TextTokenizer) -> None:
    other_size = train_tokenizer(CORPUS, vocab_size=300)
    with pytest.raises(CheckpointError, match=r"tokenizer mismatch.*320.*300"):
        other_size.check_matches(tok.state_dict())
    same_size = train_tokenizer([t[::-1] for t in CORPUS], vocab_size=320)
    assert same_size.vocab_size == tok.vocab_size and same_size.fingerprint != tok.fingerprint
    with pytest.raises(CheckpointError, match="different merges"):
        same_size.check_matches(tok.state_dict())
    tok.check_matches(tok.state_dict())  # itself: fine


def test_training_validates_arguments() -> None:
    with pytest.raises(ConfigurationError, match="too small"):
        train_tokenizer(CORPUS, vocab_size=100)
    with pytest.raises(ConfigurationError, match="texts"):
        train_tokenizer(vocab_size=300)


def test_train_from_files_with_invalid_bytes(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"hello world \xff\xfe hello again\n" * 20)
    tok = train_tokenizer(files=[f], vocab_size=270)
    assert tok.decode(tok.encode("hello world")) == "hello world"
