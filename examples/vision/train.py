"""Train an image classifier from shards with dltrain's vision plugin.

By default: scikit-learn's handwritten digits (1797 8x8 images, bundled, no download) are written to PNG shards
with a fixed train/val/test split, a small CNN is trained for a few epochs, the test metrics are printed and a
loss/accuracy plot is written next to the logs. About a minute on 2 CPU cores.

    python examples/vision/train.py
    python examples/vision/train.py --max-epochs 20 --resume  # continue the last run up to epoch 20
    torchrun --nproc_per_node=2 examples/vision/train.py

Your own data (ImageNet-style folders turned into shards with scripts/make_image_shards.py):

    python scripts/make_image_shards.py ~/imagenet/train shards/imagenet --split train
    python scripts/make_image_shards.py ~/imagenet/val shards/imagenet --split val --classes shards/imagenet/classes.json
    torchrun --nproc_per_node=8 examples/vision/train.py \\
        --train-shards 'shards/imagenet/train-{000000..001281}.tar' \\
        --val-shards 'shards/imagenet/val-{000000..000049}.tar' \\
        --model resnet50 --precision bf16-mixed --batch-size 256 --max-epochs 90 --workers 8 \\
        --optimizer sgd --lr 0.1 --label-smoothing 0.1 --mixup 0.2 --cutmix 1.0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[1]))  # examples/_flags.py, the flags every example shares
import _flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _flags.parser(
        "Train an image classifier on shards (default: scikit-learn digits, written to shards first).",
        epilog="Make shards from an ImageNet-style folder (class_name/image.jpg) with scripts/make_image_shards.py.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--train-shards", help="your own training shards, e.g. 'shards/train-{000000..000127}.tar' "
                      "(fields: jpg/png/webp image + cls label); default: digits")
    data.add_argument("--val-shards", help="your own validation shards (also used for the final test)")
    data.add_argument("--test-shards", help="shards for the final test (default: --val-shards)")
    data.add_argument("--num-classes", type=int, help="default: length of classes.json next to the train shards")
    data.add_argument("--image-size", type=int, help="crop size (default: 16 for digits, 224 otherwise)")
    data.add_argument("--channels", type=int, choices=(1, 3), help="image channels (default: 1 digits, 3 otherwise)")
    data.add_argument("--on-bad-sample", choices=("raise", "skip"), default="raise",
                      help="what to do with an undecodable image or a bad label")
    model = p.add_argument_group("model and optimization")
    model.add_argument("--model", default="small-cnn", help="'small-cnn' or a torchvision model name (resnet18, ...)")
    model.add_argument("--weights", help="local file with pretrained weights (never downloaded)")
    model.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="optimizer")
    model.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (warm-up, then cosine)")
    model.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    model.add_argument("--warmup-steps", type=int, default=20, help="linear learning-rate warm-up steps")
    model.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the loss")
    model.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0: off), applied on the device")
    model.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0: off), applied on the device")
    _flags.add_run_flags(p, root_dir="runs/vision", max_epochs=12, max_steps=None, batch_size=64)
    return p.parse_args(argv)


if __name__ == "__main__":
    _flags.parse_first(parse_args)  # --help answers here, before torch is imported below

import torch  # noqa: E402
from torch import nn  # noqa: E402

import dltrain  # noqa: E402
from dltrain.data import StreamingDataset, write_shards  # noqa: E402
from dltrain.plugins import vision  # noqa: E402

DIGITS_CLASSES = [str(i) for i in range(10)]


# ----------------------------------------------------------------------------------------------------- data
def _is_main_process() -> bool:
    # torchrun sets RANK/LOCAL_RANK; the shards are written before the Trainer (and its process group) exists.
    return os.environ.get("LOCAL_RANK", "0") == "0"


def write_digits_shards(data_dir: Path, seed: int = 0, timeout: float = 300.0) -> Path:
    """Write scikit-learn's digits as 8x8 gray PNG shards (train/val/test = 70/10/20 %, stratified, fixed seed).

    The first local process writes into a temporary folder and renames it into place (atomic), the others wait
    for it: no half-written shards are ever read, and a second run reuses the shards.
    """
    out = data_dir / "digits"
    if out.is_dir():
        return out
    if not _is_main_process():
        deadline = time.monotonic() + timeout
        while not out.is_dir():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f}s for the first process to write {out}")
            time.sleep(0.2)
        return out
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype("uint8")  # 0..16 -> 0..255
    labels = digits.target
    index = list(range(len(labels)))
    train_val, test = train_test_split(index, test_size=0.2, random_state=seed, stratify=labels)
    train, val = train_test_split(train_val, test_size=0.125, random_state=seed, stratify=labels[train_val])
    tmp = data_dir / f".digits-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, ids in (("train", train), ("val", val), ("test", test)):
        samples = (
            {"__key__": f"digit{i:05d}", "png": vision.encode_image(pixels[i]), "cls": int(labels[i])} for i in ids
        )
        write_shards(samples, str(tmp / f"{split}-%06d.tar"), max_count=200)
    (tmp / "classes.json").write_text(json.dumps(DIGITS_CLASSES) + "\n")
    try:
        os.rename(tmp, out)
    except OSError:  # another run got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def shard_urls(folder: Path, split: str) -> list[str]:
    urls = sorted(str(p) for p in folder.glob(f"{split}-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no {split}-*.tar shards in {folder}")
    return urls


def read_classes(urls: str, given: int | None) -> int:
    """Number of classes: --num-classes, else the classes.json written next to the shards."""
    if given is not None:
        return given
    first = dltrain.data.expand_urls(urls)[0]
    classes = Path(first).parent / "classes.json"
    if classes.is_file():
        return len(json.loads(classes.read_text()))
    raise SystemExit(f"--num-classes is needed: there is no classes.json next to {first}")


# ----------------------------------------------------------------------------------------------------- model
class SmallCNN(nn.Module):
    """Four 3x3 conv layers, BatchNorm, global average pooling: ~65k parameters, enough for digits."""

    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(channels, width), *block(width, width), nn.MaxPool2d(2),
            *block(width, 2 * width), *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------------------- plot
def plot_metrics(metrics_csv: Path, out: Path) -> Path | None:
    """Loss and accuracy curves from the CSVLogger's metrics.csv (train per step and epoch, val per epoch)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'dltrain[examples]'): no plot", file=sys.stderr)
        return None
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if name != "step" and value not in ("", None):
                    xs, ys = series.setdefault(name, ([], []))
                    xs.append(float(row["step"]))
                    ys.append(float(value))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"train/loss_step": dict(alpha=0.3, lw=1), "train/acc_step": dict(alpha=0.3, lw=1)}
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        for name in (f"train/{metric}_step", f"train/{metric}_epoch", f"val/{metric}"):
            if name in series:
                ax.plot(*series[name], label=name, marker="o" if "step" not in name else None,
                        **styles.get(name, {}))  # type: ignore[arg-type]
        ax.set_xlabel("optimizer step")
        ax.set_title("loss" if metric == "loss" else "top-1 accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    # Seed first, before the model and the data pipeline draw any random number (as with Lightning's
    # seed_everything): the same --seed then gives the same weights, augmentations and metrics.
    dltrain.seed_everything(args.seed)
    started = time.perf_counter()
    own = args.train_shards is not None
    if own:
        if args.val_shards is None:
            raise SystemExit("--val-shards is needed with --train-shards")
        train_urls: Any = args.train_shards
        val_urls: Any = args.val_shards
        test_urls: Any = args.test_shards or args.val_shards
        num_classes = read_classes(args.train_shards, args.num_classes)
    else:
        folder = write_digits_shards(_flags.data_dir(args), seed=0)
        train_urls, val_urls, test_urls = (shard_urls(folder, s) for s in ("train", "val", "test"))
        num_classes = 10
    size = args.image_size or (224 if own else 16)
    channels = args.channels or (3 if own else 1)

    if own:
        train_tf = vision.train_transform(size, channels=channels, num_classes=num_classes, color_jitter=0.3)
        eval_tf = vision.eval_transform(size, channels=channels, num_classes=num_classes)
    else:
        # Digits: no flip (a mirrored 2 is not a 2), mild crops; the 8x8 images are upsampled to `size`.
        train_tf = vision.train_transform(size, scale=(0.75, 1.0), ratio=(0.85, 1.15), hflip=0.0,
                                          channels=channels, num_classes=num_classes, mean=[0.5], std=[0.5])
        eval_tf = vision.eval_transform(size, resize=size, channels=channels, num_classes=num_classes,
                                        mean=[0.5], std=[0.5])

    decoders = vision.image_decoders(channels=channels)

    def loader(urls: Any, transform: Any, training: bool) -> Any:
        ds = StreamingDataset(urls, batch_size=args.batch_size, decode=decoders, map=transform,
                              collate_fn=vision.collate, shuffle=training, seed=args.seed, training=training,
                              on_error=args.on_bad_sample)
        return ds.loader(num_workers=args.workers)

    if args.model == "small-cnn":
        net: str | nn.Module = SmallCNN(channels, num_classes)
    else:
        net = args.model
    task = vision.ImageClassificationTask(
        net, num_classes, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, label_smoothing=args.label_smoothing, mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix, weights_path=args.weights,
    )
    trainer = dltrain.Trainer(**_flags.trainer_args(args, log_every_n_steps=5))
    trainer.fit(task, loader(train_urls, train_tf, True), loader(val_urls, eval_tf, False),
                ckpt_path="last" if args.resume else None)
    metrics = trainer.test(task, loader(test_urls, eval_tf, False))[0]

    if trainer.is_global_zero:
        print("test metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        logger = trainer.logger
        log_dir_name = getattr(logger, "log_dir", None)
        log_dir = Path(log_dir_name) if log_dir_name else None
        if log_dir is not None and (log_dir / "metrics.csv").is_file():
            plot = plot_metrics(log_dir / "metrics.csv", log_dir / "metrics.png")
            if plot is not None:
                print(f"plot: {plot}")
            print(f"logs: {log_dir}")
        print(f"wall time (shards, training, test; imports not counted): {time.perf_counter() - started:.1f}s "
              f"on {trainer.world_size} process(es)")
    return metrics


if __name__ == "__main__":
    main()
