#!/usr/bin/env python
"""Turn an image folder (``root/<class_name>/<image>.jpg``, ImageNet style) into shards, their index and a
``classes.json``, for ``examples/vision/train.py --train-shards ...``.

    python scripts/make_image_shards.py ~/imagenet/train shards/imagenet --split train
    python scripts/make_image_shards.py ~/imagenet/val shards/imagenet --split val \\
        --classes shards/imagenet/classes.json

Images are stored as they are (no re-encoding); the samples are shuffled across shards with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="image folder with one sub-folder per class")
    p.add_argument("out", help="output folder for <split>-NNNNNN.tar, <split>.index.json and classes.json")
    p.add_argument("--split", default="train", help="shard name prefix")
    p.add_argument("--classes", help="classes.json of the training split, so that class indices agree")
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard at most")
    p.add_argument("--max-size-mb", type=float, default=256, help="shard size at most, in MB")
    p.add_argument("--no-shuffle", action="store_true", help="keep folder order (not recommended for training)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from dltrain.errors import DataError
    from dltrain.plugins import get

    vision = get("vision")
    assert vision.write_shards is not None
    classes = json.loads(Path(args.classes).read_text()) if args.classes else None
    try:
        paths = vision.write_shards(
            args.root, str(Path(args.out) / f"{args.split}-%06d.tar"), classes=classes, max_count=args.max_count,
            max_size=args.max_size_mb * 1e6, shuffle=not args.no_shuffle, seed=args.seed,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = len(json.loads((Path(args.out) / "classes.json").read_text()))
    print(f"wrote {len(paths)} shards ({n} classes) to {args.out}: {paths[0]} .. {paths[-1]}")
    print(f"use: --train-shards '{Path(args.out)}/{args.split}-{{000000..{len(paths) - 1:06d}}}.tar'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
