"""Packing for LM (no token lost or duplicated, EOD at document ends), dynamic padding and its mask, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")

from dltrain.errors import ConfigurationError, DataError
from dltrain.plugins.text import (
    IGNORE_INDEX,
    ClassificationTransform,
    LengthBucketLoader,
    LMBlockTransform,
    PadCollate,
    TextClassificationTask,
    TextStats,
    collate,
    decode_text,
    iter_documents,
    lm_collate,
    pack_documents,
    train_tokenizer,
)

EOD = 0


def _docs(seed: int, n: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, 100, rng.integers(0, 60)).tolist() for _ in range(n)]


@pytest.mark.parametrize("seq_len", [1, 2, 7, 16, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_packing_keeps_every_token_once_with_eod_boundaries(seq_len: int, seed: int) -> None:
    docs = _docs(seed)
    token_bytes = np.arange(100) % 5  # arbitrary bytes per token, EOD (id 0) = 0 bytes
    stats = TextStats()
    blocks = list(pack_documents(docs, seq_len, EOD, token_bytes, stats))
    stream = [EOD] + [t for d in docs for t in (*d, EOD)]
    # All blocks but the last have exactly seq_len + 1 tokens; consecutive blocks share one token.
    assert all(len(b.ids) == seq_len + 1 for b in blocks[:-1])
    assert 2 <= len(blocks[-1].ids) <= seq_len + 1
    for a, b in itertools.pairwise(blocks):
        assert a.ids[-1] == b.ids[0]
    # The targets of all blocks are the stream after its first token: nothing lost, nothing duplicated.
    targets = [int(t) for b in blocks for t in b.ids[1:]]
    assert targets == stream[1:]
    # One EOD per document, each right after the document's last token.
    assert targets.count(EOD) == len(docs)
    assert sum(b.n_bytes for b in blocks) == int(token_bytes[np.array(stream[1:])].sum())
    assert stats.blocks == len(blocks) and stats.tokens == sum(map(len, docs))
    assert stats.split_docs == sum(len(d) + 1 > seq_len for d in docs)


def test_packing_example_and_bad_seq_len() -> None:
    assert [b.ids.tolist() for b in pack_documents([[5, 6, 7], [8]], 3, EOD)] == [[0, 5, 6, 7], [7, 0, 8, 0]]
    with pytest.raises(ConfigurationError):
        list(pack_documents([[1]], 0, EOD))


def test_lm_collate_pads_only_the_tail_with_ignored_targets() -> None:
    blocks = list(pack_documents(_docs(3), 16, EOD, np.ones(100, dtype=np.int64)))
    tf = LMBlockTransform(vocab_size=100)
    samples = [tf({"__key__": f"b{i}", "ids": b.ids.astype("<i4").tobytes(), "nbytes": str(b.n_bytes).encode()})
               for i, b in enumerate(blocks[-3:])]
    batch = collate(samples)
    assert batch["input_ids"].shape == (3, 16) and batch["targets"].shape == (3, 16)
    assert torch.equal(batch["input_ids"][0], torch.as_tensor(blocks[-3].ids[:-1]))
    assert torch.equal(batch["targets"][0], torch.as_tensor(blocks[-3].ids[1:]))
    n_tail = len(blocks[-1].ids) - 1
    assert (batch["targets"][2, n_tail:] == IGNORE_INDEX).all() and (batch["targets"][2, :n_tail] >= 0).all()
    assert batch["n_bytes"].tolist() == [b.n_bytes for b in blocks[-3:]]
    assert lm_collate(samples)["input_ids"].equal(batch["input_ids"])


def test_lm_transform_rejects_ids_outside_the_vocabulary() -> None:
    sample = {"__key__": "b0", "ids": np.array([0, 5, 300], dtype="<i4").tobytes(), "nbytes": b"3"}
    with pytest.raises(DataError, match="different tokenizer"):
        LMBlockTransform(vocab_size=256)(sample)
    with pytest.raises(DataError, match="whole number"):
        LMBlockTransform()({"__key__": "b1", "ids": b"\x00\x01\x02", "nbytes": b"0"})


def test_dynamic_padding_mask_and_counters() -> None:
    samples = [{"input_ids": torch.arange(2, 2 + n), "label": n % 3, "n_replaced": 1, "truncated": 0}
               for n in (3, 7, 1)]
    batch = PadCollate(pad_id=1)([*samples, None])
    assert batch["input_ids"].shape == (3, 7)
    assert batch["attention_mask"].sum(1).tolist() == [3, 7, 1]
    assert batch["attention_mask"].dtype == torch.bool
    assert (batch["input_ids"][~batch["attention_mask"]] == 1).all()
    assert batch["labels"].tolist() == [0, 1, 1]
    assert int(batch["n_skipped"]) == 1 and int(batch["n_replaced"]) == 3
    assert PadCollate(pad_to_multiple_of=8)(samples)["input_ids"].shape == (3, 8)


def test_padding_does_not_change_the_classifier_output() -> None:
    torch.manual_seed(0)
    task = TextClassificationTask(num_classes=4, vocab_size=50, d_model=32, n_layers=2, n_heads=4, dropout=0.0)
    task.eval()
    seqs = [torch.randint(2, 50, (n,)) for n in (5, 11, 2)]
    batch = PadCollate()([{"input_ids": s, "label": 0} for s in seqs])
    with torch.no_grad():
        padded = task(batch["input_ids"], batch["attention_mask"])
        alone = torch.cat([task(s[None]) for s in seqs])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_invalid_utf8_is_replaced_and_counted() -> None:
    doc = decode_text(b"caf\xe9 \xff\xfe ok")
    assert "\ufffd" in doc.text and doc.n_replaced == 3
    assert decode_text("already \ufffd".encode()).n_replaced == 0  # a real U+FFFD is not a replacement
    stats = TextStats()
    out = list(iter_documents([b"good", b"bad \xff", b"", "   \n", "fine"], stats))
    assert [d.text for d in out] == ["good", "bad \ufffd", "fine"]
    assert (stats.docs, stats.empty_docs, stats.invalid_utf8_docs, stats.replaced_chars) == (3, 2, 1, 1)


def test_classification_transform_truncates_long_and_drops_empty_documents() -> None:
    tok = train_tokenizer(["alpha beta gamma delta"] * 20, vocab_size=280)
    tf = ClassificationTransform(tok, max_length=4)
    out = tf({"__key__": "d0", "txt": b"alpha beta gamma delta alpha beta \xff", "cls": b"2"})
    assert out is not None and len(out["input_ids"]) == 4 and out["truncated"] == 1
    assert out["label"] == 2 and out["n_replaced"] == 1
    assert tf({"__key__": "d1", "txt": b"  ", "cls": b"0"}) is None
    with pytest.raises(DataError, match="needs the fields"):
        tf({"__key__": "d2", "txt": b"x"})


class _ListLoader:
    """A minimal resumable loader of pools (lists of samples)."""

    def __init__(self, pools: list[list]) -> None:
        self.pools = pools
        self.pos = 0

    def __len__(self) -> int:
        return len(self.pools)

    def __iter__(self):
        while self.pos < len(self.pools):
            self.pos += 1
            yield self.pools[self.pos - 1]
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def test_length_bucketing_groups_similar_lengths_and_resumes_exactly() -> None:
    rng = np.random.default_rng(0)
    pools = [[{"input_ids": torch.zeros(int(n), dtype=torch.long), "label": 0} for n in rng.integers(1, 100, 32)]
             for _ in range(3)]
    loader = LengthBucketLoader(_ListLoader(pools), buckets=4, seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 12
    padded = sum(b["input_ids"].numel() for b in batches)
    unbucketed = sum(PadCollate()(p[i : i + 8])["input_ids"].numel() for p in pools for i in range(0, 32, 8))
    assert padded < unbucketed
    # Stop after 5 batches, save, restore into a fresh loader: the rest is identical.
    loader2 = LengthBucketLoader(_ListLoader(pools), buckets=4, seed=1)
    it = iter(loader2)
    for _ in range(5):
        next(it)
    state = loader2.state_dict()
    loader3 = LengthBucketLoader(_ListLoader(pools), buckets=4, seed=1)
    loader3.load_state_dict(state)
    rest = list(loader3)
    assert len(rest) == 7
    for a, b in zip(rest, batches[5:]):
        assert torch.equal(a["attention_mask"], b["attention_mask"])


def test_shard_writers_are_typed_functions_not_a_string_dispatch(tmp_path) -> None:
    import dltrain.plugins
    from dltrain.plugins import text

    urls = text.write_classification_shards([("good film", 1), ("bad", 0)], str(tmp_path / "cls-%06d.tar"))
    assert len(urls) == 1
    # write_shards(kind=...) chose a writer from a string; now it names the two writers instead of picking one.
    for write in (text.write_shards, dltrain.plugins.get("text").write_shards):
        assert write is not None
        for args in (("lm", ["a b"], None, str(tmp_path / "lm-%06d.tar")),
                     ("classification", [("x", 0)], str(tmp_path / "c-%06d.tar"))):
            with pytest.raises(ConfigurationError, match=r"write_lm_shards.*write_classification_shards"):
                write(*args)
    assert not list(tmp_path.glob("c-*.tar")) and not list(tmp_path.glob("lm-*.tar"))
