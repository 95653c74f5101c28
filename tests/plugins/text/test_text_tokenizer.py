"""Tokenizer training, save/reload with identical encodings, and the tokenizer check against checkpoints."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

pytest.importorskip("tokenizers")

from tests.helpers.seeds import seed_for

from dltrain.errors import CheckpointError, ConfigurationError
from dltrain.plugins.text import EOD_TOKEN, TextTokenizer, decode_text, load_tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[3]
# The property tests start from a seed derived from DLTRAIN_TEST_SEED (hypothesis then shrinks a failure to a
# minimal example and prints it; the report prints the command that replays the run).
SEED = seed_for(__name__)

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


# ---------------------------------------------------------------------------------------------- properties
# A byte-level BPE has the 256 byte symbols in its vocabulary, so any text is a sequence of tokens that decodes
# back to the same UTF-8 bytes, whatever the merges; bits per byte relies on token_bytes counting those bytes.
REAL_TEXT = [
    line
    for path in (REPO / "README.md", REPO / "docs" / "DESIGN.md", REPO / "examples" / "nlp" / "README.md")
    for line in path.read_text(encoding="utf-8").splitlines()
] + [
    "Ελληνικά, русский, العربية, עברית, हिन्दी, 中文, 日本語のテキスト, 한국어",
    "combining: e\u0301 vs \u00e9, zero width\u200bjoiner \U0001f468\u200d\U0001f469\u200d\U0001f467, BOM \ufeff",
    "\r\n\t\x0b\x0c\x1c\u2028\u2029 whitespace of every kind",
]


def _assert_round_trip(tok: TextTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids).encode("utf-8") == text.encode("utf-8")
    assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert tok.eod_id not in ids and tok.pad_id not in ids  # text never turns into a special token


@seed(SEED)
@settings(max_examples=400, deadline=None, database=None)  # no example files in the repo
@given(data=st.binary(max_size=300))
def test_every_byte_sequence_round_trips(tok: TextTokenizer, data: bytes) -> None:
    # What the text pipeline feeds the tokenizer for any shard bytes: UTF-8, invalid bytes replaced by U+FFFD.
    doc = decode_text(data)
    _assert_round_trip(tok, doc.text)
    assert int(tok.token_bytes[tok.encode(doc.text)].sum()) == doc.n_bytes
    try:
        valid = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert tok.decode(tok.encode(valid)).encode("utf-8") == data  # valid UTF-8: the very same bytes


@seed(SEED)
@settings(max_examples=400, deadline=None, database=None)  # no example files in the repo
@given(text=st.text(max_size=200))
def test_every_string_round_trips(tok: TextTokenizer, text: str) -> None:
    _assert_round_trip(tok, text)


@seed(SEED)
@settings(max_examples=200, deadline=None, database=None)  # no example files in the repo
@given(lines=st.lists(st.sampled_from(REAL_TEXT), min_size=1, max_size=8), cut=st.integers(0, 2000))
def test_real_text_round_trips(tok: TextTokenizer, lines: list[str], cut: int) -> None:
    text = "\n".join(lines)
    _assert_round_trip(tok, text)
    _assert_round_trip(tok, text[cut:])  # and from any character on


def test_real_text_files_round_trip_whole(tok: TextTokenizer) -> None:
    _assert_round_trip(tok, "\n".join(REAL_TEXT))
