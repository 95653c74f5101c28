"""Text input-pipeline throughput: tokenize (byte-level BPE) + pack into LM blocks, per loader worker.

This is what ``write_lm_shards`` does per document, and what a classification loader worker does per sample
(tokenize). One process, one thread: the number is per worker.

    python -c "from scripts.benchlib.text import run; print(run(5.0))"
"""

from __future__ import annotations

import os
import time
from typing import Any


def _documents() -> list[str]:
    """CPython's reference-manual topics: real English text available offline (~460 KB)."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def run(seconds: float = 5.0, *, vocab_size: int = 4096, seq_len: int = 256) -> dict[str, Any]:
    """Measure tokenize+pack tokens/s (and MB/s of text) in this process for about ``seconds``.

    Args:
        seconds: measuring time (the tokenizer is trained before, not timed).
        vocab_size: BPE vocabulary of the tokenizer trained on the same text.
        seq_len: block length for packing.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # single-threaded, like one loader worker
    from dltrain.plugins.text import TextStats, pack_documents, train_tokenizer

    docs = _documents()
    tok = train_tokenizer(docs, vocab_size=vocab_size)
    token_bytes = tok.token_bytes
    stats = TextStats()
    n_bytes = 0
    passes = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        def tokenized():
            nonlocal n_bytes
            for d in docs:
                n_bytes += len(d.encode("utf-8"))
                yield tok.encode(d)  # one document at a time, as a worker does

        for _ in pack_documents(tokenized(), seq_len, tok.eod_id, token_bytes, stats):
            pass
        passes += 1
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    return {
        "case": "text tokenize+pack",
        "tokens_per_s_per_worker": stats.tokens / elapsed,
        "blocks_per_s_per_worker": stats.blocks / elapsed,
        "text_MB_per_s_per_worker": n_bytes / elapsed / 1e6,
        "bytes_per_token": n_bytes / max(stats.tokens, 1),
        "vocab_size": tok.vocab_size,
        "seq_len": seq_len,
        "passes": passes,
        "seconds": elapsed,
    }


if __name__ == "__main__":
    print(run())
