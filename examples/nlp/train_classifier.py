"""Text classification on real labelled English text that ships with CPython: which standard-library package
does a docstring come from (asyncio, email, importlib, logging, xml, multiprocessing, unittest, http, ...)?

Docstrings are read with ``ast`` (nothing is imported), split into train/val by *source file* (docstrings of one
file never appear on both sides), tokenized on the fly with a byte-level BPE, dynamically padded with an
attention mask (optionally length-bucketed) and classified by a small transformer encoder with masked mean
pooling. Prints validation accuracy and macro F1 next to the majority-class baseline.

    python examples/nlp/train_classifier.py
    python examples/nlp/train_classifier.py --max-epochs 12 --resume   # continue the last run up to epoch 12
    torchrun --nproc_per_node=2 examples/nlp/train_classifier.py
    # your own data: shards with fields "txt" (UTF-8 text) and "cls" (integer label), e.g. written with
    #   dltrain.plugins.text.write_classification_shards([(text, label), ...], "data/train-%06d.tar")
    python examples/nlp/train_classifier.py --train-shards 'data/train-{000000..000003}.tar' \\
        --val-shards 'data/val-000000.tar' --num-classes 5 --max-length 512 --d-model 256 --layers 4 \\
        --precision bf16-mixed --accelerator gpu --devices 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `corpus` when run as a script or by torchrun
sys.path.append(str(Path(__file__).resolve().parents[1]))  # examples/_flags.py, the flags every example shares
import _flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _flags.parser(__doc__)
    d = p.add_argument_group("data (default: stdlib docstrings labelled by package)")
    d.add_argument("--train-shards", default=None, help="your shards with 'txt' and 'cls' fields (brace pattern)")
    d.add_argument("--val-shards", default=None, help="validation shards (with --train-shards)")
    d.add_argument("--num-classes", type=int, default=None, help="number of labels (with --train-shards)")
    d.add_argument("--tokenizer", default=None, help="tokenizer.json to use (default: train one on train texts)")
    d.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (when training one)")
    d.add_argument("--max-length", type=int, default=128, help="longer documents are truncated to this many tokens")
    d.add_argument("--bucket", type=int, default=4,
                   help="length bucketing: sort pools of BUCKET batches by length (1 = off)")
    d.add_argument("--val-fraction", type=float, default=0.2, help="source files held out for validation")
    m = p.add_argument_group("model")
    m.add_argument("--layers", type=int, default=2, help="transformer encoder blocks")
    m.add_argument("--heads", type=int, default=4, help="attention heads")
    m.add_argument("--d-model", type=int, default=128, help="embedding width")
    m.add_argument("--dropout", type=float, default=0.1, help="dropout probability")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    _flags.add_run_flags(p, root_dir="runs/classifier", max_epochs=8, max_steps=None, batch_size=32)
    return p.parse_args(argv)


if __name__ == "__main__":
    _flags.parse_first(parse_args)  # --help answers here, before torch is imported below

import dltrain  # noqa: E402
from dltrain.data import StreamingDataset  # noqa: E402
from dltrain.plugins import text  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prepare_data(args: argparse.Namespace) -> dict:
    """Shards of the stdlib docstrings (built by local rank 0, the other ranks wait) or the user's shards."""
    if args.train_shards:
        if not (args.val_shards and args.num_classes):
            raise SystemExit("--train-shards needs --val-shards and --num-classes")
        return {"train": args.train_shards, "val": args.val_shards, "classes": [str(i) for i in
                range(args.num_classes)], "majority": None, "stats": {}}
    from corpus import classification_examples, split_by_file

    key = hashlib.sha256(f"{sys.version}:{args.val_fraction}:v2".encode()).hexdigest()[:10]
    data_dir = _flags.data_dir(args) / f"docstrings-{key}"  # one folder per split configuration
    ready = data_dir / "ready.json"
    if not ready.is_file() and int(os.environ.get("LOCAL_RANK", 0)) == 0:
        examples, names = classification_examples()
        train, val = split_by_file(examples, args.val_fraction)
        stats = text.TextStats()
        counts = Counter(y for _, y in val)
        info = {
            "train": text.write_classification_shards(train, str(data_dir / "train-%06d.tar"), stats=stats),
            "val": text.write_classification_shards(val, str(data_dir / "val-%06d.tar")),
            "classes": names,
            "majority": max(counts.values()) / len(val),
            "stats": stats.as_dict(),
            "sizes": {"train": len(train), "val": len(val)},
        }
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, ready)
    deadline = time.time() + 900
    while not ready.is_file():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {ready}")
        time.sleep(0.5)
    return json.loads(ready.read_text())


def get_tokenizer(args: argparse.Namespace, info: dict) -> text.TextTokenizer:
    if args.tokenizer:
        return text.load_tokenizer(args.tokenizer)
    path = _flags.data_dir(args) / f"tokenizer-{args.vocab_size}.json"
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and not path.is_file():
        # Train on the training texts only, read back from the shards (works the same for the user's shards).
        ds = StreamingDataset(info["train"], batch_size=256, decode=text.DECODERS, shuffle=False, training=False,
                              map=_text_of, collate_fn=list)
        tok = text.train_tokenizer((t for batch in ds for t in batch), vocab_size=args.vocab_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(path)
    while not path.is_file():
        time.sleep(0.5)
    return text.load_tokenizer(path)


def _text_of(sample: dict) -> str:
    return sample["txt"].text


def make_loader(args: argparse.Namespace, urls: str | list[str], tok: text.TextTokenizer, training: bool) -> object:
    transform = text.ClassificationTransform(tok, max_length=args.max_length)
    if args.bucket > 1:
        ds = StreamingDataset(urls, batch_size=args.batch_size * args.bucket, decode=text.DECODERS, map=transform,
                              collate_fn=list, shuffle=training, seed=args.seed, training=training)
        return text.LengthBucketLoader(ds.loader(num_workers=args.workers), args.bucket,
                                       text.PadCollate(tok.pad_id), shuffle=training, seed=args.seed)
    ds = StreamingDataset(urls, batch_size=args.batch_size, decode=text.DECODERS, map=transform,
                          collate_fn=text.PadCollate(tok.pad_id), shuffle=training, seed=args.seed, training=training)
    return ds.loader(num_workers=args.workers)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    dltrain.seed_everything(args.seed)  # first, before the model draws its initial weights
    t0 = time.time()
    info = prepare_data(args)
    tok = get_tokenizer(args, info)
    train_loader = make_loader(args, info["train"], tok, True)
    val_loader = make_loader(args, info["val"], tok, False)
    task = text.TextClassificationTask(
        num_classes=len(info["classes"]), tokenizer=tok, max_length=args.max_length, n_layers=args.layers,
        n_heads=args.heads, d_model=args.d_model, dropout=args.dropout, lr=args.lr, warmup_steps=20,
        class_names=info["classes"],
    )
    trainer = dltrain.Trainer(**_flags.trainer_args(args, log_every_n_steps=20), gradient_clip_val=1.0)
    if trainer.is_global_zero:
        print(f"classes: {info['classes']}; examples {info.get('sizes')}; data {json.dumps(info['stats'])}")
    trainer.fit(task, train_loader, val_loader, ckpt_path="last" if args.resume else None)
    res = trainer.validate(task, val_loader)[0]
    out = {"val_acc": res.get("val/acc"), "val_f1": res.get("val/f1"), "majority_acc": info["majority"],
           "truncated_docs": res.get("data/truncated_docs"), "wall_s": round(time.time() - t0, 1)}
    if trainer.is_global_zero:
        base = f" (majority-class baseline {info['majority']:.3f})" if info["majority"] else ""
        print(f"\nvalidation accuracy {out['val_acc']:.3f}{base}, macro F1 {out['val_f1']:.3f}; "
              f"wall time {out['wall_s']:.0f}s")
        print("RESULT " + json.dumps(out))
    return out


if __name__ == "__main__":
    main()
