"""Keyword spotting: recognise the spoken digits zero..nine.

With no shards given, the data set is synthesised offline with espeak-ng (see ``digits.py``): English accents
x voice variants x speeds x pitches, with the test set spoken by voice variants held out from training.

    python examples/audio/train_kws.py
    python examples/audio/train_kws.py --max-epochs 12 --resume   # continue the last run up to epoch 12
    torchrun --nproc_per_node=2 examples/audio/train_kws.py

Your own shards: samples with an audio field (``flac``, ``wav`` or ``ogg``) and an integer ``cls``:

    python examples/audio/train_kws.py --train-shards 'data/train-{000000..000009}.tar' \\
        --val-shards data/val-000000.tar --test-shards data/test-000000.tar --num-classes 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # examples/_flags.py, the flags every example shares
import _flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _flags.parser(__doc__)
    data = p.add_argument_group("data")
    data.add_argument("--train-shards", help="your training shards (path, brace pattern); skips synthesis")
    data.add_argument("--val-shards", help="your validation shards")
    data.add_argument("--test-shards", help="your test shards")
    data.add_argument("--num-classes", type=int, default=None,
                      help="classes in your shards (default: from classes.json next to them, else 10)")
    data.add_argument("--takes", type=int, nargs=3, default=[3, 2, 3],  # digits.SynthConfig.takes
                      metavar=("TRAIN", "VAL", "TEST"), help="synthesised clips per voice variant and digit")
    data.add_argument("--max-variants", type=int, default=None,
                      help="synthesise with at most this many voice variants (a tiny set for smoke tests)")
    data.add_argument("--sample-rate", type=int, default=16000, help="audio is resampled to this rate")
    data.add_argument("--clip-seconds", type=float, default=1.0, help="clips are cropped or padded to this")
    train = p.add_argument_group("model and optimization")
    train.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (warm-up, then cosine)")
    train.add_argument("--n-mels", type=int, default=40, help="mel bands of the log-mel features")
    train.add_argument("--width", type=int, default=16, help="channels of the CNN's first block")
    _flags.add_run_flags(p, root_dir="runs/kws", max_epochs=8, max_steps=None, batch_size=64)
    return p.parse_args(argv)


if __name__ == "__main__":
    _flags.parse_first(parse_args)  # --help answers here, before torch is imported below

import torch  # noqa: E402

import dltrain  # noqa: E402
import dltrain.plugins  # noqa: E402
from dltrain.data import StreamingDataLoader, expand_urls  # noqa: E402

try:  # run as a script (its folder is on sys.path) or imported as examples.audio.train_kws
    import digits  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from examples.audio import digits  # type: ignore[no-redef]


def class_names(shards: list[str], num_classes: int | None) -> list[str]:
    found = Path(shards[0]).parent / "classes.json" if shards and "://" not in shards[0] else None
    if found is not None and found.exists():
        names = json.loads(found.read_text())
        if num_classes is None or num_classes == len(names):
            return [str(n) for n in names]
    return [str(i) for i in range(num_classes or 10)]


class EpochSummary(dltrain.Callback):
    """Print the validation metrics once per epoch, on the first process only."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: dltrain.Trainer, task: dltrain.Task) -> None:
        if trainer.is_global_zero and trainer.stage == "fit" and not trainer.sanity_checking:
            values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()))
            print(f"epoch {trainer.current_epoch}: {shown} ({time.perf_counter() - self.start:.0f}s)", flush=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    dltrain.seed_everything(args.seed)  # first, before the model draws its initial weights
    start = time.perf_counter()
    trainer = dltrain.Trainer(**_flags.trainer_args(args, log_every_n_steps=10), callbacks=[EpochSummary()])
    say = print if trainer.is_global_zero else (lambda *a, **k: None)

    if args.train_shards:
        shards = {"train": expand_urls(args.train_shards),
                  "val": expand_urls(args.val_shards) if args.val_shards else [],
                  "test": expand_urls(args.test_shards) if args.test_shards else []}
    else:
        # One process per machine synthesises; the others wait at the barrier (a shared data dir is written once).
        if trainer.local_rank == 0:
            digits.build(_flags.data_dir(args), digits.SynthConfig(tuple(args.takes), args.max_variants),
                         verbose=trainer.is_global_zero)
        trainer.fabric.barrier()
        shards = digits.build(_flags.data_dir(args), digits.SynthConfig(tuple(args.takes), args.max_variants),
                              verbose=False)
    names = class_names(shards["train"], args.num_classes)

    audio = dltrain.plugins.get("audio")
    clip = {"sample_rate": args.sample_rate, "clip_seconds": args.clip_seconds}

    def loader(split: str) -> StreamingDataLoader | None:
        if not shards[split]:
            return None
        return audio.loader(shards[split], split, batch_size=args.batch_size, num_workers=args.workers,
                            options=clip, seed=args.seed, on_error="skip")

    train_loader, val_loader, test_loader = loader("train"), loader("val"), loader("test")
    if train_loader is None:
        raise SystemExit("no training shards: give --train-shards or leave it out to synthesise the digits")
    per_epoch = len(train_loader) if args.limit_batches is None else min(len(train_loader), args.limit_batches)
    steps = per_epoch * args.max_epochs
    if args.max_steps is not None:
        steps = min(steps, args.max_steps)
    task = audio.tasks["classification"](
        len(names),
        model=audio_cnn(len(names), args.width),
        sample_rate=args.sample_rate,
        n_mels=args.n_mels,
        lr=args.lr,
        total_steps=steps,
        class_names=names,
    )
    say(f"{len(names)} classes, {sum(p.numel() for p in task.parameters()):,} parameters, "
        f"{len(train_loader)} batches of {args.batch_size} per epoch on each of {trainer.world_size} rank(s)",
        flush=True)
    trainer.fit(task, train_loader, val_loader, ckpt_path="last" if args.resume else None)
    metrics: dict[str, float] = {}
    if test_loader is not None:
        metrics = trainer.test(task, test_loader)[0]
        say("test metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        say("confusion matrix (rows: spoken digit, columns: predicted):")
        say(task.format_confusion_matrix())
    say(f"total time {time.perf_counter() - start:.1f}s", flush=True)
    return metrics


def audio_cnn(num_classes: int, width: int) -> torch.nn.Module:
    from dltrain.plugins.audio import AudioCNN

    return AudioCNN(num_classes, width=width)


if __name__ == "__main__":
    main()
