"""The text tasks under the Trainer: loss decreases, the tokenizer travels with checkpoints, classification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")

import dltrain
from dltrain.data import StreamingDataset
from dltrain.errors import CheckpointError
from dltrain.plugins import text

SENTENCES = [
    "the cat sat on the mat.", "a dog ran in the park.", "the bird sang in the tree.",
    "my cat likes warm milk.", "the dog and the cat are friends.", "birds fly over the park.",
]


def _corpus(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(SENTENCES, rng.integers(1, 6))) for _ in range(n)]


def _trainer(tmp_path: Path, **kw) -> dltrain.Trainer:
    return dltrain.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_checkpointing=False, default_root_dir=str(tmp_path / "run"), seed=0, **kw)


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm")
    docs: list[str | bytes] = [*_corpus(150, 0), "", b"broken \xff bytes in the park."]
    tok = text.train_tokenizer(_corpus(150, 0), vocab_size=300)
    stats = text.TextStats()
    train = text.write_lm_shards(docs, tok, str(root / "train-%06d.tar"), seq_len=16, stats=stats, max_count=100)
    val = text.write_lm_shards(_corpus(20, 1), tok, str(root / "val-%06d.tar"), seq_len=16)
    return {"tok": tok, "train": train, "val": val, "stats": stats, "root": root}


def _loader(urls: list[str], tok: text.TextTokenizer, training: bool) -> object:
    ds = StreamingDataset(urls, batch_size=8, decode=text.DECODERS, map=text.LMBlockTransform(tok.vocab_size),
                          collate_fn=text.lm_collate, shuffle=training, training=training)
    return ds.loader(num_workers=0)


def test_lm_shards_count_bad_input(lm_data: dict) -> None:
    stats = lm_data["stats"]
    assert stats.empty_docs == 1 and stats.invalid_utf8_docs == 1 and stats.docs == 151
    assert (Path(lm_data["train"][0]).parent / "tokenizer.json").is_file()
    assert text.load_tokenizer(Path(lm_data["train"][0]).parent).fingerprint == lm_data["tok"].fingerprint


def test_language_model_learns_and_reloads_with_its_tokenizer(lm_data: dict, tmp_path: Path) -> None:
    tok = lm_data["tok"]
    task = text.LanguageModelTask(tokenizer=tok, context_length=16, n_layers=1, n_heads=2, d_model=32,
                                  lr=3e-3, warmup_steps=5)
    val = _loader(lm_data["val"], tok, False)
    trainer = _trainer(tmp_path, max_steps=60)
    before = trainer.validate(task, val)[0]
    trainer.fit(task, _loader(lm_data["train"], tok, True), val)
    after = trainer.validate(task, val)[0]
    assert after["val/loss"] < before["val/loss"] - 1.0
    assert after["val/bpb"] < before["val/bpb"]
    assert after["val/ppl"] == pytest.approx(np.exp(after["val/loss"]), rel=1e-3)
    assert (tmp_path / "run" / "tokenizer.json").is_file()

    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = text.LanguageModelTask.load_from_checkpoint(ckpt)
    assert reloaded.tokenizer is not None and reloaded.tokenizer.fingerprint == tok.fingerprint
    prompt = torch.tensor([tok.eod_id, *tok.encode("the cat")])
    torch.testing.assert_close(reloaded.generate(prompt, 8, temperature=0), task.generate(prompt, 8, temperature=0))
    assert isinstance(reloaded.generate_text("the", max_new_tokens=5), str)

    other = text.train_tokenizer([s[::-1] for s in _corpus(150, 0)], vocab_size=tok.vocab_size)
    with pytest.raises(CheckpointError, match="tokenizer mismatch"):
        text.LanguageModelTask.load_from_checkpoint(ckpt, tokenizer=other)
    # Resuming fit with another tokenizer of the same size fails in on_load_checkpoint, before any step.
    wrong = text.LanguageModelTask(tokenizer=other, context_length=16, n_layers=1, n_heads=2, d_model=32)
    with pytest.raises(CheckpointError, match="tokenizer mismatch"):
        _trainer(tmp_path, max_steps=62).fit(wrong, _loader(lm_data["train"], tok, True), ckpt_path=str(ckpt))


def test_generate_shapes_and_top_k() -> None:
    task = text.LanguageModelTask(vocab_size=64, context_length=8, n_layers=1, n_heads=2, d_model=16)
    out = task.generate(torch.zeros(3, 2, dtype=torch.long), max_new_tokens=12, top_k=1)
    assert out.shape == (3, 14)  # the context slides past 8 tokens
    greedy = task.generate(torch.zeros(3, 2, dtype=torch.long), max_new_tokens=12, temperature=0)
    assert torch.equal(out, greedy)  # top_k=1 sampling is greedy decoding


def test_text_classification_trains_on_generated_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = [["red", "crimson", "scarlet"], ["blue", "azure", "navy"], ["green", "lime", "olive"]]
    filler = ["the", "a", "colour", "is", "very", "quite", "of", "sky"]

    def example(label: int) -> str:
        n = int(rng.integers(2, 30))
        toks = list(rng.choice(filler, n))
        toks.insert(int(rng.integers(0, n)), str(rng.choice(words[label])))
        return " ".join(toks)

    examples = [(example(i % 3), i % 3) for i in range(240)] + [("", 1), (b"\xff\xfe", 2)]
    tok = text.train_tokenizer([e[0] for e in examples[:240]], vocab_size=300)
    stats = text.TextStats()
    urls = text.write_classification_shards(examples, str(tmp_path / "cls-%06d.tar"), stats=stats)
    assert stats.empty_docs == 1 and stats.invalid_utf8_docs == 1

    def loader(training: bool) -> object:
        ds = StreamingDataset(urls, batch_size=24, decode=text.DECODERS,
                              map=text.ClassificationTransform(tok, max_length=16), collate_fn=text.PadCollate(),
                              shuffle=training, training=training)
        return ds.loader(num_workers=0)

    task = text.TextClassificationTask(num_classes=3, tokenizer=tok, d_model=32, n_layers=1, n_heads=2,
                                       max_length=16, lr=5e-3)
    trainer = _trainer(tmp_path, max_epochs=4)
    trainer.fit(task, loader(True))
    result = trainer.validate(task, loader(False))[0]
    assert result["val/acc"] > 0.6 and 0 < result["val/f1"] <= 1
    assert result["data/truncated_docs"] > 0  # documents of up to 31 words were cut to 16 tokens
