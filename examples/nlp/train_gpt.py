"""Train a small GPT on English text that ships with CPython and compare it with a byte-level baseline.

The corpus is CPython's reference-manual topics (``pydoc_data.topics``) and the standard library's docstrings,
split into train/val by document. A byte-level BPE tokenizer is trained on the train split, documents are
packed into fixed-length blocks (``write_lm_shards``) and streamed with ``StreamingDataset``. At the end the
script prints validation bits per byte of the model and of a unigram byte model fitted on train, and a sample.

    python examples/nlp/train_gpt.py                       # ~ a few minutes on 2 CPU cores
    python examples/nlp/train_gpt.py --max-steps 1600 --resume  # continue the last run up to step 1600
    torchrun --nproc_per_node=2 examples/nlp/train_gpt.py  # DDP, gloo on CPU
    python examples/nlp/train_gpt.py --text-files 'my_corpus/*.txt' --layers 6 --d-model 384 --context 256 \\
        --precision bf16-mixed --devices 1 --accelerator gpu
    python examples/nlp/train_gpt.py --train-shards 'data/train-{000000..000009}.tar' \\
        --val-shards 'data/val-000000.tar'  # shards written by dltrain.plugins.text.write_lm_shards
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `corpus` when run as a script or by torchrun
sys.path.append(str(Path(__file__).resolve().parents[1]))  # examples/_flags.py, the flags every example shares
import _flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _flags.parser(__doc__)
    d = p.add_argument_group("data (default: CPython's documentation text)")
    d.add_argument("--text-files", nargs="*", default=None,
                   help="your own UTF-8 text files or globs; one file = one document (split train/val by file)")
    d.add_argument("--train-shards", default=None,
                   help="your own LM shards (write_lm_shards; brace pattern); tokenizer.json must sit next to them")
    d.add_argument("--val-shards", default=None, help="validation LM shards (with --train-shards)")
    d.add_argument("--val-fraction", type=float, default=0.05, help="documents held out for validation")
    d.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size")
    d.add_argument("--max-docs", type=int, default=None, help="use only the first N documents (quick tests)")
    m = p.add_argument_group("model")
    m.add_argument("--context", type=int, default=128, help="context length in tokens")
    m.add_argument("--layers", type=int, default=4, help="transformer blocks")
    m.add_argument("--heads", type=int, default=4, help="attention heads")
    m.add_argument("--d-model", type=int, default=128, help="embedding width")
    m.add_argument("--dropout", type=float, default=0.0, help="dropout probability")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    t.add_argument("--warmup-steps", type=int, default=50, help="linear learning-rate warm-up steps")
    t.add_argument("--val-check-interval", type=int, default=None, help="validate every N steps (default: per epoch)")
    t.add_argument("--limit-val-batches", type=int, default=None,
                   help="at most this many validation batches (default: --limit-batches, else all)")
    t.add_argument("--sample-tokens", type=int, default=120, help="tokens of generated text to print")
    _flags.add_run_flags(p, root_dir="runs/gpt", max_epochs=None, max_steps=800, batch_size=16)
    return p.parse_args(argv)


if __name__ == "__main__":
    _flags.parse_first(parse_args)  # --help answers here, before torch is imported below

import torch  # noqa: E402

import dltrain  # noqa: E402
from dltrain.data import StreamingDataset  # noqa: E402
from dltrain.plugins import text  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loader workers fork after the tokenizer ran


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


def _documents(args: argparse.Namespace) -> list[tuple[str, str | bytes]]:
    if args.text_files:
        files = sorted({f for pattern in args.text_files for f in glob.glob(pattern)})
        if not files:
            raise SystemExit(f"--text-files {args.text_files} matched no file")
        docs: list[tuple[str, str | bytes]] = [(f, Path(f).read_bytes()) for f in files]
    else:
        from corpus import lm_documents

        docs = list(lm_documents())
    return docs[: args.max_docs] if args.max_docs else docs


def prepare_data(args: argparse.Namespace) -> dict:
    """Tokenizer, shards and baseline. Built once by local rank 0; other ranks wait for ``ready.json``."""
    if args.train_shards:
        if not args.val_shards:
            raise SystemExit("--train-shards needs --val-shards")
        first = dltrain.data.expand_urls(args.train_shards)[0]
        tok_path = Path(first).parent / "tokenizer.json"
        return {"train": args.train_shards, "val": args.val_shards, "tokenizer": str(tok_path),
                "baseline_bpb": None, "stats": {}}
    from corpus import is_val, unigram_byte_bpb

    config = {"files": args.text_files, "vocab": args.vocab_size, "context": args.context,
              "val": args.val_fraction, "max_docs": args.max_docs, "python": sys.version.split()[0], "v": 1}
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    data_dir = _flags.data_dir(args) / f"lm-{key}"  # one folder per corpus/tokenizer configuration
    ready = data_dir / "ready.json"
    _, local_rank = _rank()
    if not ready.is_file() and local_rank == 0:
        t0 = time.time()
        docs = _documents(args)
        train_docs = [t for i, t in docs if not is_val(i, args.val_fraction)]
        val_docs = [t for i, t in docs if is_val(i, args.val_fraction)]
        train_stats, val_stats = text.TextStats(), text.TextStats()
        train_clean = [d.text for d in text.iter_documents(train_docs, text.TextStats())]
        val_clean = [d.text for d in text.iter_documents(val_docs, text.TextStats())]
        tok = text.train_tokenizer(train_clean, vocab_size=args.vocab_size)
        train = text.write_lm_shards(train_docs, tok, str(data_dir / "train-%06d.tar"), seq_len=args.context,
                                     stats=train_stats, max_count=2000)
        val = text.write_lm_shards(val_docs, tok, str(data_dir / "val-%06d.tar"), seq_len=args.context,
                                   stats=val_stats, max_count=2000)
        info = {
            "train": train, "val": val, "tokenizer": str(data_dir / "tokenizer.json"),
            "baseline_bpb": unigram_byte_bpb(train_clean, val_clean),
            "stats": {"train": train_stats.as_dict(), "val": val_stats.as_dict()},
            "seconds": round(time.time() - t0, 1),
        }
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, ready)
    deadline = time.time() + 900
    while not ready.is_file():  # the other local ranks: wait for rank 0's data
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {ready} (did local rank 0 fail?)")
        time.sleep(0.5)
    return json.loads(ready.read_text())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    dltrain.seed_everything(args.seed)  # first, before the model draws its initial weights
    t_start = time.time()
    info = prepare_data(args)
    tokenizer = text.load_tokenizer(info["tokenizer"])

    def dataset(urls: str | list[str], training: bool) -> StreamingDataset:
        return StreamingDataset(urls, batch_size=args.batch_size, decode=text.DECODERS,
                                map=text.LMBlockTransform(tokenizer.vocab_size), collate_fn=text.lm_collate,
                                shuffle=training, seed=args.seed, training=training)

    train_loader = dataset(info["train"], True).loader(num_workers=args.workers)
    val_loader = dataset(info["val"], False).loader(num_workers=args.workers)

    task = text.LanguageModelTask(
        tokenizer=tokenizer, context_length=args.context, n_layers=args.layers, n_heads=args.heads,
        d_model=args.d_model, dropout=args.dropout, lr=args.lr, warmup_steps=args.warmup_steps,
    )
    settings = _flags.trainer_args(args, log_every_n_steps=25)
    if args.limit_val_batches is not None:
        settings["limit_val_batches"] = args.limit_val_batches
    trainer = dltrain.Trainer(**settings, gradient_clip_val=1.0, val_check_interval=args.val_check_interval)
    if trainer.is_global_zero:
        n_params = sum(p.numel() for p in task.parameters())
        print(f"data: {json.dumps(info['stats'])}")
        print(f"model: {n_params / 1e6:.2f}M parameters, vocab {tokenizer.vocab_size}, context {args.context}; "
              f"{len(train_loader)} train batches/epoch/process")
    trainer.fit(task, train_loader, val_loader, ckpt_path="last" if args.resume else None)
    results = trainer.validate(task, val_loader)[0]
    out = {"val_bpb": results.get("val/bpb"), "val_ppl": results.get("val/ppl"),
           "baseline_bpb": info["baseline_bpb"], "wall_s": round(time.time() - t_start, 1)}
    if trainer.is_global_zero:
        base = info["baseline_bpb"]
        print(f"\nvalidation bits per byte: model {out['val_bpb']:.3f}"
              + (f" vs unigram-byte baseline {base:.3f} ({100 * (1 - out['val_bpb'] / base):.0f}% fewer bits)"
                 if base else ""))
        print(f"validation perplexity (per token): {out['val_ppl']:.1f}; wall time {out['wall_s']:.0f}s")
        gen = torch.Generator(device=task.device).manual_seed(args.seed)
        sample = task.generate_text("The", max_new_tokens=args.sample_tokens, temperature=0.8, top_k=40,
                                    generator=gen)
        print(f"\nsample:\n{sample}\n")
        print("RESULT " + json.dumps(out))
    return out


if __name__ == "__main__":
    main()
